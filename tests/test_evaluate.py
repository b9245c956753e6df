"""`python -m ncalab.evaluate`: quality, long-run stability and regeneration of a trained checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

from ncalab.evaluate import evaluate_nca
from ncalab.media import REGIONS
from ncalab.nca import NCA
from ncalab.perception import FixedPerception
from ncalab.train import run


@pytest.fixture(scope="module")
def smoke_checkpoint(tmp_path_factory):
    from conftest import make_cfg

    out = tmp_path_factory.mktemp("eval") / "run"
    run(make_cfg(out, "experiment=smoke", "logger=csv"))
    return out / "checkpoints" / "last.ckpt"


@pytest.mark.slow
def test_cli_prints_and_writes_the_evaluation(smoke_checkpoint):
    result = subprocess.run(
        [sys.executable, "-m", "ncalab.evaluate", str(smoke_checkpoint), "--rollouts", "2", "--video"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    printed = json.loads(result.stdout)
    saved = json.loads(smoke_checkpoint.with_suffix(".eval.json").read_text())
    assert printed == saved
    assert 0 < printed["psnr"] < 100 and 0 < printed["ssim"] <= 1 and printed["loss"] > 0
    assert set(printed["long_run"]["loss"]) == {"500", "1000", "2000"}
    assert printed["long_run"]["non_finite"] is False
    for region in REGIONS:
        regen = printed["regeneration"][region]
        assert regen["loss"] is not None and regen["damaged_loss"] is not None
        assert regen["steps_to_recover"] is None or 1 <= regen["steps_to_recover"] <= 200
    videos = smoke_checkpoint.parent / "last_videos"
    assert (videos / "growth.mp4").is_file()
    assert len(list(videos.glob("regeneration_*.mp4"))) == 5


def test_cli_refuses_a_broken_checkpoint(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_text("nope")
    result = subprocess.run(
        [sys.executable, "-m", "ncalab.evaluate", str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert str(bad) in result.stderr and "Traceback" not in result.stderr


def test_training_run_leaves_an_evaluation(smoke_checkpoint):
    evaluation = json.loads((smoke_checkpoint.parent.parent / "evaluation.json").read_text())
    assert set(evaluation["long_run"]["loss"]) == {"16", "32"}
    assert set(evaluation["regeneration"]) >= set(REGIONS)


def _identity_nca() -> NCA:
    # Untrained: the last layer is zero, so the seed never changes.
    return NCA(FixedPerception(16, "sobel3"), hidden=8)


def test_a_model_that_never_moves_never_recovers_and_stays_finite():
    target = torch.zeros(4, 12, 12)
    target[3, 6, 6] = 1.0  # exactly the seed's RGBA: the untouched seed is perfect
    result = evaluate_nca(
        _identity_nca(), target, horizon=8, rollouts=2, long_run_steps=(4, 8), grow_steps=4, regrow_steps=4
    )
    assert result["long_run"]["non_finite"] is False
    assert result["long_run"]["loss"]["4"] == result["long_run"]["loss"]["8"]
    # cutting the centre removes the seed for good; cutting the left half misses it
    assert result["regeneration"]["center"]["steps_to_recover"] is None
    assert result["regeneration"]["left"]["steps_to_recover"] == 1


def test_a_diverging_model_is_reported_non_finite():
    nca = _identity_nca()
    with torch.no_grad():
        nca.update[-1].bias.fill_(3e38)  # live cells overflow within two updates
    target = torch.zeros(4, 12, 12)
    result = evaluate_nca(
        nca, target, horizon=4, rollouts=1, long_run_steps=(4,), grow_steps=2, regrow_steps=2
    )
    assert result["long_run"]["non_finite"] is True
    assert result["long_run"]["loss"]["4"] is None
