"""End to end: every perception trains through Hydra compose; runs leave their artefacts; resume continues."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from conftest import PERCEPTIONS

from ncalab.errors import ConfigError
from ncalab.train import run


def test_the_source_perceptions_the_operator_bank_and_multiscale_are_configured():
    # At least these (a new file in conf/perception/ joins them without editing this test).
    source = {"sobel3", "sobel5", "sobel5_diag", "trainable_truncated", "trainable_scale"}
    assert source | {"operators", "multiscale"} <= set(PERCEPTIONS)


def test_trainable_truncated_uses_its_own_rollout(tmp_path):
    from conftest import make_cfg

    cfg = make_cfg(tmp_path, "perception=trainable_truncated")
    assert (cfg.rollout.min_steps, cfg.rollout.max_steps, cfg.rollout.backprop_steps) == (64, 64, 16)
    cfg = make_cfg(tmp_path, "perception=sobel3")
    assert (cfg.rollout.min_steps, cfg.rollout.max_steps, cfg.rollout.backprop_steps) == (64, 96, None)


def test_parameter_counts_differ_only_by_trainable_kernels(smoke_cfg):
    from ncalab.train import build_module

    counts = {
        p: sum(t.numel() for t in build_module(smoke_cfg(f"perception={p}")).parameters())
        for p in PERCEPTIONS
    }
    # hidden=32, C=16: 1x1 conv (C*(1+n) -> 32, bias) + (32 -> 16, no bias: model.update_bias=false)
    fixed = {"sobel3": 2, "sobel5": 2, "sobel5_diag": 4}
    for name, n in fixed.items():
        assert counts[name] == 16 * (1 + n) * 32 + 32 + 32 * 16
    assert counts["trainable_truncated"] == counts["sobel3"] + 16 * 2 * 9
    assert counts["trainable_scale"] == counts["trainable_truncated"] + 2
    # 3 operators at 3 levels: 9 responses per channel, no perception parameters
    assert counts["multiscale"] == 16 * (1 + 9) * 32 + 32 + 32 * 16


@pytest.mark.parametrize(
    "override, key",
    [
        ("rollout.min_steps=100", "rollout.min_steps"),
        ("model.fire_rate=1.5", "model.fire_rate"),
        ("model.fire_rate=0", "model.fire_rate"),
        ("data.batch_size=abc", "data.batch_size"),
        ("data.mode=shrinking", "data.mode"),
        ("data.damage_share=0.75", "data.damage_share"),
        ("data.damage_share=1.5", "data.damage_share"),
        ("loss.overflow_weight=-1", "loss.overflow_weight"),
        ("grad.mode=sometimes", "grad.mode"),
        ("optim.lr=-1", "optim.lr"),
        ("schedule.gamma=2", "schedule.gamma"),
        ("+optim.weight_decay=-1", "optim"),  # torch's own check, in one line naming the group
        ("+optim.momentum=0.9", "optim"),  # not a setting of Adam
        ("optim._target_=torch.optim.NoSuchOptimizer", "optim"),
        ("schedule._partial_=false", "schedule"),
        ("trainer.max_steps=0", "trainer.max_steps"),
        ("perception.channels=8", "perception.channels"),
    ],
)
def test_bad_config_values_name_the_key(smoke_cfg, tmp_path, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        run(smoke_cfg(override))
    assert not (tmp_path / "run" / "checkpoints").exists()
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "failed" and key in status["error"]


def test_bad_target_in_config_raises_the_target_error(smoke_cfg, tmp_path):
    from ncalab.errors import TargetError

    with pytest.raises(TargetError, match="/no/such/file.png"):
        run(smoke_cfg("data.target=/no/such/file.png"))
    with pytest.raises(ConfigError, match=r"^perception: .*init"):
        run(smoke_cfg("perception=trainable_scale", "perception.kernel_size=7", out=tmp_path / "b"))


class OptimProbe(L.Callback):
    def on_train_start(self, trainer, pl_module):
        self.optimizer = trainer.optimizers[0]
        self.scheduler = trainer.lr_scheduler_configs[0].scheduler


def test_the_optimiser_and_schedule_are_any_torch_classes_named_in_the_config(smoke_cfg):
    probe = OptimProbe()
    run(
        smoke_cfg(
            "optim._target_=torch.optim.AdamW",
            "+optim.weight_decay=0.03",
            "schedule._target_=torch.optim.lr_scheduler.CosineAnnealingLR",
            "~schedule.milestones",
            "~schedule.gamma",
            "+schedule.T_max=4",
        ),
        [probe],
    )
    assert type(probe.optimizer) is torch.optim.AdamW
    assert probe.optimizer.param_groups[0]["weight_decay"] == 0.03
    assert type(probe.scheduler) is torch.optim.lr_scheduler.CosineAnnealingLR
    assert probe.optimizer.param_groups[0]["lr"] == pytest.approx(0.0)  # cosine over T_max=4 steps ends at 0
