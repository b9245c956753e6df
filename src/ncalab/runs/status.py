"""How a run ends, beside the runner (:mod:`ncalab.train`): its ``status.json`` (:class:`RunStatus`), and the
SIGINT/SIGTERM handling that turns a signal into a checkpoint and a clean stop (:class:`StopSignals`, the
process's one instance :data:`STOP`; :class:`RunInterrupted`, :func:`interrupt_signal`).

:class:`ncalab.callbacks.FinalCheckpoint` is the Lightning side of a stop: it saves ``last.ckpt`` at the end of the
step under way when :data:`STOP` has recorded a signal.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from datetime import datetime, timezone
from multiprocessing import sharedctypes
from pathlib import Path

from lightning.pytorch.utilities.exceptions import SIGTERMException

from ncalab.runs import folder as run_folder
from ncalab.runs.dirs import HEARTBEAT_S, this_host

log = logging.getLogger("ncalab")


class RunStatus:
    """``status.json`` in the run directory (:mod:`ncalab.runs.folder` lists its keys): running, finished, failed (with the error) or interrupted (with the
    signal), for sweeps and reports.

    While the run lives it also says where (``pid``, ``host``) and when it was last seen (``heartbeat``,
    refreshed every ``heartbeat_s`` seconds by a background thread), so that a run killed without a chance to
    record its end (SIGKILL, out of memory, a node lost) is recognisable as such (:func:`ncalab.runs.dirs.gone_reason`).
    Every write replaces the file whole (written beside it, then renamed), so a reader never sees half of it."""

    def __init__(
        self,
        output_dir: str | Path,
        overrides: list[str] | None = None,
        write: bool = True,
        heartbeat_s: float = HEARTBEAT_S,
    ):
        self.path = Path(output_dir) / run_folder.STATUS_FILE
        self.write = write
        self.state = {
            "status": run_folder.RUNNING,
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
                if self.state["status"] != run_folder.RUNNING:
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
            try:
                self._write_unlocked()
            except OSError as exc:  # a full disk: the run's own error says more than this one
                log.warning(
                    "could not record %r in %s (%s)", state.get("status"), self.path, exc.strerror or exc
                )
        if self._beat is not None and self._beat is not threading.current_thread():
            self._beat.join(timeout=5)

    def finished(self) -> None:
        self._end(status=run_folder.FINISHED)

    def failed(self, exc: BaseException) -> None:
        signum = interrupt_signal(exc)
        if signum is not None:
            name = signal.Signals(signum).name
            state = dict(status=run_folder.INTERRUPTED, signal=name, exit_code=128 + signum)
            state["error"] = str(exc) if isinstance(exc, RunInterrupted) else f"{name}: {type(exc).__name__}"
            if isinstance(exc, RunInterrupted) and exc.step is not None:
                state.update(step=exc.step, checkpoint=exc.checkpoint)
        else:
            state = dict(status=run_folder.FAILED, error=f"{type(exc).__name__}: {exc}")
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

    While training steps run (``defer``), the first signal is only recorded: :class:`~ncalab.callbacks.FinalCheckpoint` saves
    ``last.ckpt`` at the end of the step and stops the run. Otherwise (before training, after the final
    checkpoint, or at a second signal) :class:`RunInterrupted` is raised at once. Handlers are installed only
    from the main thread, and the previous ones come back on :meth:`restore`.

    The DDP processes that the run's process spawns (``ddp_spawn``) share a small record with it (:meth:`share`,
    :meth:`attach`). A signal sent to the run's process alone (what a scheduler does: it signals the main pid) is
    written there, and the spawned processes stop as if it had been sent to them: while training, at the end of
    the step under way (:class:`~ncalab.callbacks.FinalCheckpoint` reads the record), otherwise at once (:meth:`watch`). The run's
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
        the spawned processes inside :class:`~ncalab.callbacks.FinalCheckpoint`, which ``ddp_spawn`` pickles to them."""
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
        once). During training :class:`~ncalab.callbacks.FinalCheckpoint` reads the record at the end of each step instead (a
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
