"""The rendering choice: render=cells is exactly the per-cell image; render=decoder draws the image `scale` times
finer than the cell grid, trains, checkpoints, resumes and evaluates on the drawn image; bad settings get one line."""

from __future__ import annotations

import json

import pytest
import torch

from ncalab.errors import CheckpointError


@pytest.fixture(scope="module")
def decoder_run(tmp_path_factory):
    from conftest import make_cfg

    from ncalab.train import run

    out = tmp_path_factory.mktemp("decoder") / "run"
    summary = run(make_cfg(out, "experiment=smoke", "render=decoder", "render.scale=2", "logger=csv"))
    return out, summary


def test_a_decoder_run_trains_on_the_drawn_image_and_writes_it(decoder_run):
    from PIL import Image

    out, summary = decoder_run
    written = json.loads((out / "summary.json").read_text())
    assert written["render"] == "decoder" and written["grid"] == [10, 10] and written["image"] == [20, 20]
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["regeneration"]["pattern_box"][1] <= 10  # cuts are on the cell grid
    # final.png: the 20 px target beside the 20 px image, 4 pixels per image pixel, 4 px gap
    assert Image.open(out / "final.png").size == (20 * 4 * 2 + 4, 20 * 4)
    frames = sorted((out / "media").glob("growth_*"))
    assert frames, "no growth video"


def test_a_decoder_checkpoint_resumes_and_evaluates_the_same_way(decoder_run, smoke_cfg, tmp_path):
    from ncalab.evaluate import evaluate_model
    from ncalab.train import run

    out, _ = decoder_run
    ckpt = out / "checkpoints" / "last.ckpt"
    resumed = tmp_path / "resumed"
    run(
        smoke_cfg(f"ckpt_path={ckpt}", "trainer.max_steps=6", "render=decoder", "render.scale=2", out=resumed)
    )
    assert torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
    result = evaluate_model(ckpt, rollouts=1, long_run_steps=(16,), grow_steps=8, regrow_steps=4)
    saved = json.loads((out / "evaluation.json").read_text())
    assert result["horizon"] == saved["horizon"] and 0 <= result["loss"] < 1
    with pytest.raises(
        CheckpointError,
        match=r"(?s)render: checkpoint has .*decoder.*this run has .*cells.*e\.g\. render=decoder render\.scale=2",
    ):
        run(smoke_cfg(f"ckpt_path={ckpt}", "trainer.max_steps=6", out=tmp_path / "cells"))


def test_a_decoder_model_exports_and_its_folder_evaluates_like_its_checkpoint(decoder_run, tmp_path):
    from ncalab.demo import export_checkpoint
    from ncalab.evaluate import evaluate_model

    out, _ = decoder_run
    ckpt = out / "checkpoints" / "last.ckpt"
    export_checkpoint(ckpt, tmp_path / "site")
    meta = json.loads((tmp_path / "site" / "model.json").read_text())
    assert meta["grid"] == [10, 10] and meta["render"]["name"] == "decoder" and meta["render"]["scale"] == 2
    assert {"render_w0", "render_b1", "render_head_w"} <= set(meta["tensors"])
    kwargs = {"rollouts": 1, "long_run_steps": (16,), "grow_steps": 8, "regrow_steps": 4}
    from_folder = evaluate_model(tmp_path / "site", **kwargs)
    from_checkpoint = evaluate_model(ckpt, **kwargs)
    assert from_folder["loss"] == pytest.approx(from_checkpoint["loss"], rel=1e-5)
    assert from_folder["regeneration"]["pattern_box"] == from_checkpoint["regeneration"]["pattern_box"]


def test_render_cells_is_bit_for_bit_the_per_cell_training(smoke_cfg, tmp_path):
    from ncalab.train import run

    a = run(smoke_cfg("~render", out=tmp_path / "without"))  # a config from before the choice existed
    b = run(smoke_cfg("render=cells", out=tmp_path / "cells"))
    assert a["train_loss"] == b["train_loss"] and a["eval_loss"] == b["eval_loss"]
