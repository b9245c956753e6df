"""Every run gets a directory of its own, and no run writes into another run's: two runs started in the same
second land in two directories, and a run directory (or sweep directory) that holds a run is refused before
Hydra writes its ``.hydra/`` files there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import warm
from conftest import ROOT
from test_run_dirs import fake_run, snapshot


def train(*args: str, cwd: Path = ROOT, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"}
    return warm.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env, timeout=timeout)


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
