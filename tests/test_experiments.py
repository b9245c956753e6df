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
from dataclasses import dataclass, replace

import pytest
import warm
from conftest import CONF, ROOT
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
FIVE = ("sobel3", "sobel5", "sobel5_diag", "trainable_truncated", "trainable_scale")
TARGETS = {
    "sobel3": "ncalab.perception.FixedPerception",
    "sobel5": "ncalab.perception.FixedPerception",
    "sobel5_diag": "ncalab.perception.FixedPerception",
    "trainable_truncated": "ncalab.perception.TrainablePerception",
    "trainable_scale": "ncalab.perception.ScaledPerception",
}
# The source's iteration counts (conf/source/<perception>.yaml, chosen by experiment=source source=<perception>).
SOURCE_STEPS = {
    "sobel3": 10000,
    "sobel5": 192000,
    "sobel5_diag": 11000,
    "trainable_truncated": 32000,
    "trainable_scale": 6400,
}
JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
QUICKSTART = CONF / "experiment" / "quickstart.yaml"
# targets_cpu's emoji (data.target=emoji:<name>), in launch order.
EMOJI = ("lizard", "butterfly", "snail", "rainbow", "doughnut", "cherries", "red_heart", "spider_web")
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


@dataclass(frozen=True)
class Job:
    """What one job of a sweep trains: the values that tell the jobs of these experiments apart."""

    perception: str
    target_class: str
    min_steps: int
    max_steps: int
    backprop_steps: int | None
    train_steps: int
    seed: int
    target: str
    target_size: int
    padding: int
    horizon: int


def compose_train(overrides: list[str], hydra: bool = False) -> DictConfig:
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose(config_name="train", overrides=overrides, return_hydra_config=hydra)


def job_overrides(*command_line: str) -> tuple[DictConfig, list[list[str]]]:
    """The sweep's config and the overrides of each job it launches, for ``python train.py <command_line>``."""
    cfg = compose_train(list(command_line), hydra=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
    params = OmegaConf.to_container(sweeper.params) if sweeper.get("params") else {}
    # As BasicSweeper.sweep: its params first, then the command line (a key in both: the command line wins).
    arguments = [*(f"{k}={v}" for k, v in params.items()), *command_line]
    parsed = OverridesParser.create().parse_overrides(arguments)
    batches = BasicSweeper.split_arguments(parsed, sweeper.max_batch_size)
    return cfg, [job for batch in batches for job in batch]


def job_of(cfg: DictConfig) -> Job:
    return Job(
        perception=cfg.perception.name,
        target_class=cfg.perception._target_,
        min_steps=cfg.rollout.min_steps,
        max_steps=cfg.rollout.max_steps,
        backprop_steps=cfg.rollout.backprop_steps,
        train_steps=cfg.trainer.max_steps,
        seed=cfg.seed,
        target=cfg.data.target,
        target_size=cfg.data.target_size,
        padding=cfg.data.padding,
        horizon=cfg.callbacks.evaluation.horizon,
    )


def expand(*command_line: str) -> tuple[DictConfig, list[Job]]:
    cfg, jobs = job_overrides(*command_line)
    return cfg, [job_of(compose_train(j)) for j in jobs]


def quickstart_job(target: str) -> Job:
    """A job of targets_cpu: exactly experiment=quickstart (as its file says now) on ``target``."""
    return replace(job_of(compose_train(["experiment=quickstart"])), target=target)


def bank_job(seed: int) -> Job:
    """A job of operators_cpu: a bank of fixed operators on the quickstart's holding recipe."""
    return Job(
        perception="operators",
        target_class="ncalab.perception.FixedPerception",
        min_steps=32,
        max_steps=48,
        backprop_steps=None,
        train_steps=1200,
        seed=seed,
        target="flower",
        target_size=24,
        padding=6,
        horizon=48,
    )


def source_job(perception: str, seed: int) -> Job:
    truncated = perception == "trainable_truncated"  # the source: 64 steps, gradients through the last 16
    return Job(
        perception=perception,
        target_class=TARGETS[perception],
        min_steps=64,
        max_steps=64 if truncated else 96,
        backprop_steps=16 if truncated else None,
        train_steps=SOURCE_STEPS[perception],
        seed=seed,
        target="mosaic",
        target_size=128,
        padding=16,
        horizon=64 if truncated else 96,
    )


def cpu_comparison_job(perception: str, seed: int) -> Job:
    return Job(
        perception=perception,
        target_class=TARGETS[perception],
        min_steps=32,
        max_steps=48,
        backprop_steps=16 if perception == "trainable_truncated" else None,
        train_steps=1200,
        seed=seed,
        target="flower",
        target_size=24,
        padding=6,
        horizon=48,
    )


def resolution_job(size: int, perception: str, seed: int) -> Job:
    return Job(
        perception=perception,
        target_class=TARGETS[perception],
        min_steps=32,
        max_steps=48,
        backprop_steps=None,
        train_steps=400,
        seed=seed,
        target="flower",
        target_size=size,
        padding=size // 4,
        horizon=2 * size,
    )


def perception_job(perception: str, seed: int) -> Job:
    truncated = perception == "trainable_truncated"
    return Job(
        perception=perception,
        target_class=TARGETS[perception],
        min_steps=64,
        max_steps=64 if truncated else 96,
        backprop_steps=16 if truncated else None,
        train_steps=8000,
        seed=seed,
        target="flower",
        target_size=40,
        padding=16,
        horizon=64 if truncated else 96,
    )


# operators_cpu's banks (perception.ops), in launch order.
BANKS = [
    ["sobel3_x", "sobel3_y"],
    ["sobel3_x", "sobel3_y", "laplace3"],
    ["sobel3_dil2_x", "sobel3_dil2_y"],
    ["sobel3_x", "sobel3_y", "sobel3_dil2_x", "sobel3_dil2_y"],
    ["sobel5_x", "sobel5_y", "sobel5_45", "sobel5_135"],
]
# Every multirun experiment, and the jobs it must launch, in launch order.
EXPECTED = {
    "operators_cpu": [bank_job(s) for _ in BANKS for s in (0, 1)],
    "seed_comparison": [source_job(p, s) for p in FIVE for s in (0, 1, 2)],
    "seed_comparison_cpu": [cpu_comparison_job(p, s) for p in FIVE for s in (0, 1)],
    "resolution_cpu": [
        resolution_job(size, p, s)
        for size in (48, 24)
        for p in ("sobel5_diag", "sobel5", "sobel3")
        for s in (0, 1)
    ],
    "sweep_perception": [perception_job(p, s) for p in FIVE for s in (0, 1, 2)],
    "targets_cpu": [quickstart_job(f"emoji:{name}") for name in EMOJI],
    "targets_long_cpu": [
        replace(quickstart_job(f"emoji:{name}"), train_steps=3000, perception="sobel3") for name in EMOJI
    ],
}


def is_multirun(experiment: str) -> bool:
    return compose_train([f"experiment={experiment}"], hydra=True).hydra.mode == RunMode.MULTIRUN


MULTIRUN = [e for e in EXPERIMENTS if is_multirun(e)]


def test_every_multirun_experiment_has_its_expected_jobs_here():
    assert MULTIRUN, "no multirun experiment found"
    assert set(MULTIRUN) == set(EXPECTED), (
        "a multirun experiment without an expected job list (add it to EXPECTED), or one that is gone"
    )


@pytest.mark.parametrize("experiment", MULTIRUN)
def test_no_multirun_experiment_sweeps_the_experiment_group(experiment):
    cfg, _ = job_overrides(f"experiment={experiment}")
    keys = [k.lstrip("+~").split("@")[0] for k in cfg.hydra.sweeper.params]
    assert "experiment" not in keys, f"{experiment}: `experiment=` on the command line overrides this sweep"


@pytest.mark.slow
@pytest.mark.parametrize("experiment", MULTIRUN)
def test_multirun_experiment_launches_its_jobs(experiment):
    _, overrides = job_overrides(f"experiment={experiment}")
    configs = [compose_train(job) for job in overrides]
    assert [job_of(cfg) for cfg in configs] == EXPECTED.get(experiment)
    distinct = {OmegaConf.to_yaml(cfg) for cfg in configs}
    assert len(distinct) == len(configs), "two jobs of the sweep train the same thing"


@pytest.mark.slow
def test_operator_banks_sweep_launches_each_bank_over_two_seeds():
    _, overrides = job_overrides("experiment=operators_cpu")
    ops = [list(compose_train(job).perception.ops) for job in overrides]
    assert ops == [bank for bank in BANKS for _ in (0, 1)]


@pytest.mark.slow
def test_seed_comparison_launches_the_five_source_experiments_over_three_seeds():
    _, overrides = job_overrides("experiment=seed_comparison")
    assert len(overrides) == 15
    assert overrides[0] == ["source=sobel3", "seed=0", "experiment=seed_comparison"]
    # each job is the source experiment itself: the same config as `experiment=source source=<perception> seed=<s>`
    for job in overrides:
        alone = compose_train(["experiment=source", job[0], job[1]])
        assert compose_train(job) == alone


@pytest.mark.slow
def test_a_tiny_override_applies_to_every_job_of_the_comparison():
    _, jobs = expand("experiment=seed_comparison", "trainer.max_steps=3", "data.target_size=16")
    assert len(jobs) == 15
    assert {(j.train_steps, j.target_size) for j in jobs} == {(3, 16)}
    assert [(j.perception, j.backprop_steps) for j in jobs[::3]] == [
        (p, 16 if p == "trainable_truncated" else None) for p in FIVE
    ]


@pytest.mark.parametrize(
    "experiment",
    ["seed_comparison_cpu", "resolution_cpu", "operators_cpu", "targets_cpu", "targets_long_cpu"],
)
def test_cpu_studies_run_two_jobs_at_a_time(experiment):
    cfg, _ = job_overrides(f"experiment={experiment}")
    assert cfg.hydra.launcher._target_ == JOBLIB
    assert cfg.hydra.launcher.n_jobs == 2
    assert (
        cfg.threads is None
    )  # each job takes its share of the cores (ncalab.runs.supervision.torch_threads)


def settings(cfg: DictConfig) -> dict[str, object]:
    """Every value a config sets, by dotted key (``data.target_size``; interpolations as written)."""

    def walk(node: object, prefix: str) -> dict[str, object]:
        if not isinstance(node, dict):
            return {prefix: node}
        return {k: v for key, value in node.items() for k, v in walk(value, f"{prefix}{key}.").items()}

    return {k.rstrip("."): v for k, v in walk(OmegaConf.to_container(cfg, resolve=False), "").items()}


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


def test_the_source_group_holds_the_five_source_experiments():
    """experiment=source source=<perception>: the 128 px mosaic with the source's perception and iteration count
    (sobel3 by default); one override sweeps them (experiment=seed_comparison)."""
    assert sorted(p.stem for p in (CONF / "source").glob("*.yaml")) == sorted(FIVE)
    for p in FIVE:
        cfg = compose_train(["experiment=source", f"source={p}"])
        assert (cfg.perception.name, cfg.trainer.max_steps) == (p, SOURCE_STEPS[p])
        assert (cfg.data.target, cfg.data.target_size, cfg.data.padding) == ("mosaic", 128, 16)
    assert compose_train(["experiment=source"]) == compose_train(["experiment=source", "source=sobel3"])


def test_resolution_arms_scale_grid_padding_and_horizon_together():
    arms = {p.stem: compose_train([f"+resolution={p.stem}"]) for p in (CONF / "resolution").glob("*.yaml")}
    assert set(arms) == {"flower24", "flower48"}
    for name, cfg in arms.items():
        size = cfg.data.target_size
        assert name == f"flower{size}"
        assert cfg.data.padding * 4 == size and cfg.callbacks.evaluation.horizon == 2 * size
