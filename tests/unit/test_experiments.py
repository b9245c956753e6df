"""Every multirun experiment (conf/experiment/*.yaml with hydra.mode: MULTIRUN) launches the jobs it says.

The job lists are expanded the way Hydra's BasicSweeper expands them (its own ``split_arguments`` on the
sweeper's params plus the command line, which wins a key they share), and every job's config is composed as
its launcher composes it; nothing is trained. A sweep over ``experiment`` inside an experiment file collapses
(the ``experiment=<that file>`` that starts it overrides the list): the first tests catch exactly that.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
from conftest import CONF
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

# targets_cpu's emoji (data.target=emoji:<name>), in launch order.
EMOJI = ("lizard", "butterfly", "snail", "rainbow", "doughnut", "cherries", "red_heart", "spider_web")


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
