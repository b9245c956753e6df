"""Every multirun experiment (conf/experiment/*.yaml with hydra.mode: MULTIRUN) launches the jobs it says.

The job lists are expanded the way Hydra's BasicSweeper expands them (its own ``split_arguments`` on the
sweeper's params plus the command line, which wins a key they share), and every job's config is composed as
its launcher composes it; nothing is trained. A sweep over ``experiment`` inside an experiment file collapses
(the ``experiment=<that file>`` that starts it overrides the list): the first tests catch exactly that.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap

import pytest
import warm
from conftest import CONF, ROOT
from omegaconf import DictConfig, OmegaConf
from test_experiments import (
    BANKS,
    EMOJI,
    EXPECTED,
    FIVE,
    MULTIRUN,
    Job,
    compose_train,
    job_of,
    job_overrides,
)

QUICKSTART = CONF / "experiment" / "quickstart.yaml"

# The keys of the quickstart's recipe that targets_cpu keeps (their values: conf/experiment/quickstart.yaml).
RECIPE_KEYS = (
    "data.target_size",
    "data.padding",
    "data.pool_size",
    "data.batch_size",
    "rollout.min_steps",
    "rollout.max_steps",
    "trainer.max_steps",
    "schedule.milestones",
)

# What targets_cpu sets beyond the quickstart's recipe: videos once, at the end; evaluated for 10,000 steps.
TARGETS_CPU_OWN = {
    "callbacks.media.every_n_steps": 0,
    "callbacks.evaluation.long_run_steps": [500, 2000, 10000],
}


def expand(*command_line: str) -> tuple[DictConfig, list[Job]]:
    cfg, jobs = job_overrides(*command_line)
    return cfg, [job_of(compose_train(j)) for j in jobs]


@pytest.mark.parametrize("experiment", MULTIRUN)
def test_multirun_experiment_launches_its_jobs(experiment):
    _, overrides = job_overrides(f"experiment={experiment}")
    configs = [compose_train(job) for job in overrides]
    assert [job_of(cfg) for cfg in configs] == EXPECTED.get(experiment)
    distinct = {OmegaConf.to_yaml(cfg) for cfg in configs}
    assert len(distinct) == len(configs), "two jobs of the sweep train the same thing"


def test_operator_banks_sweep_launches_each_bank_over_two_seeds():
    _, overrides = job_overrides("experiment=operators_cpu")
    ops = [list(compose_train(job).perception.ops) for job in overrides]
    assert ops == [bank for bank in BANKS for _ in (0, 1)]


def test_seed_comparison_launches_the_five_source_experiments_over_three_seeds():
    _, overrides = job_overrides("experiment=seed_comparison")
    assert len(overrides) == 15
    assert overrides[0] == ["source=sobel3", "seed=0", "experiment=seed_comparison"]
    # each job is the source experiment itself: the same config as `experiment=source source=<perception> seed=<s>`
    for job in overrides:
        alone = compose_train(["experiment=source", job[0], job[1]])
        assert compose_train(job) == alone


def test_a_tiny_override_applies_to_every_job_of_the_comparison():
    _, jobs = expand("experiment=seed_comparison", "trainer.max_steps=3", "data.target_size=16")
    assert len(jobs) == 15
    assert {(j.train_steps, j.target_size) for j in jobs} == {(3, 16)}
    assert [(j.perception, j.backprop_steps) for j in jobs[::3]] == [
        (p, 16 if p == "trainable_truncated" else None) for p in FIVE
    ]


def settings(cfg: DictConfig) -> dict[str, object]:
    """Every value a config sets, by dotted key (``data.target_size``; interpolations as written)."""

    def walk(node: object, prefix: str) -> dict[str, object]:
        if not isinstance(node, dict):
            return {prefix: node}
        return {k: v for key, value in node.items() for k, v in walk(value, f"{prefix}{key}.").items()}

    return {k.rstrip("."): v for k, v in walk(OmegaConf.to_container(cfg, resolve=False), "").items()}


def test_targets_cpu_trains_the_quickstart_recipe_on_eight_emoji():
    """Each job is `experiment=quickstart data.target=emoji:<name>` with targets_cpu's own media and evaluation
    settings: the recipe is read from quickstart.yaml, so an edit of either file that makes them differ fails."""
    from ncalab.targets.emoji import resolve_emoji

    _, overrides = job_overrides("experiment=targets_cpu")
    configs = [compose_train(job) for job in overrides]
    assert [cfg.data.target for cfg in configs] == [f"emoji:{name}" for name in EMOJI]
    assert [resolve_emoji(name).name for name in EMOJI] == list(EMOJI), "each target is an emoji of the set"
    recipe = {
        k: v for k, v in settings(OmegaConf.load(QUICKSTART)).items() if k not in ("data.target", "defaults")
    }
    assert set(RECIPE_KEYS) <= set(recipe), "quickstart.yaml no longer sets the whole recipe"
    for cfg in configs:
        job = settings(cfg)
        assert {k: job.get(k) for k in recipe} == recipe, cfg.data.target
        assert {k: job.get(k) for k in TARGETS_CPU_OWN} == TARGETS_CPU_OWN, cfg.data.target
        # and nothing else differs from the quickstart
        own = [f"{k}={v}".replace(" ", "") for k, v in TARGETS_CPU_OWN.items()]
        assert cfg == compose_train(["experiment=quickstart", f"data.target={cfg.data.target}", *own])


# What targets_long_cpu changes in targets_cpu: the shipped models' length and holes (pretrained_flower's).
TARGETS_LONG_OWN = {
    "trainer.max_steps": 3000,
    "schedule.milestones": [2000],
    "data.damage_radius": [0.1, 0.5],
}


def test_targets_long_cpu_is_targets_cpu_at_the_shipped_models_length():
    """Job for job, targets_long_cpu is targets_cpu with pretrained_flower's length, schedule and holes."""
    _, long_jobs = job_overrides("experiment=targets_long_cpu")
    _, short_jobs = job_overrides("experiment=targets_cpu")
    flower = settings(OmegaConf.load(CONF / "experiment" / "pretrained_flower.yaml"))
    assert {k: flower[k] for k in TARGETS_LONG_OWN} == TARGETS_LONG_OWN
    own = [f"{k}={v}".replace(" ", "") for k, v in TARGETS_LONG_OWN.items()]
    # ... and the recipe it was measured with, from before the quickstart's Laplacian, overflow penalty and cuts
    measured_with = ["perception=sobel3", "loss.overflow_weight=0.0", "data.damage_shapes=[disc]"]
    assert len(long_jobs) == len(short_jobs) == 8
    for long_job, short_job in zip(long_jobs, short_jobs, strict=True):
        assert compose_train(long_job) == compose_train([*short_job, *own, *measured_with])


DRY_LAUNCHER = '''
"""A launcher that launches nothing: it lists the jobs of the sweep and what each would train."""
import json

from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher


class DryLauncher(Launcher):
    def __init__(self, **ignored):
        pass

    def setup(self, *, hydra_context, task_function, config):
        self.hydra_context, self.config = hydra_context, config

    def launch(self, job_overrides, initial_job_idx):
        print(f"Launching {len(job_overrides)} jobs", flush=True)
        returns = []
        for overrides in job_overrides:
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            job = {
                "perception": cfg.perception.name,
                "max_steps": cfg.trainer.max_steps,
                "backprop_steps": cfg.rollout.backprop_steps,
                "seed": cfg.seed,
            }
            print("JOB " + json.dumps(job), flush=True)
            returns.append(JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED))
        return returns
'''


def test_train_py_launches_15_jobs_for_the_seed_comparison(tmp_path):
    """The real command line, with a launcher that prints the jobs instead of running them."""
    plugin = tmp_path / "plugins" / "hydra_plugins" / "ncalab_test_dry_launcher"
    plugin.mkdir(parents=True)
    (plugin / "__init__.py").write_text(textwrap.dedent(DRY_LAUNCHER))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(tmp_path / "plugins"), os.environ.get("PYTHONPATH")])
        ),
        "WANDB_MODE": "disabled",
    }
    result = warm.run(
        [
            sys.executable,
            "train.py",
            "experiment=seed_comparison",
            "trainer.max_steps=3",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            "hydra.launcher._target_=hydra_plugins.ncalab_test_dry_launcher.DryLauncher",
        ],
        cwd=ROOT,
        env=env,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Launching 15 jobs" in result.stdout
    jobs = [json.loads(line[4:]) for line in result.stdout.splitlines() if line.startswith("JOB ")]
    assert [(j["perception"], j["seed"]) for j in jobs] == [(p, s) for p in FIVE for s in (0, 1, 2)]
    assert {j["max_steps"] for j in jobs} == {3}
    assert {j["perception"]: j["backprop_steps"] for j in jobs} == {
        p: 16 if p == "trainable_truncated" else None for p in FIVE
    }
    assert not list((tmp_path / "sweep").glob("*/status.json"))  # nothing ran
