"""End to end: every perception trains through Hydra compose; runs leave their artefacts; resume continues."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import imageio.v2 as imageio
import lightning as L
import pytest
import torch
from conftest import PERCEPTIONS
from PIL import Image

from ncalab.checkpoint import load_nca, read_checkpoint
from ncalab.errors import CheckpointError, ConfigError
from ncalab.nca import seed_state
from ncalab.train import run


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    """Rows of the newest CSV log of a run (a resumed run adds a new version next to the old one)."""
    latest = max(
        (run_dir / "csv").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1])
    )
    with open(latest) as f:
        return list(csv.DictReader(f))


def column(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key)]


@pytest.mark.parametrize("perception", PERCEPTIONS)
def test_every_perception_trains_and_leaves_its_artefacts(smoke_cfg, tmp_path, perception):
    cfg = smoke_cfg(f"perception={perception}", full=True)  # the media are among the artefacts
    summary = run(cfg)
    out = tmp_path / "run"

    ckpt = read_checkpoint(out / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 4
    assert ckpt["hyper_parameters"]["config"]["perception"]["name"] == perception
    assert {"optimizer_states", "lr_schedulers", "loops"} <= set(ckpt)
    pool = next(v for k, v in ckpt.items() if k.endswith("NCADataModule"))["pool"]
    assert pool.shape == (16, 16, 20, 20)

    rows = read_metrics(out)
    for key in ("train/loss", "train/log10_loss", "train/lr", "train/grad_norm"):
        assert len(column(rows, key)) == 4, key
    assert all(torch.isfinite(torch.tensor(column(rows, "train/loss"))))

    assert (out / "config.yaml").read_text().count(f"name: {perception}") == 1
    with Image.open(out / "final.png") as im:
        assert im.size == (20 * 4 * 2 + 4, 20 * 4)  # target | grown, 4 px per cell, 4 px gap
    growth = imageio.mimread(out / "media" / "growth_final.mp4")
    assert len(growth) == 24 // 4 + 1 and growth[0].shape == (20 * 4, 20 * 4, 3)
    assert len(imageio.mimread(out / "media" / "regeneration_final.mp4")) == 24 // 4 + 1 + 16 // 4 + 1
    for name in (
        "growth_step000002.mp4",
        "regeneration_step000002.mp4",
        "pool_step000002.png",
        "pool_final.png",
    ):
        assert (out / "media" / name).is_file(), name
    assert json.loads((out / "status.json").read_text())["status"] == "finished"
    assert summary["objective"] == pytest.approx(summary["eval_loss"])
    for key in ("train/step_time_s", "train/cells_steps_per_s", "train/rollout_steps"):
        assert len(column(rows, key)) == 4, key
    if perception == "trainable_scale":
        assert len(column(rows, "perception/scale_0")) == 4
    saved = json.loads((out / "summary.json").read_text())
    assert saved["perception"] == perception and saved["steps"] == 4
    assert saved["parameters"] == summary["parameters"] > 0
    assert 0 < saved["psnr"] < 100


def test_loss_decreases_by_a_clear_factor(tmp_path):
    from conftest import make_cfg

    cfg = make_cfg(
        tmp_path / "run",
        "experiment=smoke",
        "data.mode=growing",
        "trainer.max_steps=60",
        "rollout.min_steps=20",
        "rollout.max_steps=24",
        "model.hidden=64",
        "schedule.milestones=[1000]",
        "callbacks.media=null",  # the losses are the point, not the videos
    )
    run(cfg)
    losses = column(read_metrics(tmp_path / "run"), "train/loss")
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first / 3, (first, last)


def test_same_seed_same_run_other_seed_other_run(smoke_cfg, tmp_path):
    runs = {}
    for name, seed in [("a", 0), ("b", 0), ("c", 1)]:
        run(smoke_cfg(f"seed={seed}", out=tmp_path / name))
        runs[name] = column(read_metrics(tmp_path / name), "train/loss")
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]


def test_learning_rate_drops_at_the_milestone(smoke_cfg, tmp_path):
    run(smoke_cfg("schedule.milestones=[2]"))
    lrs = column(read_metrics(tmp_path / "run"), "train/lr")
    assert lrs == pytest.approx([2e-3, 2e-3, 2e-4, 2e-4])


@pytest.mark.parametrize("mode", ["off", "clip"])
def test_gradient_modes_train(smoke_cfg, tmp_path, mode):
    run(smoke_cfg(f"grad.mode={mode}", "grad.max_norm=0.5"))
    assert len(column(read_metrics(tmp_path / "run"), "train/grad_norm")) == 4


@pytest.mark.parametrize("mode", ["growing", "persistent", "regenerating"])
def test_pool_modes_train(smoke_cfg, tmp_path, mode):
    run(smoke_cfg(f"data.mode={mode}"))
    pool = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    pool = next(v for k, v in pool.items() if k.endswith("NCADataModule"))["pool"]
    changed = sum(not torch.equal(state, seed_state(1, 16, 20, 20)[0]) for state in pool)
    if mode == "growing":
        assert pool.shape[0] == 4 and changed == 0  # no pool: every batch starts from seeds
    else:
        assert pool.shape[0] == 16 and changed >= 4  # rollouts were written back


class PoolProbe(L.Callback):
    """Records the pool and step at the start of training."""

    def on_train_start(self, trainer, pl_module):
        self.step = trainer.global_step
        self.pool = trainer.datamodule.pool.states.clone()
        self.lr = trainer.optimizers[0].param_groups[0]["lr"]


def test_resume_continues_from_the_saved_step_with_the_saved_pool(smoke_cfg, tmp_path):
    first = tmp_path / "first"
    run(smoke_cfg("schedule.milestones=[2]", out=first))
    ckpt_path = first / "checkpoints" / "last.ckpt"
    saved = read_checkpoint(ckpt_path)
    saved_pool = next(v for k, v in saved.items() if k.endswith("NCADataModule"))["pool"]
    before = ckpt_path.read_bytes()

    probe = PoolProbe()
    second = tmp_path / "second"
    run(
        smoke_cfg(f"ckpt_path={ckpt_path}", "trainer.max_steps=7", "schedule.milestones=[2]", out=second),
        [probe],
    )
    assert probe.step == 4
    assert torch.equal(probe.pool, saved_pool)
    assert (probe.pool != probe.pool[:1]).any()  # not a fresh pool of seeds
    assert probe.lr == pytest.approx(2e-4)  # scheduler state came back too
    assert read_checkpoint(second / "checkpoints" / "last.ckpt")["global_step"] == 7
    steps = [int(r["step"]) for r in read_metrics(second) if r.get("train/loss")]
    assert steps == [4, 5, 6]
    assert ckpt_path.read_bytes() == before  # the first run's checkpoint is untouched
    assert len(read_metrics(first)) >= 4


def test_resume_with_another_perception_is_refused(smoke_cfg, tmp_path):
    run(smoke_cfg("perception=sobel3", out=tmp_path / "a"))
    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointError, match=r"perception=sobel3") as err:
        run(smoke_cfg("perception=trainable_truncated", f"ckpt_path={ckpt}", out=tmp_path / "b"))
    assert "perception" in str(err.value) and str(ckpt) in str(err.value)
    with pytest.raises(CheckpointError, match="model.channels"):
        run(smoke_cfg("model.channels=12", f"ckpt_path={ckpt}", out=tmp_path / "c"))
    assert not (tmp_path / "b" / "checkpoints").exists()


def test_unreadable_checkpoints_are_refused(smoke_cfg, tmp_path):
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"not a checkpoint")
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    for path, match in [
        (tmp_path / "missing.ckpt", "no such file"),
        (broken, "not a readable checkpoint"),
        (foreign, "not an ncalab checkpoint"),
    ]:
        with pytest.raises(CheckpointError, match=match):
            run(smoke_cfg(f"ckpt_path={path}", out=tmp_path / "out"))


def test_a_run_never_overwrites_another_runs_checkpoint(smoke_cfg, tmp_path):
    run(smoke_cfg())
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    with pytest.raises(ConfigError, match="already holds a run"):
        run(smoke_cfg())
    assert last.read_bytes() == before
    # resuming in place is the one allowed way to write there
    run(smoke_cfg(f"ckpt_path={last}", "trainer.max_steps=5"))
    assert read_checkpoint(last)["global_step"] == 5
    # the earlier metrics are kept beside the new ones
    assert len(list((tmp_path / "run" / "csv").glob("version_*/metrics.csv"))) == 2


def test_load_nca_rebuilds_the_trained_model(smoke_cfg, tmp_path):
    run(smoke_cfg("perception=trainable_scale"))
    nca, config = load_nca(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert config["perception"]["name"] == "trainable_scale"
    assert nca.perception.scale.shape == (2,)
    x = nca.rollout(nca.seed(1, 20, 20), 8)
    assert x.shape == (1, 16, 20, 20) and torch.isfinite(x).all()


class StepProbe(L.Callback):
    def on_train_start(self, trainer, pl_module):
        self.compiled = pl_module.nca._step is not pl_module.nca.step and hasattr(
            pl_module.nca._step, "_torchdynamo_orig_callable"
        )


def test_compile_flag_trains_with_a_compiled_step(smoke_cfg, tmp_path):
    probe = StepProbe()
    run(smoke_cfg("compile=true", "trainer.max_steps=2", "callbacks.evaluation.rollouts=1"), [probe])
    assert probe.compiled
    compiled = column(read_metrics(tmp_path / "run"), "train/loss")
    run(smoke_cfg("trainer.max_steps=2", out=tmp_path / "eager"))
    eager = column(read_metrics(tmp_path / "eager"), "train/loss")
    # Same model and data; only the fire-mask random numbers differ (inductor has its own RNG).
    assert compiled == pytest.approx(eager, rel=0.05)
