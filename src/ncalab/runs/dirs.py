"""Run directories: every run gets one of its own, and no run writes into another run's.

Two pieces, both in place before Hydra writes anything (Hydra writes ``<run dir>/.hydra/*.yaml`` and opens the
job's log file before the task function runs, so a check inside the task is too late):

- the resolver ``${ncalab.fresh_dir:<path>}`` (``conf/hydra/default.yaml``: the default run and sweep
  directories) claims ``<path>`` by creating it, or ``<path>_1``, ``<path>_2``, ... when another run already
  has it: two runs started in the same second get two directories;
- the Hydra callback :class:`RunDirGuard` checks, before the run starts, that ``hydra.run.dir`` (or the sweep's
  job directories) holds no other run, and stops with one line otherwise.

Whether a directory holds another run (:func:`run_dir_problem`) is read from what runs write: a checkpoint
(``checkpoints/last.ckpt``, unless ``ckpt_path`` resumes that very file in place) or a ``status.json`` that says
the run finished or is still running. A directory left by a run that failed (or was killed) before it saved a
checkpoint may be used again.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ncalab.errors import kind_of
from ncalab.runs import folder as run_folder

RESOLVER = "ncalab.fresh_dir"
MAX_SUFFIX = 1000
# status.json's heartbeat is refreshed every HEARTBEAT_S seconds while a run lives; a "running" run whose
# heartbeat is older than STALE_S is taken as gone (killed, or its machine went down).
HEARTBEAT_S = 30.0
STALE_S = 600.0


def fresh_dir(base: str) -> str:
    """``base``, or ``base_1``, ``base_2``, ... : the first of them that this call could create.

    Creating a directory is atomic, so two processes asking for the same ``base`` at once get two different
    directories. The result is cached per config (``use_cache``): every later read of the same key gives the
    same directory, in this process and in the jobs a launcher starts with a copy of the config.
    """
    path = Path(str(base)).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    for n in range(MAX_SUFFIX):
        candidate = path if n == 0 else path.with_name(f"{path.name}_{n}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return str(candidate)
    raise RuntimeError(f"{path}: {MAX_SUFFIX} directories of that name exist already")


def register_resolver() -> None:
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, fresh_dir, use_cache=True)


register_resolver()


def this_host() -> str:
    return socket.gethostname()


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except (OSError, OverflowError):
        return False
    return True


def _parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def gone_reason(state: dict[str, Any], now: datetime | None = None, stale_s: float = STALE_S) -> str | None:
    """For a ``status.json`` that says ``running``: why its run is evidently not running any more (its process
    is gone from this machine, or its heartbeat stopped long ago), or None when it may still be running."""
    if state.get("status") != run_folder.RUNNING:
        return None
    pid, host = state.get("pid"), state.get("host")
    if isinstance(pid, int) and not isinstance(pid, bool) and host == this_host() and not pid_alive(pid):
        return f"process {pid} on {host} ended without recording an end (killed?)"
    beat = _parse_time(state.get("heartbeat"))
    if beat is not None:
        age = ((now or datetime.now(timezone.utc)) - beat).total_seconds()
        if age > stale_s:
            return f"no heartbeat for {age / 60:.0f} min (last {state['heartbeat']}; killed, or its machine stopped?)"
    return None


def read_status(run_dir: Path) -> dict[str, Any] | None:
    try:
        state = json.loads((run_dir / run_folder.STATUS_FILE).read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return state if isinstance(state, dict) else None


def run_dir_problem(out: str | Path, ckpt_path: str | None = None) -> str | None:
    """Why a new run must not write into ``out`` (one line), or None when it may.

    Refused: a path that is not a directory or cannot be created or written; a directory that holds another
    run: its ``checkpoints/last.ckpt`` (unless ``ckpt_path`` is that very file: resuming in place), or a
    ``status.json`` saying it finished or is still running.
    """
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        return f"the run directory {out} is {kind_of(out)}, not a directory; choose another hydra.run.dir"
    resolved = out.resolve()
    for folder in (resolved, *resolved.parents):
        if folder.name == run_folder.CHECKPOINTS_DIR and holds_run(folder.parent):
            return f"{out} is inside the checkpoint folder of the run {folder.parent}; choose another hydra.run.dir"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create the run directory {out} ({exc.strerror or exc}); choose another hydra.run.dir"
    if not os.access(out, os.W_OK | os.X_OK):
        return f"the run directory {out} is not writable; choose another hydra.run.dir"
    last = run_folder.last_checkpoint(out)
    in_place = (
        bool(ckpt_path) and last.exists() and Path(str(ckpt_path)).expanduser().resolve() == last.resolve()
    )
    state = read_status(out) or {}
    if state.get("status") == run_folder.RUNNING and gone_reason(state) is None:
        where = f" (process {state.get('pid')} on {state.get('host')})" if state.get("pid") else ""
        return (
            f"{out} belongs to a run that is still running{where}; choose another hydra.run.dir "
            "(or leave it out: every run gets a directory of its own)"
        )
    if last.exists() and not in_place:
        return (
            f"{out} already holds a run ({last} exists); choose another hydra.run.dir "
            f"or resume it with ckpt_path={last}"
        )
    if state.get("status") == run_folder.FINISHED and not in_place:
        return f"{out} already holds a finished run (status.json); choose another hydra.run.dir"
    return None


def holds_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a run: a checkpoint, or a ``status.json`` saying finished or still running."""
    state = read_status(run_dir) or {}
    return (
        run_folder.last_checkpoint(run_dir).exists()
        or state.get("status") == run_folder.FINISHED
        or (state.get("status") == run_folder.RUNNING and gone_reason(state) is None)
    )


def _job_order(name: str) -> tuple[int, int, str]:
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def _rank() -> int:
    """This process's rank when a launcher (SLURM, torchrun, Lightning's ``strategy=ddp``) runs one process per
    device with the same command line; they all share rank 0's directory."""
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        value = os.environ.get(key)
        if value is not None:
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


def _refuse(message: str) -> None:
    print(f"ncalab: error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)  # not an Exception: Hydra's callback runner would turn that into a warning and go on


class RunDirGuard(Callback):
    """Hydra callback (``conf/hydra/default.yaml``): before Hydra writes ``.hydra/`` into the run directory,
    refuse one that holds another run (:func:`run_dir_problem`); for a multirun, refuse a sweep directory whose
    job directories hold runs. Exits with status 2 and one line."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if _rank() != 0:  # other ranks of a DDP run write into rank 0's directory
            return
        try:
            out = str(config.hydra.run.dir)
        except Exception:  # noqa: BLE001 - unresolvable here (needs the job's runtime): Hydra will say why
            return
        ckpt = OmegaConf.select(config, "ckpt_path", throw_on_resolution_failure=False)
        problem = run_dir_problem(out, ckpt if isinstance(ckpt, str) else None)
        if problem:
            _refuse(problem)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if _rank() != 0:
            return
        try:
            sweep = Path(str(config.hydra.sweep.dir)).expanduser()
        except Exception:  # noqa: BLE001
            return
        if sweep.exists() and not sweep.is_dir():
            _refuse(
                f"the sweep directory {sweep} is {kind_of(sweep)}, not a directory; choose another hydra.sweep.dir"
            )
        try:
            sweep.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            _refuse(
                f"cannot create the sweep directory {sweep} ({exc.strerror or exc}); choose another hydra.sweep.dir"
            )
        if not os.access(sweep, os.W_OK | os.X_OK):
            _refuse(f"the sweep directory {sweep} is not writable; choose another hydra.sweep.dir")
        taken = sorted(
            (job.name for job in sweep.iterdir() if job.is_dir() and holds_run(job)), key=_job_order
        )
        if taken:
            _refuse(
                f"{sweep} already holds the runs of a sweep (jobs {', '.join(taken[:5])}"
                f"{', ...' if len(taken) > 5 else ''}); choose another hydra.sweep.dir "
                "(or leave it out: every sweep gets a directory of its own)"
            )
