"""`python -m ncalab.evaluate`: quality, persistence and regeneration of a checkpoint or an exported model folder;
and the one end-of-run measurement that summary.json, evaluation.json and final.png all come from."""

from __future__ import annotations

import json
import sys

import warm
from conftest import ROOT

from ncalab.media import REGIONS


def test_cli_refuses_a_broken_checkpoint(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_text("nope")
    result = warm.run([sys.executable, "-m", "ncalab.evaluate", str(bad)], cwd=ROOT, timeout=120)
    assert result.returncode == 2
    assert str(bad) in result.stderr and "Traceback" not in result.stderr


def test_cli_prints_and_writes_the_evaluation(smoke_checkpoint):
    result = warm.run(
        [sys.executable, "-m", "ncalab.evaluate", str(smoke_checkpoint), "--rollouts", "2", "--video"],
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    printed = json.loads(result.stdout)
    saved = json.loads(smoke_checkpoint.with_suffix(".eval.json").read_text())
    assert printed == saved
    assert 0 < printed["psnr"] < 100 and 0 < printed["ssim"] <= 1 and printed["loss"] > 0
    assert set(printed["long_run"]["loss"]) == {"500", "1000", "2000"}
    assert printed["long_run"]["non_finite"] is False
    assert printed["long_run"]["holds_steps"] in (0, 500, 1000, 2000)
    for region in REGIONS:
        regen = printed["regeneration"][region]
        assert regen["loss"] is not None and regen["damaged_loss"] is not None
        assert regen["steps_to_recover"] is None or 1 <= regen["steps_to_recover"] <= 200
    assert printed["regeneration"]["grown"] is False and printed["regeneration"]["regrown"] == 0
    assert printed["regeneration"]["regrown_wide"] == 0
    assert "persistence: holds while loss <=" in result.stderr
    assert "regrown: 0/5; wide cuts (past the middle): 0/4" in result.stderr
    videos = smoke_checkpoint.parent / "last_videos"
    assert (videos / "growth.mp4").is_file()
    assert len(list(videos.glob("regeneration_*.mp4"))) == 9  # five cuts and four wide ones
