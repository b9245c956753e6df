"""What a run leaves behind besides metrics: status, checkpoint, the end-of-run evaluation (evaluation.json,
summary.json, final.png), rollout videos."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from multiprocessing import sharedctypes
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from PIL import Image

from ncalab.evaluate import LONG_RUN_STEPS, measure_nca, parse_steps
from ncalab.media import (
    cut_region,
    eval_mode,
    frames_uint8,
    pattern_box,
    pool_grid,
    record_rollout,
    write_video,
)
from ncalab.rundirs import HEARTBEAT_S, this_host

log = logging.getLogger("ncalab")


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 4) -> np.ndarray:
    """Two ``3 x H x W`` uint8 images with a white gap between them, as ``H x W x 3``."""
    h = max(left.shape[1], right.shape[1])
    out = np.full((h, left.shape[2] + gap + right.shape[2], 3), 255, dtype=np.uint8)
    out[: left.shape[1], : left.shape[2]] = left.transpose(1, 2, 0)
    out[: right.shape[1], left.shape[2] + gap :] = right.transpose(1, 2, 0)
    return out


class RunStatus:
    """``status.json`` in the run directory: running, finished, failed (with the error) or interrupted (with the
    signal), for sweeps and reports.

    While the run lives it also says where (``pid``, ``host``) and when it was last seen (``heartbeat``,
    refreshed every ``heartbeat_s`` seconds by a background thread), so that a run killed without a chance to
    record its end (SIGKILL, out of memory, a node lost) is recognisable as such (:func:`ncalab.rundirs.gone_reason`).
    Every write replaces the file whole (written beside it, then renamed), so a reader never sees half of it."""

    def __init__(
        self,
        output_dir: str | Path,
        overrides: list[str] | None = None,
        write: bool = True,
        heartbeat_s: float = HEARTBEAT_S,
    ):
        self.path = Path(output_dir) / "status.json"
        self.write = write
        self.state = {
            "status": "running",
            "overrides": overrides or [],
            "started": _now(),
            "ended": None,
            "pid": os.getpid(),
            "host": this_host(),
            "heartbeat": _now(),
        }
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._write()
        self._beat = None
        if write and heartbeat_s > 0:
            self._beat = threading.Thread(
                target=self._heartbeat, args=(heartbeat_s,), name="ncalab-status-heartbeat", daemon=True
            )
            self._beat.start()

    def _heartbeat(self, every: float) -> None:
        while not self._stop.wait(every):
            with self._lock:
                if self.state["status"] != "running":
                    return
                self.state["heartbeat"] = _now()
                try:
                    self._write_unlocked()
                except OSError:  # a full disk must not end the run; the next beat tries again
                    log.debug("could not refresh %s", self.path, exc_info=True)

    def _end(self, **state) -> None:
        self._stop.set()
        with self._lock:
            self.state.update(ended=_now(), heartbeat=_now(), **state)
            self._write_unlocked()
        if self._beat is not None and self._beat is not threading.current_thread():
            self._beat.join(timeout=5)

    def finished(self) -> None:
        self._end(status="finished")

    def failed(self, exc: BaseException) -> None:
        signum = interrupt_signal(exc)
        if signum is not None:
            name = signal.Signals(signum).name
            state = dict(status="interrupted", signal=name, exit_code=128 + signum)
            state["error"] = str(exc) if isinstance(exc, RunInterrupted) else f"{name}: {type(exc).__name__}"
            if isinstance(exc, RunInterrupted) and exc.step is not None:
                state.update(step=exc.step, checkpoint=exc.checkpoint)
        else:
            state = dict(status="failed", error=f"{type(exc).__name__}: {exc}")
        self._end(**state)

    def _write(self) -> None:
        with self._lock:
            self._write_unlocked()

    def _write_unlocked(self) -> None:
        if not self.write:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        temp.write_text(json.dumps(self.state, indent=2) + "\n")
        os.replace(temp, self.path)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RunInterrupted(BaseException):
    """The run was stopped by a signal (Ctrl+C = SIGINT, or SIGTERM, what SLURM sends before a time limit).

    Not an ``Exception``: nothing on the way may swallow it. ``train.py`` exits with ``exit_code`` (128 + the
    signal number: 130 for SIGINT, 143 for SIGTERM), so that a scheduler sees the run did not finish."""

    def __init__(self, signum: int, step: int | None = None, checkpoint: str | Path | None = None):
        self.signum = int(signum)
        self.step = step
        self.checkpoint = str(checkpoint) if checkpoint else None
        where = f" at step {step}" if step is not None else ""
        saved = f"; checkpoint saved: {self.checkpoint}" if self.checkpoint else ""
        super().__init__(f"interrupted by {signal.Signals(self.signum).name}{where}{saved}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def interrupt_signal(exc: BaseException | None) -> int | None:
    """The signal that stopped a run, when ``exc`` (or what it was raised from) is an interruption."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, RunInterrupted):
            return exc.signum
        if isinstance(exc, KeyboardInterrupt):
            return int(signal.SIGINT)
        if isinstance(exc, SIGTERMException):  # Lightning's own, raised when it saw SIGTERM
            return int(signal.SIGTERM)
        exc = exc.__cause__ or exc.__context__
    return None


class StopSignals:
    """SIGINT and SIGTERM handling of one process during a run.

    While training steps run (``defer``), the first signal is only recorded: :class:`FinalCheckpoint` saves
    ``last.ckpt`` at the end of the step and stops the run. Otherwise (before training, after the final
    checkpoint, or at a second signal) :class:`RunInterrupted` is raised at once. Handlers are installed only
    from the main thread, and the previous ones come back on :meth:`restore`.

    The DDP processes that the run's process spawns (``ddp_spawn``) share a small record with it (:meth:`share`,
    :meth:`attach`). A signal sent to the run's process alone (what a scheduler does: it signals the main pid) is
    written there, and the spawned processes stop as if it had been sent to them: while training, at the end of
    the step under way (:class:`FinalCheckpoint` reads the record), otherwise at once (:meth:`watch`). The run's
    process waits for them; the signal and step of their stop come back through the record (:meth:`received`,
    :attr:`saved_step`).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    # The shared record: the run process's signal; the signal and step of the spawned processes' stop.
    _REQUESTED, _STOPPED, _STEP = range(3)

    def __init__(self) -> None:
        self.signum: int | None = None
        self.defer = False
        self._saved_step: int | None = None  # where the stop saved last.ckpt
        self._previous: dict[int, object] = {}
        self._shared = None  # the record shared with spawned DDP processes (a ctypes array in shared memory)
        self._owner = False  # whether this process made it (the run's process)
        self._watching: threading.Event | None = None
        self._watch_lock = threading.Lock()

    def reset(self) -> None:
        self.unwatch()
        self.signum, self.defer, self._saved_step, self._shared, self._owner = None, False, None, None, False

    # ---------------------------------------------------------------- shared with spawned DDP processes

    def share(self):
        """This run's shared record, made in the run's process (once per run; :meth:`reset` drops it). It reaches
        the spawned processes inside :class:`FinalCheckpoint`, which ``ddp_spawn`` pickles to them."""
        if self._shared is None:
            self._shared, self._owner = sharedctypes.RawArray("q", [0, 0, -1]), True
        return self._shared

    def attach(self, shared) -> None:
        """In a spawned DDP process: use the run process's record."""
        self._shared, self._owner = shared, False

    def requested(self) -> int | None:
        """The signal the run's process received, when this process is one it spawned (else None)."""
        if self._shared is None or self._owner:
            return None
        return int(self._shared[self._REQUESTED]) or None

    def received(self) -> int | None:
        """The signal that stops the run: this process's, or the one its spawned processes stopped for."""
        if self.signum is None and self._shared is not None:
            return int(self._shared[self._STOPPED]) or None
        return self.signum

    @property
    def saved_step(self) -> int | None:
        """The step at which the stop saved last.ckpt (in this process, or in the processes it spawned)."""
        if self._saved_step is None and self._shared is not None and self._shared[self._STEP] >= 0:
            return int(self._shared[self._STEP])
        return self._saved_step

    def stopped(self, signum: int, step: int) -> None:
        """The stop for ``signum`` saved last.ckpt at ``step``."""
        self._saved_step = step
        if self._shared is not None:
            self._shared[self._STOPPED], self._shared[self._STEP] = int(signum), int(step)

    def watch(self, every: float = 0.1) -> None:
        """In a spawned DDP process: a thread that, once the run's process has received a signal, sends the same
        signal to this process when it is not deferred, i.e. outside training (it ends the evaluation and media at
        once). During training :class:`FinalCheckpoint` reads the record at the end of each step instead (a
        signal from this thread could otherwise land in the stop's save)."""
        if self._shared is None or self._watching is not None:
            return
        self._watching = stop = threading.Event()

        def poll() -> None:
            while not stop.wait(every):
                with self._watch_lock:  # unwatch() waits: no signal from here once it has returned
                    signum = self.requested()
                    if stop.is_set() or self.signum is not None:
                        return
                    if signum is not None and not self.defer:
                        os.kill(os.getpid(), signum)
                        return

        threading.Thread(target=poll, name="ncalab-stop-watch", daemon=True).start()

    def unwatch(self) -> None:
        with self._watch_lock:
            if self._watching is not None:
                self._watching.set()
                self._watching = None

    # ---------------------------------------------------------------- handlers

    def install(self) -> bool:
        if self._previous or threading.current_thread() is not threading.main_thread():
            return False
        for sig in self.SIGNALS:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)
        return True

    def sole_handler(self) -> None:
        """Make this handler the only one for SIGINT and SIGTERM (while installed). In a DDP process Lightning's
        SIGTERM handler runs a collective (a broadcast) inside the handler: with the signal arriving at the
        processes at different points of a step, that broadcast meets another collective and the run hangs.
        Without it a stop is still agreed on by all processes, at the end of the step (FinalCheckpoint)."""
        if not self._previous or threading.current_thread() is not threading.main_thread():
            return
        for sig in self.SIGNALS:
            if signal.getsignal(sig) != self._handle:
                signal.signal(sig, self._handle)

    def restore(self) -> None:
        self.unwatch()
        for sig, handler in self._previous.items():
            if signal.getsignal(sig) == self._handle:
                signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        previous = self._previous.get(signum)
        # Chain to a handler someone else installed before (Lightning's SIGTERM notifier forwards the signal to
        # spawned processes); never to the defaults, which would raise KeyboardInterrupt or end the process.
        if callable(previous) and previous not in (signal.default_int_handler, self._handle):
            previous(signum, frame)
        again = self.signum is not None
        self.signum = signum
        if self._owner and not self._shared[self._REQUESTED]:
            self._shared[self._REQUESTED] = signum  # for the processes this one spawned (ddp_spawn)
        name = signal.Signals(signum).name
        if self.defer and not again:
            log.warning("%s received: saving the checkpoint at the end of this step, then stopping", name)
            return
        raise RunInterrupted(signum)


# The one instance of this process (spawned DDP processes get their own).
STOP = StopSignals()


class FinalCheckpoint(L.Callback):
    """Save ``last.ckpt`` when training ends, in every process (rank 0 writes; all take part in gathering).

    It runs first at the end of training, before the callbacks that can fail or take long (evaluation, media),
    and also when a run is stopped by SIGINT or SIGTERM (:class:`StopSignals`): at the end of the step under way,
    then :class:`RunInterrupted` ends the run. With ``ddp_spawn`` a signal to the run's process alone reaches the
    processes it spawned through the record this callback carries to them (:meth:`StopSignals.share`).
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
    """On resume, the optimiser settings given for this run that differ from the checkpoint's run config
    (``optim.lr``, ``optim.milestones``, ``optim.gamma``, ``optim.betas``) replace the restored ones, with one
    message each. Settings left as they were keep the checkpoint's optimiser state: its learning rate (as the
    schedule and any divergence-guard rollbacks left it) and its schedule.

    ``optim.lr`` becomes the learning rate in use from the resumed step on; the remaining milestones (those
    after it) then multiply it by ``optim.gamma``.
    """

    KEYS = ("lr", "milestones", "gamma", "betas")

    def __init__(self, changes: dict[str, tuple]):
        super().__init__()
        self.changes = changes  # key -> (checkpoint's value, this run's value)

    @classmethod
    def for_resume(cls, saved: dict, config: dict) -> list[L.Callback]:
        old, new = saved.get("optim") or {}, config.get("optim") or {}
        changes = {}
        for key in cls.KEYS:
            a, b = old.get(key), new.get(key)
            if isinstance(a, tuple | list) and isinstance(b, tuple | list):
                a, b = list(a), list(b)
            if a is not None and b is not None and a != b:
                changes[key] = (a, b)
        return [cls(changes)] if changes else []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        optimizer = trainer.optimizers[0]
        schedulers = [c.scheduler for c in trainer.lr_scheduler_configs]
        for key, (old, new) in self.changes.items():
            if key == "lr":
                in_use = optimizer.param_groups[0]["lr"]
                for group in optimizer.param_groups:
                    group["lr"] = group["initial_lr"] = float(new)
                for scheduler in schedulers:
                    scheduler.base_lrs = [float(new)] * len(optimizer.param_groups)
                    scheduler._last_lr = [float(new)] * len(optimizer.param_groups)
                detail = f"the learning rate in use was {in_use:.4g}"
            elif key == "betas":
                for group in optimizer.param_groups:
                    group["betas"] = tuple(float(b) for b in new)
                detail = "Adam's moment estimates are kept"
            else:
                for scheduler in schedulers:
                    if key == "milestones" and hasattr(scheduler, "milestones"):
                        scheduler.milestones = Counter(int(m) for m in new)
                    elif key == "gamma" and hasattr(scheduler, "gamma"):
                        scheduler.gamma = float(new)
                detail = f"from step {trainer.global_step} on"
            log.warning("resume: optim.%s=%s replaces the checkpoint's %s (%s)", key, new, old, detail)


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
                nca,
                cut_region(grown, self.region, pattern_box(dm.target)),
                self.regrow_steps,
                self.frame_every,
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
