"""What a run leaves behind besides checkpoints and metrics: the final image, a growth rollout, a summary."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image

from ncalab.data import per_sample_loss, psnr
from ncalab.nca import NCA, to_rgb


def to_uint8_frames(states: list[torch.Tensor] | torch.Tensor, scale: int = 1) -> np.ndarray:
    """States (``B x C x H x W``, first sample used) -> ``T x H*scale x W*scale x 3`` uint8, RGBA over white."""
    rgb = torch.stack([to_rgb(s[:1])[0] for s in states])  # T x 3 x H x W
    if scale > 1:
        rgb = rgb.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    return (rgb.permute(0, 2, 3, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)


def save_gif(frames: np.ndarray, path: Path, fps: int = 24) -> None:
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=max(1, round(1000 / fps)), loop=0)


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 4) -> np.ndarray:
    """Two ``H x W x 3`` uint8 images with a white gap between them."""
    h = max(left.shape[0], right.shape[0])
    out = np.full((h, left.shape[1] + gap + right.shape[1], 3), 255, dtype=np.uint8)
    out[: left.shape[0], : left.shape[1]] = left
    out[: right.shape[0], left.shape[1] + gap :] = right
    return out


class RunStatus:
    """``status.json`` in the run directory: running, finished or failed (with the error), for sweeps and reports."""

    def __init__(self, output_dir: str | Path, overrides: list[str] | None = None):
        self.path = Path(output_dir) / "status.json"
        self.state = {"status": "running", "overrides": overrides or [], "started": _now(), "ended": None}
        self._write()

    def finished(self) -> None:
        self.state.update(status="finished", ended=_now())
        self._write()

    def failed(self, exc: BaseException) -> None:
        kind = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        self.state.update(status=kind, ended=_now(), error=f"{type(exc).__name__}: {exc}")
        self._write()

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.state, indent=2) + "\n")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class FinalCheckpoint(L.Callback):
    """Save ``last.ckpt`` when training ends, in every process (rank 0 writes; all take part in gathering)."""

    def __init__(self, path: str | Path):
        super().__init__()
        self.path = Path(path)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)


@torch.no_grad()
def grow(nca: NCA, height: int, width: int, steps: int, batch: int = 1, frame_every: int = 0, seed: int = 0):
    """Grow from the seed for ``steps`` steps with a fixed RNG seed; returns ``(final state, frames)``."""
    frames: list[torch.Tensor] = []
    x = nca.seed(batch, height, width)
    if frame_every:
        frames.append(x.clone())

    def record(i: int, state: torch.Tensor) -> None:
        if frame_every and i % frame_every == 0:
            frames.append(state.clone())

    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        x = nca.rollout(x, steps, on_step=record)
    return x, frames


class RunArtifacts(L.Callback):
    """At the end of training: ``final.png`` (target | grown), ``growth.gif`` from the seed, ``summary.json``."""

    def __init__(
        self,
        output_dir: str,
        eval_steps: int = 96,
        growth_steps: int = 192,
        frame_every: int = 2,
        fps: int = 24,
        scale: int = 4,
        eval_batch: int = 4,
    ):
        super().__init__()
        self.output_dir = Path(output_dir)
        self.eval_steps = eval_steps
        self.growth_steps = growth_steps
        self.frame_every = frame_every
        self.fps = fps
        self.scale = scale
        self.eval_batch = eval_batch
        self.summary: dict = {}
        self._start = time.perf_counter()
        self._start_step = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()
        self._start_step = trainer.global_step

    @rank_zero_only
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        elapsed = time.perf_counter() - self._start
        steps_run = trainer.global_step - self._start_step
        dm = trainer.datamodule
        nca: NCA = pl_module.nca
        was_training = nca.training
        nca.eval()
        target = dm.target.unsqueeze(0).to(pl_module.device)
        h, w = target.shape[-2:]
        final, _ = grow(nca, h, w, self.eval_steps, batch=self.eval_batch)
        _, frames = grow(nca, h, w, self.growth_steps, frame_every=self.frame_every)
        nca.train(was_training)

        self.output_dir.mkdir(parents=True, exist_ok=True)
        target_rgb = to_uint8_frames([target], self.scale)[0]
        grown_rgb = to_uint8_frames([final], self.scale)[0]
        Image.fromarray(side_by_side(target_rgb, grown_rgb)).save(self.output_dir / "final.png")
        save_gif(to_uint8_frames(frames, self.scale), self.output_dir / "growth.gif", self.fps)

        self.summary = {
            "perception": getattr(nca.perception, "name", type(nca.perception).__name__),
            "steps": trainer.global_step,
            "train_loss": float(getattr(pl_module, "last_loss", float("nan"))),
            "eval_steps": self.eval_steps,
            "eval_loss": float(per_sample_loss(final, target).mean()),
            "psnr": psnr(to_rgb(final), to_rgb(target).expand_as(to_rgb(final))),
            "wall_time_s": elapsed,
            "s_per_iter": elapsed / steps_run if steps_run else None,
            "parameters": sum(p.numel() for p in nca.parameters() if p.requires_grad),
            "grid": [int(h), int(w)],
        }
        (self.output_dir / "summary.json").write_text(json.dumps(self.summary, indent=2) + "\n")
        for logger in trainer.loggers:
            logger.log_metrics(
                {f"final/{k}": v for k, v in self.summary.items() if isinstance(v, float | int)},
                step=trainer.global_step,
            )
