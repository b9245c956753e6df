"""Every run gets a directory of its own, and no run writes into another run's: two runs started in the same
second land in two directories, and a run directory (or sweep directory) that holds a run is refused before
Hydra writes its ``.hydra/`` files there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from conftest import CONF
from hydra import compose, initialize_config_dir

from ncalab.errors import ConfigError
from ncalab.runs.dirs import run_dir_problem, this_host
from ncalab.train import run


class FrozenClock(datetime):
    """Every ``datetime.now()`` is the same second: runs started together."""

    @classmethod
    def now(cls, tz=None):
        return cls(2026, 1, 31, 12, 0, 0, tzinfo=tz)


def hydra_dirs() -> tuple[str, str]:
    """The run and sweep directories one launch of train.py would get (resolved as Hydra resolves them)."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(config_name="train", return_hydra_config=True)
    return str(cfg.hydra.run.dir), str(cfg.hydra.sweep.dir)


def test_two_runs_started_in_the_same_second_get_their_own_directories(tmp_path, monkeypatch):
    import hydra.core.utils

    monkeypatch.setattr(hydra.core.utils, "datetime", FrozenClock)  # what ${now:...} reads
    monkeypatch.chdir(tmp_path)
    first_run, first_sweep = hydra_dirs()
    second_run, second_sweep = hydra_dirs()
    assert first_run == "outputs/runs/2026-01-31_12-00-00"  # the documented name when it is free
    assert second_run == "outputs/runs/2026-01-31_12-00-00_1"
    assert first_sweep == "outputs/multirun/2026-01-31_12-00-00"
    assert second_sweep == "outputs/multirun/2026-01-31_12-00-00_1"
    assert all((tmp_path / d).is_dir() for d in (first_run, second_run, first_sweep, second_sweep))


def fake_run(path: Path, status: str = "finished", checkpoint: bool = True, **state) -> dict[str, bytes]:
    """A run directory as train.py leaves it; returns its files' contents."""
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text("- perception=sobel5\n- seed=3\n")
    (path / ".hydra" / "config.yaml").write_text("seed: 3\n")
    if checkpoint:
        (path / "checkpoints").mkdir()
        (path / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    (path / "status.json").write_text(json.dumps({"status": status, "overrides": ["seed=3"], **state}))
    return snapshot(path)


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_what_counts_as_another_run(tmp_path):
    assert run_dir_problem(tmp_path / "new") is None
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_dir_problem(empty) is None
    # a checkpoint: refused, except to resume that very checkpoint in place
    fake_run(tmp_path / "ckpt")
    assert "already holds a run" in run_dir_problem(tmp_path / "ckpt")
    assert run_dir_problem(tmp_path / "ckpt", str(tmp_path / "ckpt" / "checkpoints" / "last.ckpt")) is None
    # finished without a checkpoint (checkpoints turned off)
    fake_run(tmp_path / "done", checkpoint=False)
    assert "finished run" in run_dir_problem(tmp_path / "done")
    # still running here, in a live process (this one) ...
    fake_run(tmp_path / "live", "running", checkpoint=False, pid=os.getpid(), host=this_host())
    assert "still running" in run_dir_problem(tmp_path / "live")
    # ... but a failed run, or one whose process is gone, left nothing to protect
    fake_run(tmp_path / "failed", "failed", checkpoint=False)
    assert run_dir_problem(tmp_path / "failed") is None
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    fake_run(tmp_path / "gone", "running", checkpoint=False, pid=int(gone.stdout), host=this_host())
    assert run_dir_problem(tmp_path / "gone") is None
    # not a directory at all
    (tmp_path / "file").write_text("x")
    assert "is a file" in run_dir_problem(tmp_path / "file")
    assert "cannot create" in run_dir_problem(tmp_path / "file" / "run")


def test_run_refuses_a_directory_another_process_is_running_in(smoke_cfg, tmp_path):
    out = tmp_path / "run"
    before = fake_run(out, "running", checkpoint=False, pid=os.getpid(), host=this_host())
    with pytest.raises(ConfigError, match="still running"):
        run(smoke_cfg())
    assert snapshot(out) == before
