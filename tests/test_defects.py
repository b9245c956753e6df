"""Defects found by trying ncalab as an attacker and an unlucky user would: each test here failed on the code
before its fix."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    "saved",
    ["${oc.env:HOME}", "${ncalab.fresh_dir:/tmp/x}", "a/b", "../up", {"a": 1}, ["x"], "x" * 65, "with space"],
)
def test_a_checkpoints_wandb_id_is_data_and_one_that_is_not_a_wandb_id_is_dropped(saved, caplog):
    from omegaconf import OmegaConf

    from ncalab.loggers import CHECKPOINT_WANDB_ID, resume_extras

    node = OmegaConf.create({"_target_": "ncalab.loggers.wandb_logger", "id": None})
    with caplog.at_level("WARNING", logger="ncalab"):
        extras = resume_extras(node, {"seed": 1}, {CHECKPOINT_WANDB_ID: saved})
    assert "id" not in extras
    assert any(
        "is not a W&B id" in r.getMessage() and "new W&B run" in r.getMessage() for r in caplog.records
    )
    assert resume_extras(node, {"seed": 1}, {CHECKPOINT_WANDB_ID: "3xk9-a_Z"})["id"] == "3xk9-a_Z"


@pytest.mark.slow
def test_a_crafted_checkpoint_cannot_make_a_resume_delete_a_folder_outside_the_run(
    smoke_cfg, tmp_path, caplog
):
    # Lightning restores ModelCheckpoint's saved paths and removes the previous "last" on the next save; a path
    # with `..` passed its inside-the-folder check, so resuming this checkpoint deleted `victim`.
    import torch

    from ncalab.train import run

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    out = tmp_path / "run"
    run(smoke_cfg(out=out))
    ckpt_path = out / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, weights_only=False)
    key = next(k for k in ckpt["callbacks"] if k.startswith("ModelCheckpoint"))
    escape = str(out / "checkpoints" / ".." / ".." / "victim")
    state = ckpt["callbacks"][key]
    state.update(last_model_path=escape, best_model_path=escape, kth_best_model_path=escape)
    state["best_k_models"] = {escape: torch.tensor(0.0)}
    torch.save(ckpt, ckpt_path)

    with caplog.at_level("WARNING", logger="ncalab"):
        run(smoke_cfg(f"ckpt_path={ckpt_path}", "trainer.max_steps=8", out=out))
    assert (victim / "precious.txt").read_text() == "keep me"
    assert any("names files outside" in r.getMessage() for r in caplog.records)
    assert torch.load(ckpt_path, weights_only=False)["global_step"] == 8


# -- huge step counts: refused with one line, long measurements say how far they are ----------------------------


def test_a_long_run_beyond_the_limit_is_refused_at_once(capsys):
    from ncalab.demo import pretrained_dir
    from ncalab.evaluate import MAX_STEPS, main

    with pytest.raises(SystemExit) as stop:
        main([str(pretrained_dir("flower")), "--long-run", "500,1000000000"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"more than the {MAX_STEPS:,} steps" in err and "Traceback" not in err


def test_a_model_folder_with_a_huge_horizon_is_refused_with_one_line(tmp_path, capsys):
    import json
    import shutil

    from ncalab.demo import pretrained_dir
    from ncalab.evaluate import main

    folder = tmp_path / "model"
    shutil.copytree(pretrained_dir("flower"), folder)
    meta = json.loads((folder / "model.json").read_text())
    meta["config"]["rollout"]["max_steps"] = 10**9
    (folder / "model.json").write_text(json.dumps(meta))
    assert main([str(folder), "--output", str(tmp_path / "e.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "rollout.max_steps=1000000000" in err and len(err.splitlines()) == 1, err


def test_a_long_run_says_how_far_it_is(monkeypatch, caplog):
    import torch

    from ncalab import evaluate
    from ncalab.nca import NCA
    from ncalab.perception import FixedPerception

    monkeypatch.setattr(evaluate, "PROGRESS_EVERY_S", 0.0)
    nca = NCA(FixedPerception(16, "sobel3"), hidden=8)
    x = torch.zeros(1, 16, 8, 8)
    with caplog.at_level("INFO", logger="ncalab"):
        result = evaluate.long_run(nca, x, torch.zeros(4, 8, 8), (700, 1200), horizon_loss=0.0)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("long run:")]
    assert [m.split(" (")[0] for m in said] == [
        "long run: step 500 of 1200",
        "long run: step 700 of 1200",
        "long run: step 1200 of 1200",
    ]
    assert result["loss"] == {"700": 0.0, "1200": 0.0}
