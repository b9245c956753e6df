"""`python -m ncalab.tools.gpu_check`: the GPU check's whole path at toy size on the CPU, its inputs and its budget."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import CONF
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from ncalab.tools.gpu_check import (
    SOURCE_EXPERIMENTS,
    curve_points,
    main,
    parse_args,
    run_overrides,
    settings_from,
)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--bench-perceptions", "sobel7"], "--bench-perceptions='sobel7': unknown sobel7; accepted: "),
        (["--experiments", "sobel3,nope"], "--experiments='sobel3,nope': unknown nope"),
        (["--steps", "0"], "--steps=0: give an integer >= 1"),
        (["--budget-s", "-5"], "--budget-s=-5.0: give a number of seconds > 0"),
        (["--conf", "/no/such/conf"], "--conf /no/such/conf: no train.yaml there"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    assert main(["--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_out_must_be_a_new_or_empty_folder(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err
    (tmp_path / "used" / "runs").mkdir(parents=True)
    assert main(["--out", str(tmp_path / "used")]) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and len(err.strip().splitlines()) == 1


def test_a_spent_budget_skips_every_part_and_says_so(tmp_path):
    out = tmp_path / "check"
    assert main(["--out", str(out), "--tiny", "--budget-s", "0.001"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    rows = summary["bench"] + summary["experiments"]
    assert len(rows) == 4 + 5
    assert {r["status"] for r in rows} == {"skipped"}
    assert all(r["error"].startswith("time budget") for r in rows)
    assert not (out / "runs").exists()
    assert "skipped: time budget" in (out / "summary.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU default")
def test_without_cuda_it_is_tiny_unless_full(tmp_path):
    tiny = settings_from(parse_args(["--out", str(tmp_path)]))
    assert tiny.tiny and tiny.device == "cpu" and tiny.compile_backend == "eager"
    full = settings_from(parse_args(["--out", str(tmp_path), "--full"]))
    assert not full.tiny
    assert (full.bench_size, full.bench_batch, full.bench_steps) == (128, 8, 96)
    assert (full.steps, full.compile_backend, full.budget_s) == (200, "inductor", 480.0)


@pytest.mark.parametrize("experiment", SOURCE_EXPERIMENTS)
def test_full_size_runs_are_the_source_experiments_with_a_short_budget(tmp_path, experiment):
    settings = settings_from(parse_args(["--out", str(tmp_path), "--full"]))
    overrides = run_overrides(experiment, tmp_path / experiment, settings, max_seconds=45)
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(config_name="train", overrides=overrides)
        alone = compose(config_name="train", overrides=["experiment=source", f"source={experiment}"])
    assert cfg.perception == alone.perception and cfg.rollout == alone.rollout and cfg.data == alone.data
    assert cfg.trainer.max_steps == 200 and cfg.callbacks.media is None
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert trainer.max_steps == 200
    timer = next(c for c in trainer.callbacks if type(c).__name__ == "Timer")
    assert timer._duration == 45  # seconds of training, then the evaluation runs


def test_curve_points_are_spread_over_the_run():
    curve = [[s, 1.0 / (s + 1)] for s in range(101)]
    assert [s for s, _ in curve_points(curve)] == [0, 25, 50, 75, 100]
    assert curve_points([[7, 0.5]]) == [(7, 0.5)]
    assert curve_points([]) == []
