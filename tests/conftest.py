"""Shared fixtures: Hydra configs composed the way train.py composes them, pointed at a temporary run dir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from ncalab.runs.supervision import available_cores

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
PERCEPTIONS = sorted(p.stem for p in (CONF / "perception").glob("*.yaml"))

os.environ.setdefault("WANDB_MODE", "disabled")

# `make test` runs the suite in one pytest-xdist worker per core: each worker (and each process it starts) takes its
# share of the cores, not a thread per core each (OpenMP's spin-waiting then slows every process many times over).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _SHARE = max(1, available_cores() // _WORKERS)
    os.environ.setdefault("OMP_NUM_THREADS", str(_SHARE))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def make_cfg(output_dir: Path, *overrides: str) -> DictConfig:
    """The training config for ``overrides``, writing into ``output_dir`` (no Hydra run directory)."""
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
