"""The divergence guard: a blown-up step is never applied; stop ends on the last good state, rollback goes on."""

from __future__ import annotations

import json
import math

import lightning as L
import pytest
import torch

from ncalab.checkpoint import read_checkpoint
from ncalab.train import run


class PoisonWeights(L.Callback):
    """Fill the first update layer with NaN at the start of the given optimiser steps."""

    def __init__(self, steps):
        self.steps = set(steps)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step in self.steps:
            with torch.no_grad():
                pl_module.nca.update[0].weight.fill_(math.nan)


def summary(out):
    return json.loads((out / "summary.json").read_text())


def finite_checkpoint(out) -> bool:
    ckpt = read_checkpoint(out / "checkpoints" / "last.ckpt")
    pool = next(v for k, v in ckpt.items() if k.endswith("NCADataModule"))["pool"]
    return all(torch.isfinite(t).all() for t in ckpt["state_dict"].values()) and bool(
        torch.isfinite(pool).all()
    )


def test_stop_ends_the_run_cleanly_on_the_last_good_state(smoke_cfg, tmp_path, caplog):
    out = tmp_path / "run"
    with caplog.at_level("WARNING", logger="ncalab"):
        run(
            smoke_cfg("guard.action=stop", "trainer.max_steps=6", "guard.snapshot_every=1"),
            [PoisonWeights([2])],
        )
    s = summary(out)
    assert s["stopped_by_guard"] is True and s["divergences"] == 1
    event = s["divergence_events"][0]
    assert event["step"] == 2 and event["action"] == "stop" and "non-finite loss" in event["cause"]
    assert s["steps"] < 6
    assert finite_checkpoint(out)  # the saved checkpoint is the last good state, not the poisoned one
    assert json.loads((out / "status.json").read_text())["status"] == "finished"
    assert any("divergence at step 2" in r.message and "non-finite loss" in r.message for r in caplog.records)


def test_rollback_restores_lowers_the_lr_and_goes_on(smoke_cfg, tmp_path):
    out = tmp_path / "run"
    cfg = smoke_cfg(
        "guard.action=rollback", "guard.lr_factor=0.25", "trainer.max_steps=6", "guard.snapshot_every=1"
    )
    run(cfg, [PoisonWeights([2])])
    s = summary(out)
    assert s["stopped_by_guard"] is False and s["steps"] == 6
    assert [e["action"] for e in s["divergence_events"]] == ["rollback"]
    assert s["divergence_events"][0]["lr"] == pytest.approx(2e-3 * 0.25)
    assert math.isfinite(s["train_loss"]) and finite_checkpoint(out)
    ckpt = read_checkpoint(out / "checkpoints" / "last.ckpt")
    assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(2e-3 * 0.25)


def test_rollback_gives_up_after_max_rollbacks(smoke_cfg, tmp_path):
    out = tmp_path / "run"
    cfg = smoke_cfg(
        "guard.action=rollback", "guard.max_rollbacks=2", "trainer.max_steps=8", "guard.snapshot_every=1"
    )
    run(cfg, [PoisonWeights(range(2, 8))])
    s = summary(out)
    assert [e["action"] for e in s["divergence_events"]] == ["rollback", "rollback", "stop"]
    assert s["stopped_by_guard"] is True and finite_checkpoint(out)


def test_a_huge_learning_rate_is_caught(smoke_cfg, tmp_path):
    out = tmp_path / "run"
    run(smoke_cfg("optim.lr=1000", "grad.mode=off", "guard.max_state=50", "trainer.max_steps=8"))
    s = summary(out)
    assert s["divergences"] >= 1 and s["stopped_by_guard"] is True
    assert finite_checkpoint(out)


def test_without_the_guard_the_poison_is_applied(smoke_cfg, tmp_path):
    out = tmp_path / "run"
    run(smoke_cfg("guard.enabled=false", "trainer.max_steps=4"), [PoisonWeights([2])])
    s = summary(out)
    assert s["divergences"] == 0 and math.isnan(s["train_loss"])


def test_successive_rollbacks_keep_lowering_the_lr(smoke_cfg, tmp_path):
    """Every rollback restores the same snapshot (with the lr it had), yet each one lowers the lr in use further;
    the final stop lowers it once more, so that last.ckpt does not resume at a rate that diverged."""
    out = tmp_path / "run"
    cfg = smoke_cfg(
        "guard.action=rollback", "guard.max_rollbacks=3", "trainer.max_steps=9", "guard.snapshot_every=1"
    )
    run(cfg, [PoisonWeights(range(2, 9))])
    events = summary(out)["divergence_events"]
    assert [e["action"] for e in events] == ["rollback", "rollback", "rollback", "stop"]
    assert {e["restored_step"] for e in events} == {1}  # the same snapshot every time
    assert [e["lr"] for e in events] == pytest.approx([1e-3, 5e-4, 2.5e-4, 1.25e-4])
    ckpt = read_checkpoint(out / "checkpoints" / "last.ckpt")
    assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(1.25e-4)


def test_a_guard_stop_reports_the_last_good_loss_and_a_lowered_lr(smoke_cfg, tmp_path):
    out = tmp_path / "run"
    run(
        smoke_cfg(
            "guard.action=stop", "trainer.max_steps=6", "guard.snapshot_every=1", "guard.lr_factor=0.1"
        ),
        [PoisonWeights([3])],
    )
    s = summary(out)
    assert s["stopped_by_guard"] is True
    assert math.isfinite(s["train_loss"]) and s["train_loss"] > 0  # not the NaN of the step that diverged
    assert s["divergence_events"][0]["lr"] == pytest.approx(2e-4)
    ckpt = read_checkpoint(out / "checkpoints" / "last.ckpt")
    assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(2e-4)
