"""Resuming does what it says: optimiser settings given on resume are applied (and said so), a checkpoint that
has nothing left to train is refused, and the pool's mode must match."""

from __future__ import annotations

import json

import lightning as L
import pytest

from ncalab.checkpoint import read_checkpoint
from ncalab.errors import CheckpointError, ConfigError
from ncalab.train import run


class LrProbe(L.Callback):
    def __init__(self):
        self.lrs: dict[int, float] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs[trainer.global_step] = trainer.optimizers[0].param_groups[0]["lr"]


def lr_of(path) -> float:
    return read_checkpoint(path)["optimizer_states"][0]["param_groups"][0]["lr"]


@pytest.fixture
def first(smoke_cfg, tmp_path):
    """A finished 4-step run whose lr dropped from 2e-3 to 2e-4 at step 2."""
    run(smoke_cfg("schedule.milestones=[2]", out=tmp_path / "first"))
    ckpt = tmp_path / "first" / "checkpoints" / "last.ckpt"
    assert lr_of(ckpt) == pytest.approx(2e-4)
    return ckpt


def test_optimiser_settings_given_on_resume_are_applied(smoke_cfg, tmp_path, first, caplog):
    probe = LrProbe()
    out = tmp_path / "second"
    with caplog.at_level("WARNING", logger="ncalab"):
        run(
            smoke_cfg(
                f"ckpt_path={first}",
                "trainer.max_steps=7",
                "optim.lr=5e-4",
                "schedule.milestones=[2,5]",
                out=out,
            ),
            [probe],
        )
    assert probe.lrs[4] == pytest.approx(5e-4)  # the new lr from the resumed step on
    assert probe.lrs[6] == pytest.approx(5e-5)  # and the new milestone at step 5
    assert lr_of(out / "checkpoints" / "last.ckpt") == pytest.approx(5e-5)
    messages = [r.getMessage() for r in caplog.records]
    assert any("optim.lr=0.0005 replaces the checkpoint's 0.002" in m for m in messages), messages
    assert any("schedule.milestones=[2, 5] replaces the checkpoint's [2]" in m for m in messages), messages


def test_settings_not_given_keep_the_checkpoints_optimiser(smoke_cfg, tmp_path, first, caplog):
    probe = LrProbe()
    with caplog.at_level("WARNING", logger="ncalab"):
        run(
            smoke_cfg(
                f"ckpt_path={first}", "trainer.max_steps=6", "schedule.milestones=[2]", out=tmp_path / "b"
            ),
            [probe],
        )
    assert probe.lrs[4] == pytest.approx(2e-4)  # as the schedule left it, not optim.lr
    assert not [r for r in caplog.records if "resume:" in r.getMessage()]


def test_resuming_a_checkpoint_with_nothing_left_to_train_is_refused(smoke_cfg, tmp_path, first):
    out = tmp_path / "again"
    with pytest.raises(ConfigError, match=r"already at step 4.*trainer\.max_steps=4"):
        run(smoke_cfg(f"ckpt_path={first}", "schedule.milestones=[2]", out=out))
    assert not (out / "checkpoints").exists()
    assert json.loads((out / "status.json").read_text())["status"] == "failed"


def test_resuming_with_another_pool_mode_is_refused(smoke_cfg, tmp_path, first):
    with pytest.raises(
        CheckpointError, match=r"data\.mode: checkpoint has regenerating, this run has growing"
    ):
        run(smoke_cfg(f"ckpt_path={first}", "trainer.max_steps=6", "data.mode=growing", out=tmp_path / "c"))


def test_resuming_with_another_optimiser_class_is_refused(smoke_cfg, tmp_path, first):
    with pytest.raises(
        CheckpointError,
        match=r"optim\._target_: checkpoint has torch\.optim\.Adam, this run has torch\.optim\.AdamW",
    ):
        run(
            smoke_cfg(
                f"ckpt_path={first}",
                "trainer.max_steps=6",
                "optim._target_=torch.optim.AdamW",
                out=tmp_path / "d",
            )
        )


def test_a_setting_added_on_resume_is_applied(smoke_cfg, tmp_path, first, caplog):
    class DecayProbe(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.decay = trainer.optimizers[0].param_groups[0]["weight_decay"]

    probe = DecayProbe()
    with caplog.at_level("WARNING", logger="ncalab"):
        run(
            smoke_cfg(
                f"ckpt_path={first}", "trainer.max_steps=6", "+optim.weight_decay=0.01", out=tmp_path / "e"
            ),
            [probe],
        )
    assert probe.decay == pytest.approx(0.01)
    messages = [r.getMessage() for r in caplog.records]
    assert any("optim.weight_decay=0.01 replaces the checkpoint's class default" in m for m in messages), (
        messages
    )


def test_a_checkpoint_from_before_the_schedule_group_resumes(smoke_cfg, tmp_path, first, caplog):
    """Checkpoints written when ``optim`` held lr, betas, milestones and gamma (no ``schedule``, no
    ``_target_``s) resume as Adam with a step schedule, and a changed milestone is still applied."""
    import torch

    ckpt = torch.load(first, map_location="cpu", weights_only=False)
    config = ckpt["hyper_parameters"]["config"]
    schedule = config.pop("schedule")
    config["optim"] = {"lr": 2e-3, "betas": [0.9, 0.999], "milestones": schedule["milestones"], "gamma": 0.1}
    config["model"].pop("_target_")
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    probe = LrProbe()
    with caplog.at_level("WARNING", logger="ncalab"):
        run(
            smoke_cfg(
                f"ckpt_path={old}", "trainer.max_steps=7", "schedule.milestones=[2,5]", out=tmp_path / "f"
            ),
            [probe],
        )
    assert probe.lrs[4] == pytest.approx(2e-4)  # the checkpoint's rate, as its schedule left it
    assert probe.lrs[6] == pytest.approx(2e-5)  # the milestone added on resume
    messages = [r.getMessage() for r in caplog.records if "resume:" in r.getMessage()]
    assert messages == [
        "resume: schedule.milestones=[2, 5] replaces the checkpoint's [2] (from step 4 on)"
    ], messages
