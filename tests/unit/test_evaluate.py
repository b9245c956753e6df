"""`python -m ncalab.evaluate`: quality, persistence and regeneration of a checkpoint or an exported model folder;
and the one end-of-run measurement that summary.json, evaluation.json and final.png all come from."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from ncalab.evaluate import (
    HOLD_FACTOR,
    evaluate_model,
    evaluate_nca,
    holds_steps,
    long_run,
    main,
    measure_nca,
    parse_steps,
)
from ncalab.media import REGIONS, frames_uint8
from ncalab.nca import NCA
from ncalab.perception import FixedPerception

SMALL = dict(rollouts=2, long_run_steps=(16, 32), grow_steps=8, regrow_steps=8)


@pytest.fixture(scope="module")
def smoke_folder(smoke_checkpoint, tmp_path_factory):
    from ncalab.demo import export_checkpoint

    folder = tmp_path_factory.mktemp("exported") / "smoke"
    export_checkpoint(smoke_checkpoint, folder)
    return folder


def _identity_nca(**kwargs) -> NCA:
    # Untrained: the last layer is zero, so the update is exactly zero and no state ever changes.
    return NCA(FixedPerception(16, "sobel3"), hidden=8, **kwargs)


def _square_target() -> torch.Tensor:
    """An opaque 4x4 square of one colour (premultiplied RGBA) in a 12x12 grid."""
    target = torch.zeros(4, 12, 12)
    target[:3, 4:8, 4:8] = torch.tensor([0.5, 0.2, 0.8]).view(3, 1, 1)
    target[3, 4:8, 4:8] = 1.0
    return target


def _state_of(target: torch.Tensor) -> torch.Tensor:
    x = torch.zeros(1, 16, *target.shape[-2:])
    x[:, :4] = target
    return x


def test_holds_steps_is_the_last_check_before_the_first_failure():
    assert holds_steps([(16, 0.1), (32, 0.2), (64, 0.3)], 0.1) == 32  # 0.2 <= 2 x 0.1 < 0.3
    assert holds_steps([(64, 0.1), (16, 0.1), (32, 0.5)], 0.1) == 16  # checks are taken in step order
    assert holds_steps([(16, 0.1), (32, 0.5), (64, 0.1)], 0.1) == 16  # a later pass does not count
    assert holds_steps([(16, 0.3), (32, 0.1)], 0.1) == 0
    assert holds_steps([(16, 0.1), (32, None)], 0.1) == 16  # None: a non-finite state fails
    assert holds_steps([(16, math.nan)], 0.1) == 0
    assert holds_steps([(16, 0.1)], math.nan) == 0
    assert holds_steps([(16, 0.3)], 0.1, factor=3.0) == 16
    assert HOLD_FACTOR == 2.0


def test_a_zero_update_started_from_the_target_holds_to_the_last_check():
    target = _square_target()
    result = long_run(_identity_nca(), _state_of(target), target, (10, 100, 1000), horizon_loss=0.0)
    assert result["loss"] == {"10": 0.0, "100": 0.0, "1000": 0.0}
    assert result["holds_steps"] == 1000 and result["non_finite"] is False
    assert result["hold_factor"] == HOLD_FACTOR


def test_a_constant_update_drifts_away_and_does_not_hold():
    target = _square_target()
    nca = _identity_nca(update_bias=True, fire_rate=1.0)
    with torch.no_grad():
        nca.update[-1].bias.fill_(1e-3)  # every live cell gains 1e-3 in every channel at every step
    x0 = _state_of(target)
    with torch.no_grad():
        after_one = float(((nca.step(x0)[:, :4] - target) ** 2).mean())
    result = long_run(nca, x0, target, (1, 2, 8), horizon_loss=after_one)
    # the error after k steps is k x 1e-3 on every live cell: the loss grows as k^2, 4x at step 2
    assert result["loss"]["2"] == pytest.approx(4 * after_one, rel=1e-3)
    assert result["holds_steps"] == 1 < 8
    assert result["non_finite"] is False


def test_a_model_that_never_moves_is_grown_but_never_regrows():
    target = torch.zeros(4, 12, 12)
    target[3, 6, 6] = 1.0  # exactly the seed's RGBA: the untouched seed is perfect
    result = evaluate_nca(
        _identity_nca(), target, horizon=8, rollouts=2, long_run_steps=(4, 8), grow_steps=4, regrow_steps=4
    )
    assert result["long_run"]["non_finite"] is False
    assert result["long_run"]["loss"]["4"] == result["long_run"]["loss"]["8"] == 0.0
    assert result["long_run"]["holds_steps"] == 8
    regen = result["regeneration"]
    assert regen["grown"] is True  # the seed is the whole pattern here
    # cutting the centre removes the seed for good; cutting the left half misses it: no damage, nothing regrown
    assert regen["center"]["damaged"] is True and regen["center"]["steps_to_recover"] is None
    assert regen["left"]["damaged"] is False and regen["left"]["steps_to_recover"] == 1
    assert not any(regen[r]["regrown"] for r in REGIONS) and regen["regrown"] == 0


def test_a_seed_that_grows_nothing_is_not_grown_and_regrows_nothing():
    from ncalab.targets import load_target

    target = load_target("flower", 12, 4)
    result = evaluate_nca(
        _identity_nca(), target, horizon=8, rollouts=1, long_run_steps=(8,), grow_steps=8, regrow_steps=4
    )
    regen = result["regeneration"]
    assert regen["grown"] is False and regen["undamaged_psnr"] < regen["grown_psnr_min"]
    assert regen["regrown"] == 0
    # before the "grown" rule these cuts counted as regrown: the loss never rose, so it was "back" at once
    assert sum(regen[r]["steps_to_recover"] is not None for r in REGIONS) == 5


def test_a_diverging_model_is_reported_non_finite():
    nca = _identity_nca(update_bias=True)
    with torch.no_grad():
        nca.update[-1].bias.fill_(3e38)  # live cells overflow within two updates
    target = torch.zeros(4, 12, 12)
    result = evaluate_nca(
        nca, target, horizon=4, rollouts=1, long_run_steps=(4,), grow_steps=2, regrow_steps=2
    )
    assert result["long_run"]["non_finite"] is True
    assert result["long_run"]["loss"]["4"] is None
    assert result["long_run"]["holds_steps"] == 0
    assert result["regeneration"]["grown"] is False and result["regeneration"]["regrown"] == 0


def test_parse_steps():
    assert parse_steps("2000, 500,1000,500") == (500, 1000, 2000)
    assert parse_steps([16, 32.0]) == (16, 32)
    for bad in ("5,x", "", "0,5", "-3", "1.5", [16, True]):
        with pytest.raises(ValueError):
            parse_steps(bad)


def test_the_end_of_run_summary_image_and_evaluation_are_one_measurement(smoke_run, smoke_checkpoint):
    from ncalab.checkpoint import load_nca
    from ncalab.targets import load_target

    evaluation = json.loads((smoke_run / "evaluation.json").read_text())
    summary = json.loads((smoke_run / "summary.json").read_text())
    assert set(evaluation["long_run"]["loss"]) == {"16", "32"}
    assert set(evaluation["regeneration"]) >= set(REGIONS)
    assert summary["psnr"] == evaluation["psnr"] and summary["ssim"] == evaluation["ssim"]
    assert summary["eval_loss"] == evaluation["loss"] and summary["eval_steps"] == evaluation["horizon"] == 24
    assert summary["holds_steps"] == evaluation["long_run"]["holds_steps"]
    assert summary["regrown"] == evaluation["regeneration"]["regrown"]
    assert summary["grown"] == evaluation["regeneration"]["grown"]
    # 4 training steps grow nothing but the seed: nothing to cut, so nothing counts as regrown
    assert summary["grown"] is False and summary["regrown"] == 0

    # Measured again from the checkpoint with the callback's settings: the same numbers, and final.png shows
    # the pattern that measurement grew.
    nca, config = load_nca(smoke_checkpoint)
    data = config["data"]
    target = load_target(data["target"], data["target_size"], data["padding"])
    again = measure_nca(
        nca,
        target,
        24,
        rollouts=2,
        long_run_steps=(16, 32),
        grow_steps=16,
        regrow_steps=8,
        seed=config["seed"],
    )
    assert json.loads(json.dumps(again.result)) == evaluation
    with Image.open(smoke_run / "final.png") as im:
        shown = np.asarray(im.convert("RGB"))
    grown = frames_uint8([again.grown], 4)[0].transpose(1, 2, 0)
    assert np.array_equal(shown[:, -grown.shape[1] :], grown)


def test_an_exported_folder_evaluates_exactly_like_its_checkpoint(smoke_checkpoint, smoke_folder):
    from_ckpt = evaluate_model(smoke_checkpoint, **SMALL)
    from_folder = evaluate_model(smoke_folder, **SMALL)
    assert from_ckpt.pop("kind") == "checkpoint" and from_folder.pop("kind") == "folder"
    assert from_ckpt.pop("model") == str(smoke_checkpoint) and from_folder.pop("model") == str(smoke_folder)
    assert from_folder == from_ckpt
    assert from_folder["perception"] == "sobel3"


def test_the_folder_model_is_built_from_its_tensors_alone(smoke_folder, tmp_path):
    from ncalab.demo import FORMAT
    from ncalab.exported import MODEL_FORMAT, StoredPerception, load_model_folder

    assert MODEL_FORMAT == FORMAT  # the reader follows the exporter's layout

    meta = json.loads((smoke_folder / "model.json").read_text())
    meta["perception"]["class"] = "no.such.Module"  # names in the file are labels, never looked up
    meta["config"]["perception"]["_target_"] = "no.such.Module"
    folder = tmp_path / "renamed"
    folder.mkdir()
    (folder / "model.json").write_text(json.dumps(meta))
    (folder / "model.bin").write_bytes((smoke_folder / "model.bin").read_bytes())
    nca, _ = load_model_folder(folder)
    assert isinstance(nca.perception, StoredPerception) and nca.update_bias is False  # the smoke b2 is zero


def test_a_folder_rebuilds_with_a_bias_only_when_it_has_one(tmp_path):
    from ncalab.demo import pretrained_dir
    from ncalab.exported import load_model_folder

    nca, meta = load_model_folder(pretrained_dir("flower"))
    assert nca.update_bias is False and nca.hidden == meta["hidden"]  # trained without one: b2 is all zeros
    assert nca.perception.kernel_size == 3 and nca.perception.n_ops == 2
    # The same folder with a non-zero b2 (as models trained before model.update_bias existed) keeps it.
    folder = tmp_path / "with_bias"
    folder.mkdir()
    (folder / "model.json").write_text((pretrained_dir("flower") / "model.json").read_text())
    blob = np.frombuffer((pretrained_dir("flower") / "model.bin").read_bytes(), dtype="<f4").copy()
    start = meta["tensors"]["b2"]["offset"]
    blob[start : start + meta["channels"]] = 0.01
    (folder / "model.bin").write_bytes(blob.tobytes())
    nca, _ = load_model_folder(folder)
    assert nca.update_bias is True and torch.allclose(
        nca.update[-1].bias, torch.full((meta["channels"],), 0.01)
    )


@pytest.mark.parametrize("damage", ["missing", "no_json", "bad_json", "no_bin", "short_bin"])
def test_a_missing_or_broken_folder_exits_2_naming_it(smoke_folder, tmp_path, capsys, damage):
    folder = tmp_path / "model"
    if damage != "missing":
        folder.mkdir()
        if damage != "no_json":
            text = (smoke_folder / "model.json").read_text()
            (folder / "model.json").write_text("{nope" if damage == "bad_json" else text)
        if damage == "short_bin":
            (folder / "model.bin").write_bytes((smoke_folder / "model.bin").read_bytes()[:100])
    assert main([str(folder)]) == 2
    err = capsys.readouterr().err
    assert str(folder) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("value", ["5,x", "", "0", "16,-2"])
def test_cli_refuses_a_bad_long_run_list(capsys, value):
    with pytest.raises(SystemExit) as exit_info:
        main(["whatever.ckpt", "--long-run", value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--long-run" in err and "expected positive step counts like 500,1000,2000" in err


def test_cli_on_a_folder_prints_writes_and_tables(smoke_folder, capsys):
    assert main([str(smoke_folder), "--long-run", "32,16", "--rollouts", "1", "--grow-steps", "8"]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert printed == json.loads((smoke_folder / "evaluation.json").read_text())
    assert set(printed["long_run"]["loss"]) == {"16", "32"}
    assert printed["long_run"]["holds_steps"] in (0, 16, 32)
    assert "holds_steps:" in captured.err and "regrown: 0/5" in captured.err


def test_the_centre_cut_is_half_the_pattern_not_half_the_grid():
    """On a small pattern in a wide grid, the centre cut takes the middle of the pattern (about a quarter of its box,
    as a half cut takes half), not the whole of it; without a box it is the middle of the grid."""
    from ncalab.media import cut_region, pattern_box
    from ncalab.targets import load_target

    target = load_target("flower", 24, 6)  # 36x36 grid
    box = pattern_box(target)
    assert box == (6, 30, 6, 30)
    x = torch.ones(1, 16, 36, 36)
    cut = cut_region(x, "center", box)
    rows, cols = (cut[0, 3] == 0).nonzero(as_tuple=True)
    assert (int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())) == (12, 23, 12, 23)
    assert bool((cut[0, :, rows, cols] == 0).all()) and int((cut[0, 3] == 0).sum()) == 144
    inside = target[3] > 0
    kept = float((cut[0, 3].bool() & inside).sum()) / float(inside.sum())
    half = float((cut_region(x, "left", box)[0, 3].bool() & inside).sum()) / float(inside.sum())
    assert 0.4 < half < 0.6 and 0.45 < kept < 0.9
    whole = cut_region(x, "center")  # the grid's middle half, as before boxes
    assert int((whole[0, 3] == 0).sum()) == 18 * 18 and bool((whole[0, 3, 9:27, 9:27] == 0).all())
    assert pattern_box(torch.zeros(4, 5, 7)) == (0, 5, 0, 7)


def test_evaluation_cuts_the_centre_of_the_pattern(smoke_checkpoint):
    result = evaluate_model(smoke_checkpoint, **SMALL)
    top, bottom, left, right = result["regeneration"]["pattern_box"]
    assert 0 <= top < bottom and 0 <= left < right


def test_the_long_run_trace_tells_a_moving_pattern_from_hidden_drift():
    from ncalab.evaluate import shape_trace

    target = _square_target().unsqueeze(0)
    x = _state_of(target[0])
    still = shape_trace(x[:, :4], x, target)
    assert still == {"excess": 0.0, "missing": 0.0, "hidden_max": 0.0}
    moved = torch.roll(x, shifts=2, dims=-1)  # the square two cells to the right: half outside, half missing
    t = shape_trace(moved[:, :4], moved, target)
    assert t["excess"] == pytest.approx(8.0) and t["missing"] == pytest.approx(8.0)
    drifted = x.clone()
    drifted[:, 7] = 5.0
    assert shape_trace(drifted[:, :4], drifted, target)["hidden_max"] == 5.0


def test_the_long_run_reports_its_trace_at_each_check():
    target = _square_target()
    result = long_run(_identity_nca(), _state_of(target), target, (10, 100), horizon_loss=0.0)
    assert result["trace"] == {
        "10": {"excess": 0.0, "missing": 0.0, "hidden_max": 0.0},
        "100": {"excess": 0.0, "missing": 0.0, "hidden_max": 0.0},
    }


def test_the_image_compared_at_a_common_size_is_the_fitted_square_resized():
    """compare_at_size cuts the square the target was fitted into (the seed's shift included) and resizes it: the
    training target itself scores as the target drawn at that size, exactly at its own size, closely when upscaled."""
    from ncalab.evaluate import EvaluationError, compare_at_size
    from ncalab.targets import load_target

    data = {"target": "emoji:doughnut", "target_size": 24, "padding": 6, "seed_on_pattern": True}
    trained = load_target("emoji:doughnut", 24, 6, on_seed=True).unsqueeze(
        0
    )  # moved: the seed is in the hole
    assert not torch.equal(trained, load_target("emoji:doughnut", 24, 6).unsqueeze(0))
    same = compare_at_size(trained.repeat(2, 1, 1, 1), data, 1, 24)
    assert same["size"] == 24 and same["from_size"] == 24 and same["psnr"] == math.inf
    up = compare_at_size(trained, data, 1, 96)
    assert 10 < up["psnr"] < 40 and 0.4 < up["ssim"] < 1  # a 24 px image upscaled 4x loses its detail
    blank = compare_at_size(torch.zeros_like(trained), data, 1, 96)
    assert blank["psnr"] < up["psnr"] - 5 and blank["ssim"] < up["ssim"]
    # A decoder's image (4 px per cell) is compared as drawn.
    drawn = load_target("emoji:doughnut", 128, 16, on_seed=True, cell=4).unsqueeze(0)
    data128 = {**data, "target_size": 128, "padding": 16}
    assert compare_at_size(drawn, data128, 4, 128)["psnr"] == math.inf
    with pytest.raises(
        EvaluationError, match="comparing at 4000 px: the target .flower. is smaller than 4000 px"
    ):
        compare_at_size(trained, {**data, "target": "flower"}, 1, 4000)


def test_cli_compares_at_a_size_and_refuses_a_bad_one(smoke_folder, capsys):
    assert (
        main(
            [str(smoke_folder), "--long-run", "16", "--rollouts", "1", "--grow-steps", "8", "--at-size", "40"]
        )
        == 0
    )
    captured = capsys.readouterr()
    at = json.loads(captured.out)["at_size"]
    assert at["size"] == 40 and 0 < at["psnr"] < 100 and "at 40 px" in captured.err
    with pytest.raises(SystemExit) as exit_info:
        main([str(smoke_folder), "--at-size", "2"])
    assert exit_info.value.code == 2 and "--at-size" in capsys.readouterr().err


def test_wide_cuts_reach_past_the_middle_by_an_eighth_of_the_pattern():
    from ncalab.media import WIDE_REGIONS, cut_region

    x = torch.ones(1, 4, 36, 36)
    box = (6, 30, 6, 30)  # a 24-cell pattern centred on a 36x36 grid: 3 cells past the middle
    kept = {r: cut_region(x, r, box)[0, 0] for r in WIDE_REGIONS}
    assert kept["left_wide"][:, :21].eq(0).all() and kept["left_wide"][:, 21:].eq(1).all()
    assert kept["right_wide"][:, 15:].eq(0).all() and kept["right_wide"][:, :15].eq(1).all()
    assert kept["top_wide"][:21].eq(0).all() and kept["top_wide"][21:].eq(1).all()
    assert kept["bottom_wide"][15:].eq(0).all() and kept["bottom_wide"][:15].eq(1).all()
    # Each takes 5/8 of the centred pattern, more than the half a plain cut takes.
    for region in WIDE_REGIONS:
        assert int(kept[region][6:30, 6:30].eq(0).sum()) == 24 * 15
