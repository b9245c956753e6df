"""`python train.py ...` as a user runs it: exit codes, messages, run directories."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import warm
from conftest import PERCEPTIONS, ROOT


def train(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0"}
    return warm.run([sys.executable, "train.py", *args], cwd=ROOT, env=env, timeout=timeout)


def test_train_py_smoke_run_with_a_chosen_perception(tmp_path):
    """The design card's command, `python train.py perception=trainable_scale`, on the smoke experiment. (Every
    perception's run and artefacts, in-process: test_train.py::test_every_perception_trains_and_leaves_its_artefacts.)"""
    perception = "trainable_scale"
    result = train("experiment=smoke", f"perception={perception}", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / ".hydra" / "overrides.yaml").read_text().count(f"perception={perception}") == 1
    assert (tmp_path / "final.png").is_file() and (tmp_path / "media" / "growth_final.mp4").is_file()
    # What a user reads: each line once, progress in training steps, no advertisements, no warnings that are not
    # theirs to fix.
    printed = result.stdout + result.stderr
    assert printed.count("GPU available:") == 1, printed[-3000:]
    assert "train: 100%" in printed and "4/4" in printed and "Epoch" not in printed
    for noise in ("Tip:", "litlogger", "LeafSpec", "IterableDataset", "Total FLOPs", "v_num"):
        assert noise not in printed, noise


def test_missing_target_exits_non_zero_naming_the_path(tmp_path):
    result = train("experiment=smoke", "data.target=/no/such/file.png", f"hydra.run.dir={tmp_path}")
    assert result.returncode != 0
    assert "/no/such/file.png" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_unknown_perception_lists_the_accepted_ones(tmp_path):
    result = train("experiment=smoke", "perception=laplace", f"hydra.run.dir={tmp_path}")
    assert result.returncode != 0
    assert "perception/laplace" in result.stderr
    for name in PERCEPTIONS:
        assert name in result.stderr


def test_wrong_value_names_the_key(tmp_path):
    result = train("experiment=smoke", "rollout.min_steps=200", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2
    assert "rollout.min_steps=200" in result.stderr and "rollout.max_steps" in result.stderr


def test_default_run_dir_is_under_outputs_runs(tmp_path):
    # Run from a scratch copy of the entry point so the repository's outputs/ stays clean.
    for name in ("train.py",):
        (tmp_path / name).write_text((ROOT / name).read_text())
    (tmp_path / "conf").symlink_to(ROOT / "conf")
    env = {**os.environ, "WANDB_MODE": "disabled"}
    result = warm.run(
        [sys.executable, "train.py", "experiment=smoke", "trainer.max_steps=1", "callbacks.media=null"],
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    runs = list((tmp_path / "outputs" / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "checkpoints" / "last.ckpt").is_file()
    assert len(runs[0].name) == len("2026-01-31_12-00-00")


def test_multirun_lands_in_numbered_job_dirs(tmp_path):
    result = train(
        "-m",
        "experiment=smoke",
        "trainer.max_steps=1",
        "callbacks.media=null",
        "perception=sobel3,sobel5",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for job in ("0", "1"):
        assert (Path(tmp_path) / job / "checkpoints" / "last.ckpt").is_file()
    # every multirun ends with the comparison report
    report = (Path(tmp_path) / "report.html").read_text()
    assert "perception=sobel3" in report and "perception=sobel5" in report
