"""How the processes of a run look after each other: the cores and torch threads a run takes, the process that
runs a run (rank 0, or the one that started a DDP rank), and a DDP rank ending at once when that process dies."""

from __future__ import annotations

import os
import signal
import threading
import time

import lightning as L
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from ncalab.runs.allocator import keep_heap
from ncalab.runs.dirs import pid_alive
from ncalab.runs.processes import parent_death_signal

# Set by a run's process for the DDP ranks that Lightning starts as new scripts (strategy=ddp): its pid.
RUN_PID_ENV = "NCALAB_RUN_PID"
_watching: int | None = None  # the run process this process watches (watch_parent)


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, which cgroups and ``taskset`` narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _parallel_jobs() -> tuple[int, str] | None:
    """How many jobs of this sweep run at once in this machine, when a launcher runs them in parallel here
    (``hydra/launcher=joblib``: ``hydra.launcher.n_jobs``, -1 = one per core as joblib counts them)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except (ImportError, ValueError):  # not under Hydra
        return None
    if hc.mode != RunMode.MULTIRUN or not str(hc.launcher.get("_target_", "")).endswith("JoblibLauncher"):
        return None
    n_jobs = hc.launcher.get("n_jobs", -1)
    if n_jobs is None:
        return 1, "hydra/launcher=joblib, n_jobs=null"
    n_jobs = int(n_jobs)
    jobs = available_cores() + 1 + n_jobs if n_jobs < 0 else n_jobs
    return max(1, jobs), f"hydra/launcher=joblib with hydra.launcher.n_jobs={n_jobs}"


def torch_threads(threads: int | None) -> tuple[int | None, str]:
    """The number of torch CPU threads for this run, and why; None keeps torch's own default.

    ``threads`` (the config key) wins; else a job of a parallel sweep on this machine takes its share of the
    cores (``cores // jobs at once``, at least 1), so that N jobs do not each start a thread per core (OpenMP's
    spin-waiting then slows every one of them many times over)."""
    if threads is not None:
        return int(threads), f"threads={threads}"
    parallel = _parallel_jobs()
    if parallel is not None:
        jobs, why = parallel
        cores = available_cores()
        return max(1, cores // jobs), f"{why}: {cores} cores shared by {jobs} jobs"
    return None, "torch's default"


def run_process() -> int:
    """The pid of the process that runs this run: this one, or, in a DDP rank that Lightning started as a new
    script (``strategy=ddp``), the rank-0 process that started it."""
    if rank_zero_only.rank != 0:
        value = os.environ.get(RUN_PID_ENV, "")
        if value.isdigit():
            return int(value)
    return os.getpid()


def _end_now() -> None:
    os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))
    os._exit(1)  # where SIGKILL does not exist


def _poll_parent(parent: int, every: float) -> None:
    while os.getppid() == parent:
        time.sleep(every)
    _end_now()


def watch_parent(parent: int, every: float = 0.5) -> bool:
    """In a DDP process that the run's process ``parent`` started: end this process at once (SIGKILL) when
    ``parent`` dies, so that it writes nothing more into the run directory. (torch gives the processes it
    spawns a SIGINT instead, which the run's signal handling turns into one more step and a checkpoint.)

    Linux: the kernel's parent-death signal; everywhere, a thread that checks every ``every`` seconds. Nothing
    happens in ``parent`` itself, or in a process that it did not start (SLURM, torchrun: their launcher owns
    it). Returns whether this call started the watch."""
    global _watching
    if parent == os.getpid() or _watching == parent:
        return False
    if os.getppid() != parent and pid_alive(parent):
        return False
    parent_death_signal(getattr(signal, "SIGKILL", signal.SIGTERM))
    if os.getppid() != parent:  # it died before the line above (or before this process got here)
        _end_now()
    threading.Thread(
        target=_poll_parent, args=(parent, every), name="ncalab-parent-watch", daemon=True
    ).start()
    _watching = parent
    return True


class RunProcess(L.Callback):
    """Set-up of every process of a run, the DDP processes included (with ``ddp_spawn`` they run neither
    ``train.py`` nor :func:`run`, only the callbacks): glibc's allocator setting, and the watch on the run's
    process (:func:`watch_parent`)."""

    def __init__(self, parent: int, heap: bool):
        super().__init__()
        self.parent, self.heap = parent, heap

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        keep_heap(self.heap)
        watch_parent(self.parent)
