"""The Lightning callbacks of a run: the final checkpoint (also on a stop by a signal), the optimiser settings
of a resume, the end-of-run evaluation (evaluation.json, summary.json, final.png) and the rollout media.

The files they write are listed in :mod:`ncalab.runs.folder`; the run's status and signal handling are in
:mod:`ncalab.runs.status`."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from PIL import Image

from ncalab.checkpoint import optim_settings
from ncalab.evaluate import LONG_RUN_STEPS, compare_at_size, measure_nca, parse_steps
from ncalab.loggers import wandb_run
from ncalab.media import (
    cell_box,
    cut_region,
    eval_mode,
    frames_uint8,
    pool_grid,
    record_rollout,
    side_by_side,
    write_video,
)
from ncalab.runs import folder as run_folder
from ncalab.runs import memory
from ncalab.runs.status import STOP, RunInterrupted

log = logging.getLogger("ncalab")


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` that takes no file path from a checkpoint it resumes from unless the path
    is a file directly inside this run's checkpoint folder (symbolic links and ``..`` resolved).

    Lightning restores the paths it saved (``last_model_path``, ``best_k_models``, ...) and removes the previous
    one on the next save; its inside-the-folder check keeps ``..``, so a crafted checkpoint could have a resume
    delete any folder. A path that leaves the folder is dropped (one warning), and nothing outside the folder is
    ever removed."""

    _PATH_KEYS = ("best_model_path", "kth_best_model_path", "last_model_path")

    @property
    def state_key(self) -> str:
        # Saved under ModelCheckpoint's key, so checkpoints written before this class resume the same way.
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def _inside(self, path: object) -> bool:
        if not isinstance(path, str) or not path or self.dirpath is None or "://" in path:
            return False
        try:
            resolved = Path(path).resolve()
            return resolved.parent == Path(self.dirpath).resolve() and resolved.suffix == ".ckpt"
        except (OSError, RuntimeError, ValueError):
            return False

    def load_state_dict(self, state_dict: dict) -> None:
        state = dict(state_dict)
        dropped = [str(state[k]) for k in self._PATH_KEYS if state.get(k) and not self._inside(state[k])]
        for key in self._PATH_KEYS:
            if key in state and not self._inside(state[key]):
                state[key] = ""
        best = state.get("best_k_models")
        if best is not None:
            kept = {k: v for k, v in best.items() if self._inside(k)} if isinstance(best, dict) else {}
            dropped += [str(k) for k in (best if isinstance(best, dict) else [best]) if k not in kept]
            state["best_k_models"] = kept
        state.setdefault("best_model_score", None)
        state.setdefault("best_model_path", "")
        if dropped:
            log.warning(
                "the checkpoint names files outside %s (%s); ignored",
                self.dirpath,
                ", ".join(sorted(set(dropped)))[:300],
            )
        super().load_state_dict(state)

    def _should_remove_checkpoint(self, trainer: L.Trainer, previous: str, current: str) -> bool:
        return self._inside(previous) and super()._should_remove_checkpoint(trainer, previous, current)


class FinalCheckpoint(L.Callback):
    """Save ``last.ckpt`` when training ends, in every process (rank 0 writes; all take part in gathering).

    It runs first at the end of training, before the callbacks that can fail or take long (evaluation, media),
    and also when a run is stopped by SIGINT or SIGTERM (:class:`~ncalab.runs.status.StopSignals`): at the end of
    the step under way, then :class:`~ncalab.runs.status.RunInterrupted` ends the run. With ``ddp_spawn`` a signal to
    the run's process alone reaches the processes it spawned through the record this callback carries to them
    (:meth:`~ncalab.runs.status.StopSignals.share`).
    """

    def __init__(self, path: str | Path):
        super().__init__()
        self.path = Path(path)
        self._installed = False
        self._home = os.getpid()  # the process that made this callback: the run's
        self._shared = STOP.share()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if os.getpid() != self._home:  # a process ddp_spawn started: it acts on the run process's signals
            STOP.attach(self._shared)
        # In a spawned DDP process nobody else has installed the handlers.
        self._installed = STOP.install()
        STOP.defer = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning has installed its own SIGTERM handler by now (after setup).
        if trainer.world_size > 1:
            STOP.sole_handler()
        if os.getpid() != self._home:
            STOP.watch()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        STOP.unwatch()
        if self._installed:
            STOP.restore()
            self._installed = False

    def _stop_requested(self, trainer: L.Trainer) -> int | None:
        signum = STOP.signum or STOP.requested()
        if signum is None and trainer.received_sigterm:
            signum = int(signal.SIGTERM)
        if trainer.world_size > 1:  # every process must take the same decision (the save is collective)
            flag = torch.tensor(float(signum or 0), device=trainer.strategy.root_device)
            signum = int(trainer.strategy.reduce(flag, reduce_op="max")) or None
        return signum

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx):
        signum = self._stop_requested(trainer)
        if signum is None:
            return
        self._save_and_stop(trainer, signum)

    def _save_and_stop(self, trainer: L.Trainer, signum: int) -> None:
        STOP.unwatch()
        STOP.defer = False  # a further signal during the save ends it at once
        trainer.save_checkpoint(self.path, weights_only=False)
        STOP.stopped(signum, trainer.global_step)
        log.warning(
            "%s: saved %s at step %d; stopping", signal.Signals(signum).name, self.path, trainer.global_step
        )
        if os.getpid() != self._home:
            # A process ddp_spawn started: the run's process reports the stop in one line (it reads the step
            # from the shared record); this one ends quietly with the same exit status, not with a traceback
            # (multiprocessing prints one for any exception that is not a SystemExit).
            raise SystemExit(128 + signum)
        raise RunInterrupted(signum, trainer.global_step, self.path)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        # Lightning's own SIGTERM stop (SIGTERMException, raised in every process at the end of a step when
        # the signal came after this callback's check): the state is whole, save it; the run turns the
        # exception into RunInterrupted.
        STOP.unwatch()
        if isinstance(exception, SIGTERMException) and STOP.saved_step is None:
            with contextlib.suppress(RunInterrupted):
                self._save_and_stop(trainer, int(signal.SIGTERM))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After a divergence stop the module holds the last good state again (see NCALitModule._diverged).
        trainer.save_checkpoint(self.path, weights_only=False)
        signum = STOP.signum or STOP.requested()
        if signum is None and trainer.received_sigterm:
            signum = int(signal.SIGTERM)
        if signum is not None:  # a signal came while the last step ended: skip evaluation and media
            STOP.unwatch()
            STOP.defer = False
            STOP.stopped(signum, trainer.global_step)
            raise RunInterrupted(signum, trainer.global_step, self.path)
        # From here a signal (also one to the run's process: StopSignals.watch) ends the run at once.
        STOP.defer = False


class ResumeOptim(L.Callback):
    """On resume, the optimiser and schedule settings given for this run that differ from the checkpoint's run
    config (any key of ``optim`` or ``schedule``, e.g. ``optim.lr``, ``optim.betas``, ``schedule.milestones``,
    ``schedule.gamma``) replace the restored ones, with one message each. Settings left as they were keep the
    checkpoint's optimiser state: its learning rate (as the schedule and any divergence-guard rollbacks left it) and
    its schedule. (Another optimiser or scheduler class is refused before the run starts:
    :func:`ncalab.checkpoint.check_compatible`.)

    ``optim.lr`` becomes the learning rate in use from the resumed step on; the remaining milestones (those
    after it) then multiply it by ``schedule.gamma``.
    """

    def __init__(self, changes: dict[tuple[str, str], tuple]):
        super().__init__()
        self.changes = changes  # (section, key) -> (checkpoint's value, this run's value)

    @classmethod
    def for_resume(cls, saved: dict, config: dict) -> list[L.Callback]:
        changes = {}
        for section, old, new in zip(
            ("optim", "schedule"), optim_settings(saved), optim_settings(config), strict=True
        ):
            for key, b in new.items():
                a = old.get(key)
                if isinstance(a, tuple | list) and isinstance(b, tuple | list):
                    a, b = list(a), list(b)
                if key != "_target_" and b is not None and a != b:
                    changes[(section, key)] = (a, b)
        return [cls(changes)] if changes else []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        optimizer = trainer.optimizers[0]
        schedulers = [c.scheduler for c in trainer.lr_scheduler_configs]
        for (section, key), (old, new) in self.changes.items():
            if (section, key) == ("optim", "lr"):
                in_use = optimizer.param_groups[0]["lr"]
                for group in optimizer.param_groups:
                    group["lr"] = group["initial_lr"] = float(new)
                for scheduler in schedulers:
                    scheduler.base_lrs = [float(new)] * len(optimizer.param_groups)
                    scheduler._last_lr = [float(new)] * len(optimizer.param_groups)
                detail = f"the learning rate in use was {in_use:.4g}"
            elif section == "optim":
                for group in optimizer.param_groups:
                    group[key] = tuple(new) if isinstance(new, list) else new
                detail = "the optimiser's moment estimates are kept"
            else:
                for scheduler in schedulers:
                    if key == "milestones" and hasattr(scheduler, "milestones"):
                        scheduler.milestones = Counter(int(m) for m in new)
                    elif hasattr(scheduler, key):
                        setattr(scheduler, key, new)
                detail = f"from step {trainer.global_step} on"
            was = "the checkpoint's class default" if old is None else f"the checkpoint's {old}"
            log.warning("resume: %s.%s=%s replaces %s (%s)", section, key, new, was, detail)


class RunEvaluation(L.Callback):
    """At the end of training, ONE measurement of the trained model (:func:`ncalab.evaluate.measure_nca`: quality
    at the horizon, persistence, regeneration), and everything that reports it:

    - ``evaluation.json``: the whole result (what ``python -m ncalab.evaluate`` prints);
    - ``summary.json``: its headline numbers (``eval_loss``, ``psnr``, ``ssim``, ``holds_steps``, ``grown``,
      ``regrown``) with the run's train loss, timing, parameters and divergences; the sweep objective and
      ``python -m ncalab.compare`` read it;
    - ``final.png``: the target beside the first pattern that measurement grew to the horizon;
    - every logger (``final/*`` and ``eval/*`` metrics; the W&B run summary).

    The keys of both files are listed in :mod:`ncalab.runs.folder`.
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
        at_size: int | None = None,
    ):
        super().__init__()
        if at_size is not None:
            _check_ints(dict(at_size=at_size), dict(at_size=8))
        self.at_size = at_size
        _check_ints(
            dict(
                horizon=horizon,
                rollouts=rollouts,
                grow_steps=grow_steps,
                regrow_steps=regrow_steps,
                scale=scale,
            ),
            dict(horizon=0, rollouts=1, grow_steps=0, regrow_steps=1, scale=1),
        )
        _check_ints(dict(seed=seed), dict(seed=0))
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
        self._device = torch.device("cpu")
        self._peak_counted = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()
        self._start_step = trainer.global_step
        self._device = getattr(pl_module, "device", torch.device("cpu"))
        self._peak_counted = memory.reset_peak(self._device)

    @rank_zero_only
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        elapsed = time.perf_counter() - self._start
        steps_run = trainer.global_step - self._start_step
        peak = memory.peak_gb(self._device) if self._peak_counted else None
        nca = pl_module.nca
        target = trainer.datamodule.target
        measured = measure_nca(nca, target, **self.kwargs)
        self.result = result = measured.result
        data_config = getattr(pl_module, "hparams", {}).get("config", {}).get("data")
        if self.at_size is not None and data_config:
            result["at_size"] = compare_at_size(measured.image, data_config, nca.render.scale, self.at_size)
        at = result.get("at_size") or {}
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / run_folder.EVALUATION_FILE).write_text(json.dumps(result, indent=2) + "\n")

        image = side_by_side(
            frames_uint8([target.unsqueeze(0)], self.scale)[0], frames_uint8([measured.image], self.scale)[0]
        )
        Image.fromarray(image).save(self.output_dir / run_folder.FINAL_IMAGE)

        cells = nca.render.scale  # the grid is the image divided by the renderer's pixels per cell
        h, w = target.shape[-2] // cells, target.shape[-1] // cells
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
            "regrown_wide": result["regeneration"]["regrown_wide"],
            "wall_time_s": elapsed,
            "s_per_iter": elapsed / steps_run if steps_run else None,
            "peak_memory_gb": round(peak, 3) if peak is not None else None,
            "parameters": sum(p.numel() for p in nca.parameters() if p.requires_grad),
            "grid": [int(h), int(w)],
            "render": nca.render.name,
            "image": [int(target.shape[-2]), int(target.shape[-1])],  # the grid x render.scale
            "divergences": len(getattr(guard, "events", [])),
            "divergence_events": list(getattr(guard, "events", [])),
            "stopped_by_guard": bool(getattr(pl_module, "stopped_by_guard", False)),
            "at_size": at.get("size"),
            "psnr_at_size": at.get("psnr"),
            "ssim_at_size": at.get("ssim"),
        }
        (self.output_dir / run_folder.SUMMARY_FILE).write_text(json.dumps(self.summary, indent=2) + "\n")

        numbers = {f"final/{k}": v for k, v in _flatten(self.summary).items() if _is_number(v)}
        numbers.update({f"eval/{k}": v for k, v in _flatten(result).items() if _is_number(v)})
        for logger in trainer.loggers:
            logger.log_metrics(numbers, step=trainer.global_step)
            run = wandb_run(logger)
            if run is not None:
                run.summary.update(self.summary)
                run.summary.update({k: v for k, v in numbers.items() if k.startswith("eval/")})


def _check_ints(values: dict[str, object], minimums: dict[str, int]) -> None:
    """Refuse, naming the key, a value that is not a whole number or below its minimum: a callback's settings are
    checked when the run is built, not when they are first used (mid-run, or at the end)."""
    for key, value in values.items():
        low = minimums[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{key}={value!r} is not valid; expected an integer >= {low}")


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
        _check_ints(
            dict(
                every_n_steps=every_n_steps,
                growth_steps=growth_steps,
                regrow_steps=regrow_steps,
                frame_every=frame_every,
                fps=fps,
                scale=scale,
                pool_samples=pool_samples,
            ),
            dict(
                every_n_steps=0, growth_steps=1, regrow_steps=0, frame_every=1, fps=1, scale=1, pool_samples=1
            ),
        )
        self.dir = Path(output_dir) / run_folder.MEDIA_DIR
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
            self.record(trainer, pl_module, run_folder.step_tag(step))

    @rank_zero_only
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.record(trainer, pl_module, run_folder.FINAL_TAG)

    def record(self, trainer: L.Trainer, pl_module: L.LightningModule, tag: str) -> dict[str, Path]:
        dm = trainer.datamodule
        h, w = dm.height, dm.width
        cells = pl_module.nca.render.scale  # pixels per cell side of the drawn image
        scale = max(1, self.scale // cells)  # the videos' pixels per image pixel: about self.scale per cell
        with eval_mode(pl_module.nca) as nca, torch.no_grad():
            grown, growth = record_rollout(nca, nca.seed(1, h, w), self.growth_steps, self.frame_every)
            _, regrowth = record_rollout(
                nca,
                cut_region(grown, self.region, cell_box(dm.target, cells)),
                self.regrow_steps,
                self.frame_every,
            )
            growth = [nca.render(f) for f in growth]
            regrowth = [nca.render(f) for f in regrowth]
            device = next(nca.parameters()).device
            pool = nca.render(dm.pool.states[: self.pool_samples].to(device)).cpu()
        files = {
            "growth": write_video(
                frames_uint8(growth, scale),
                self.dir / run_folder.media_name("growth", tag, self.format),
                self.fps,
            ),
            "regeneration": write_video(
                frames_uint8(growth + regrowth, scale),
                self.dir / run_folder.media_name("regeneration", tag, self.format),
                self.fps,
            ),
        }
        files["pool"] = self.dir / run_folder.media_name("pool", tag, "png")
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


class StepProgressBar(TQDMProgressBar):
    """Training progress in optimiser steps, one bar for the whole run: ``train 1200/1800``, the loss, the rate
    (s/step or step/s) and the time left. Lightning's own bars count the 100-step pseudo-epochs that only group
    steps (``Epoch 17/-2``). A resumed run counts on from its checkpoint's step."""

    # Lightning's format with the rate as tqdm words it: s/step below one step a second, step/s above.
    BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"

    def init_train_tqdm(self):
        trainer = self.trainer
        steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        return Tqdm(
            desc="train",
            total=steps,
            initial=trainer.global_step,  # resumed: the rate and the time left count from here
            unit="step",
            position=2 * self.process_position,
            disable=self.is_disabled,
            leave=True,
            dynamic_ncols=True,
            file=sys.stdout,
            smoothing=0,
            bar_format=self.BAR_FORMAT,
        )

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        pass  # no bar per pseudo-epoch

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *_: Any) -> None:
        bar = self.train_progress_bar
        step = trainer.global_step
        if bar is not None and not bar.disable and self._should_update(step, bar.total):
            bar.n = step
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
            bar.refresh()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return {("loss" if k == "train/loss" else k): v for k, v in items.items()}
