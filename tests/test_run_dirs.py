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
import warm
from conftest import CONF, ROOT
from hydra import compose, initialize_config_dir

from ncalab.errors import ConfigError
from ncalab.runs.dirs import run_dir_problem, this_host
from ncalab.train import run


def train(*args: str, cwd: Path = ROOT, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"}
    return warm.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env, timeout=timeout)


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


@pytest.mark.slow
def test_an_explicit_run_dir_holding_a_run_is_refused_before_hydra_writes(tmp_path):
    old = tmp_path / "old"
    before = fake_run(old)
    mtimes = {p: p.stat().st_mtime_ns for p in old.rglob("*")}
    result = train("experiment=smoke", "perception=sobel3", f"hydra.run.dir={old}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "already holds a run" in lines[0] and str(old) in lines[0], lines
    # Hydra did not get to write anything: the old run's .hydra/ still describes the old run
    assert snapshot(old) == before
    assert {p: p.stat().st_mtime_ns for p in old.rglob("*")} == mtimes
    assert not (old / "train.log").exists()


@pytest.mark.slow
def test_a_sweep_dir_holding_a_sweeps_runs_is_refused_before_hydra_writes(tmp_path):
    sweep = tmp_path / "sweep"
    before = fake_run(sweep / "0")
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    result = train("-m", "experiment=smoke", "seed=0,1", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "already holds the runs of a sweep" in result.stderr
    assert snapshot(sweep / "0") == before
    assert (sweep / "multirun.yaml").read_text() == "hydra: {}\n"
    assert not (sweep / "1").exists()


@pytest.mark.slow
def test_the_claimed_directory_is_the_one_the_run_writes_into(tmp_path):
    """Through train.py: a run whose directory is taken lands beside it (``_1``), whole."""
    taken = tmp_path / "runs" / "same"
    fake_run(taken)
    result = train(
        "experiment=smoke",
        "trainer.max_steps=1",
        "logger=csv",
        "callbacks.media=null",
        f"hydra.run.dir=${{ncalab.fresh_dir:{taken}}}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    new = tmp_path / "runs" / "same_1"
    assert (new / "checkpoints" / "last.ckpt").is_file() and (new / ".hydra" / "overrides.yaml").is_file()
    assert json.loads((new / "status.json").read_text())["status"] == "finished"
    assert (taken / "checkpoints" / "last.ckpt").read_bytes() == b"weights"


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
