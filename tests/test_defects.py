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
