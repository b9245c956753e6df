"""What a run leaves behind besides metrics: status, checkpoint, the end-of-run evaluation (evaluation.json,
summary.json, final.png), rollout videos."""

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

from ncalab.evaluate import LONG_RUN_STEPS, measure_nca, parse_steps
from ncalab.media import cut_region, eval_mode, frames_uint8, pool_grid, record_rollout, write_video


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 4) -> np.ndarray:
    """Two ``3 x H x W`` uint8 images with a white gap between them, as ``H x W x 3``."""
    h = max(left.shape[1], right.shape[1])
    out = np.full((h, left.shape[2] + gap + right.shape[2], 3), 255, dtype=np.uint8)
    out[: left.shape[1], : left.shape[2]] = left.transpose(1, 2, 0)
    out[: right.shape[1], left.shape[2] + gap :] = right.transpose(1, 2, 0)
    return out


class RunStatus:
    """``status.json`` in the run directory: running, finished or failed (with the error), for sweeps and reports."""

    def __init__(self, output_dir: str | Path, overrides: list[str] | None = None, write: bool = True):
        self.path = Path(output_dir) / "status.json"
        self.write = write
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
        if not self.write:
            return
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
        # After a divergence stop the module holds the last good state again (see NCALitModule._diverged).
        trainer.save_checkpoint(self.path, weights_only=False)


class RunEvaluation(L.Callback):
    """At the end of training, ONE measurement of the trained model (:func:`ncalab.evaluate.measure_nca`: quality
    at the horizon, persistence, regeneration), and everything that reports it:

    - ``evaluation.json``: the whole result (what ``python -m ncalab.evaluate`` prints);
    - ``summary.json``: its headline numbers (``eval_loss``, ``psnr``, ``ssim``, ``holds_steps``, ``grown``,
      ``regrown``) with the run's train loss, timing, parameters and divergences; the sweep objective and
      ``python -m ncalab.compare`` read it;
    - ``final.png``: the target beside the first pattern that measurement grew to the horizon;
    - every logger (``final/*`` and ``eval/*`` metrics; the W&B run summary).
    """

    def __init__(
        self,
        output_dir: str,
        horizon: int = 96,
        rollouts: int = 4,
        long_run_steps: list[int] | tuple[int, ...] = LONG_RUN_STEPS,
        grow_steps: int = 200,
        regrow_steps: int = 200,
        seed: int = 0,
        scale: int = 4,
    ):
        super().__init__()
        if horizon < 0 or rollouts < 1 or grow_steps < 0 or regrow_steps < 1 or scale < 1:
            raise ValueError(
                f"need horizon >= 0, rollouts >= 1, grow_steps >= 0, regrow_steps >= 1, scale >= 1; got "
                f"{horizon}, {rollouts}, {grow_steps}, {regrow_steps}, {scale}"
            )
        try:
            steps = parse_steps(list(long_run_steps))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"long_run_steps={long_run_steps!r}: {exc}") from None
        self.output_dir = Path(output_dir)
        self.scale = scale
        self.kwargs = dict(
            horizon=horizon,
            rollouts=rollouts,
            long_run_steps=steps,
            grow_steps=grow_steps,
            regrow_steps=regrow_steps,
            seed=seed,
        )
        self.result: dict = {}
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
        nca = pl_module.nca
        target = trainer.datamodule.target
        measured = measure_nca(nca, target, **self.kwargs)
        self.result = result = measured.result
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n")

        image = side_by_side(
            frames_uint8([target.unsqueeze(0)], self.scale)[0], frames_uint8([measured.grown], self.scale)[0]
        )
        Image.fromarray(image).save(self.output_dir / "final.png")

        h, w = target.shape[-2:]
        guard = getattr(pl_module, "guard", None)
        long_run = result["long_run"]
        self.summary = {
            "perception": getattr(nca.perception, "name", type(nca.perception).__name__),
            "steps": trainer.global_step,
            "train_loss": float(getattr(pl_module, "last_loss", float("nan"))),
            # All of these come from the one measurement above (evaluation.json holds the details).
            "eval_steps": result["horizon"],
            "eval_loss": result["loss"],
            "psnr": result["psnr"],
            "ssim": result["ssim"],
            "holds_steps": long_run["holds_steps"],
            "long_run_loss": long_run["loss"][str(max(int(k) for k in long_run["loss"]))],
            "non_finite": long_run["non_finite"],
            "grown": result["regeneration"]["grown"],
            "regrown": result["regeneration"]["regrown"],
            "wall_time_s": elapsed,
            "s_per_iter": elapsed / steps_run if steps_run else None,
            "parameters": sum(p.numel() for p in nca.parameters() if p.requires_grad),
            "grid": [int(h), int(w)],
            "divergences": len(getattr(guard, "events", [])),
            "divergence_events": list(getattr(guard, "events", [])),
            "stopped_by_guard": bool(getattr(pl_module, "stopped_by_guard", False)),
        }
        (self.output_dir / "summary.json").write_text(json.dumps(self.summary, indent=2) + "\n")

        numbers = {f"final/{k}": v for k, v in _flatten(self.summary).items() if _is_number(v)}
        numbers.update({f"eval/{k}": v for k, v in _flatten(result).items() if _is_number(v)})
        for logger in trainer.loggers:
            logger.log_metrics(numbers, step=trainer.global_step)
            run = getattr(logger, "experiment", None) if type(logger).__name__ == "WandbLogger" else None
            if run is not None:
                run.summary.update(self.summary)
                run.summary.update({k: v for k, v in numbers.items() if k.startswith("eval/")})


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class RolloutMedia(L.Callback):
    """Every ``every_n_steps`` optimiser steps and at the end: a growth video from the seed, a regeneration
    video (grow, cut ``region``, regrow) and a grid of pool samples; saved under ``<run>/media/`` and logged
    through every logger that takes videos/images (W&B), on Lightning's step axis."""

    def __init__(
        self,
        output_dir: str,
        every_n_steps: int = 500,
        growth_steps: int = 192,
        regrow_steps: int = 192,
        region: str = "right",
        frame_every: int = 2,
        fps: int = 24,
        scale: int = 4,
        format: str = "mp4",
        pool_samples: int = 16,
    ):
        super().__init__()
        if format not in ("mp4", "gif"):
            raise ValueError(f"callbacks.media.format={format!r}; accepted: mp4, gif")
        self.dir = Path(output_dir) / "media"
        self.every_n_steps = every_n_steps
        self.growth_steps = growth_steps
        self.regrow_steps = regrow_steps
        self.region = region
        self.frame_every = frame_every
        self.fps = fps
        self.scale = scale
        self.format = format
        self.pool_samples = pool_samples
        cut_region(torch.zeros(1, 4, 2, 2), region)  # fail at start, not at the first media step

    @rank_zero_only
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx):
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0 and step < (trainer.max_steps or 0):
            self.record(trainer, pl_module, f"step{step:06d}")

    @rank_zero_only
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.record(trainer, pl_module, "final")

    def record(self, trainer: L.Trainer, pl_module: L.LightningModule, tag: str) -> dict[str, Path]:
        dm = trainer.datamodule
        h, w = dm.height, dm.width
        with eval_mode(pl_module.nca) as nca:
            grown, growth = record_rollout(nca, nca.seed(1, h, w), self.growth_steps, self.frame_every)
            _, regrowth = record_rollout(
                nca, cut_region(grown, self.region), self.regrow_steps, self.frame_every
            )
        files = {
            "growth": write_video(
                frames_uint8(growth, self.scale), self.dir / f"growth_{tag}.{self.format}", self.fps
            ),
            "regeneration": write_video(
                frames_uint8(growth + regrowth, self.scale),
                self.dir / f"regeneration_{tag}.{self.format}",
                self.fps,
            ),
        }
        pool = dm.pool.states[: self.pool_samples]
        files["pool"] = self.dir / f"pool_{tag}.png"
        Image.fromarray(pool_grid(pool).transpose(1, 2, 0)).save(files["pool"])

        step = trainer.global_step
        for logger in trainer.loggers:
            if hasattr(logger, "log_video"):
                for key in ("growth", "regeneration"):
                    logger.log_video(f"media/{key}", [str(files[key])], step=step)
            if hasattr(logger, "log_image"):
                logger.log_image("media/pool", [str(files["pool"])], step=step)
        return files


def _flatten(d: dict, prefix: str = "") -> dict:
    out: dict = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{key}/"))
        elif isinstance(v, bool):
            out[key] = int(v)
        else:
            out[key] = v
    return out
