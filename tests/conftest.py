"""Shared fixtures: Hydra configs composed the way train.py composes them, pointed at a temporary run dir."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from omegaconf import DictConfig

# torch, Hydra and ncalab are imported where they are used, not here: pytest-xdist's controlling process loads this
# file too, and runs no test (its workers import them while collecting, in parallel).

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
PERCEPTIONS = sorted(p.stem for p in (CONF / "perception").glob("*.yaml"))

os.environ.setdefault("WANDB_MODE", "disabled")

# `make test` runs the suite in one pytest-xdist worker per core: each worker (and each process it starts) takes its
# share of the cores, not a thread per core each (OpenMP's spin-waiting then slows every process many times over).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    import torch

    from ncalab.runs.supervision import available_cores

    _SHARE = max(1, available_cores() // _WORKERS)
    os.environ.setdefault("OMP_NUM_THREADS", str(_SHARE))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def make_cfg(output_dir: Path, *overrides: str) -> DictConfig:
    """The training config for ``overrides``, writing into ``output_dir`` (no Hydra run directory)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose(config_name="train", overrides=[f"output_dir={output_dir}", *overrides])


# The rollout media (videos, pool images) are most of a smoke run's time (~0.5 of ~1.1 s on one core): left out of
# the runs of tests that are not about them. (The end-of-run evaluation stays: it writes summary.json.)
MEDIA = "callbacks.media"


@pytest.fixture
def smoke_cfg(tmp_path):
    """``smoke_cfg(*overrides, out=None, full=False)``: the smoke experiment's config, without the rollout media
    unless ``full`` or an override sets them."""

    def _make(*overrides: str, out: Path | None = None, full: bool = False) -> DictConfig:
        media = full or any(o.startswith(MEDIA) for o in overrides)
        return make_cfg(
            out or tmp_path / "run", "experiment=smoke", *([] if media else [f"{MEDIA}=null"]), *overrides
        )

    return _make


# Two folders: tests/unit/ (pure functions, small tensors, config composition: `make test-fast`) and
# tests/scenarios/ (training runs, command lines, the browser, DDP, sweeps). The `slow` mark follows the folder:
# every scenario is slow, and a unit test marked slow by hand belongs in scenarios/.
SCENARIOS = Path(__file__).resolve().parent / "scenarios"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        in_scenarios = SCENARIOS in Path(item.path).resolve().parents
        if in_scenarios:
            item.add_marker(pytest.mark.slow)
        elif item.get_closest_marker("slow") is not None:
            raise pytest.UsageError(f"{item.nodeid} is marked slow: move it to tests/scenarios/")


# Fixtures that a topic's unit tests and its scenarios both use.


@pytest.fixture
def home(monkeypatch, tmp_path) -> Path:
    """An empty home: no .netrc, no wandb settings, no key in the environment, no WANDB_MODE."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in (
        "WANDB_MODE",
        "WANDB_API_KEY",
        "WANDB_IDENTITY_TOKEN_FILE",
        "WANDB_BASE_URL",
        "WANDB_CONFIG_DIR",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("NETRC", raising=False)
    return home


@pytest.fixture
def under_hydra():
    """Make this process look like one job of a multirun with the given launcher overrides."""

    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict

    def _set(*overrides: str) -> None:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
            cfg = compose(config_name="train", overrides=list(overrides), return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.mode = RunMode.MULTIRUN
        HydraConfig.instance().set_config(cfg)

    yield _set
    HydraConfig.instance().cfg = None


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """A finished smoke run (rollout media left out), made once per test module that asks for it."""
    from ncalab.train import run

    out = tmp_path_factory.mktemp("eval") / "run"
    run(make_cfg(out, "experiment=smoke", "logger=csv", "callbacks.media=null"))  # its tests read no media
    return out


@pytest.fixture(scope="module")
def smoke_checkpoint(smoke_run):
    return smoke_run / "checkpoints" / "last.ckpt"
