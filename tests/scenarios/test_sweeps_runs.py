"""W&B runs (offline, never the network), multirun sweeps, launchers, Optuna, and the comparison report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import warm
import yaml
from conftest import ROOT

from ncalab.train import run


def sweep(*args: str, wandb_mode: str = "disabled", timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": wandb_mode}
    return warm.run([sys.executable, "train.py", "-m", *args], cwd=ROOT, env=env, timeout=timeout)


def compare(sweep_dir: Path) -> subprocess.CompletedProcess:
    return warm.run([sys.executable, "-m", "ncalab.compare", str(sweep_dir)], cwd=ROOT, timeout=60)


def status(job: Path) -> dict:
    return json.loads((job / "status.json").read_text())


def test_resumed_run_continues_the_same_wandb_run(smoke_cfg, tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    run(smoke_cfg(out=tmp_path / "a"))
    assert wandb.run is None  # finished, so the next run cannot log into it
    first = next((tmp_path / "a" / "wandb").glob("offline-run-*"))
    run_id = first.name.rsplit("-", 1)[-1]
    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    run(smoke_cfg(f"ckpt_path={ckpt}", "trainer.max_steps=6", out=tmp_path / "b"))
    second = next((tmp_path / "b" / "wandb").glob("offline-run-*"))
    assert second.name.endswith(f"-{run_id}")


def test_a_failing_run_finishes_its_wandb_run(smoke_cfg, tmp_path, monkeypatch):
    import lightning as L
    import wandb

    class Boom(L.Callback):
        def on_train_batch_end(self, *args):
            raise RuntimeError("boom at step 1")

    monkeypatch.setenv("WANDB_MODE", "offline")
    with pytest.raises(RuntimeError, match="boom"):
        run(smoke_cfg(), [Boom()])
    assert wandb.run is None
    assert status(tmp_path / "run")["status"] == "failed"
    assert "boom at step 1" in status(tmp_path / "run")["error"]


@pytest.mark.parametrize("logger", ["csv", "tensorboard", "none"])
def test_other_loggers(smoke_cfg, tmp_path, logger):
    run(smoke_cfg(f"logger={logger}"))
    out = tmp_path / "run"
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert (out / "csv").exists() == (logger != "none")
    assert (out / "tensorboard").exists() == (logger == "tensorboard")
    assert not (out / "wandb").exists()


def test_offline_wandb_sweep_then_compare(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = sweep(
        "experiment=smoke",
        "perception=sobel3,trainable_scale",
        f"hydra.sweep.dir={sweep_dir}",
        wandb_mode="offline",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for job, perception in [("0", "sobel3"), ("1", "trainable_scale")]:
        runs = list((sweep_dir / job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, runs
        assert list(runs[0].rglob("*.mp4")), "no video in the offline W&B run"
        record = next(runs[0].glob("*.wandb")).read_bytes()
        # group = the sweep, name = the overrides, job type = the perception
        assert f"sweep-{sweep_dir.name}".encode() in record
        assert f"perception={perception}".encode() in record
        assert status(sweep_dir / job)["status"] == "finished"

    report = compare(sweep_dir)
    assert report.returncode == 0, report.stderr
    html = (sweep_dir / "report.html").read_text()
    assert "sobel3" in html and "trainable_scale" in html
    assert "perception=sobel3" in report.stdout and "perception=trainable_scale" in report.stdout


def test_a_failing_job_does_not_stop_the_sweep(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = sweep(
        "experiment=smoke",
        "callbacks.media=null",
        "data.target=/no/such/file.png,flower",
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert result.returncode != 0  # the sweep reports the failure (one line, no traceback) ...
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("ncalab: error: data.target=")]
    assert errors and all("/no/such/file.png" in line for line in errors), result.stderr[-3000:]
    assert status(sweep_dir / "0")["status"] == "failed"
    assert "/no/such/file.png" in status(sweep_dir / "0")["error"]
    assert status(sweep_dir / "1")["status"] == "finished"  # ... after running the other job
    assert (sweep_dir / "1" / "checkpoints" / "last.ckpt").is_file()
    report = compare(sweep_dir)
    assert report.returncode == 0
    assert "failed" in report.stdout and "/no/such/file.png" in (sweep_dir / "report.html").read_text()


def test_the_submitit_launcher_runs_a_two_job_sweep(tmp_path):
    """(The joblib launcher's two jobs train in two worker processes in test_stops.py, which kills the sweep once
    both have written a checkpoint; each job's way to `finished` is the one the basic launcher's sweeps here take.)"""
    sweep_dir = tmp_path / "sweep"
    result = sweep(
        "experiment=smoke",
        "trainer.max_steps=2",
        "callbacks.media=null",
        "seed=0,1",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for job in ("0", "1"):
        assert status(sweep_dir / job)["status"] == "finished"
        assert (sweep_dir / job / "checkpoints" / "last.ckpt").is_file()


def test_optuna_search_minimises_the_returned_objective(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = sweep(
        "hparams_search=optuna",
        "experiment=smoke",
        "callbacks.media=null",
        "hydra.sweeper.n_trials=2",
        "rollout.min_steps=choice(8,16)",
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    objectives = [json.loads((sweep_dir / j / "summary.json").read_text())["eval_loss"] for j in ("0", "1")]
    assert best["best_value"] == pytest.approx(min(objectives))
    assert set(best["best_params"]) == {"optim.lr", "model.hidden", "model.fire_rate", "rollout.min_steps"}
