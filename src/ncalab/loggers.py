"""Weights & Biases: online with credentials, offline (inside the run directory) without, never a prompt."""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger

log = logging.getLogger("ncalab")
_told_offline = False

MODES = ("auto", "online", "offline", "disabled")


def has_wandb_credentials() -> bool:
    """An API key in the environment or a ``wandb login`` entry in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].rstrip("/")
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_mode(mode: str = "auto") -> str:
    """``auto``: ``$WANDB_MODE`` if set, else online with credentials and offline without."""
    if mode not in MODES:
        raise ValueError(f"logger.wandb.mode={mode!r}; accepted: {', '.join(MODES)}")
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env:
        return "offline" if env == "dryrun" else env
    return "online" if has_wandb_credentials() else "offline"


def _hydra_run_info() -> tuple[str | None, str | None, list[str]]:
    """(sweep group, run name, overrides) of the current Hydra job; Nones outside Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except (ImportError, ValueError):
        return None, None, []
    overrides = list(hc.overrides.task)
    group = f"sweep-{Path(hc.sweep.dir).name}" if hc.mode == RunMode.MULTIRUN else None
    return group, hc.job.override_dirname or None, overrides


def wandb_logger(
    project: str = "ncalab",
    save_dir: str = ".",
    mode: str = "auto",
    entity: str | None = None,
    group: str | None = None,
    name: str | None = None,
    job_type: str | None = None,
    tags: list[str] | None = None,
    id: str | None = None,
    run_config: dict[str, Any] | None = None,
    log_model: bool = False,
) -> WandbLogger:
    """A :class:`WandbLogger` whose files land in ``save_dir/wandb``.

    In a multirun the group is the sweep (``sweep-<sweep dir name>``), the name the job's overrides, the job type
    the perception and the tags the overrides, so a dashboard groups by perception and averages over seeds with
    no set-up. ``id`` resumes an earlier run (the id is kept in checkpoints).
    """
    global _told_offline
    mode = resolve_mode(mode)
    sweep_group, run_name, overrides = _hydra_run_info()
    perception = ((run_config or {}).get("perception") or {}).get("name")
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    if mode == "offline" and not _told_offline:
        _told_offline = True
        log.warning(
            "W&B: no credentials found (or WANDB_MODE=offline): logging offline to %s/wandb. "
            "Upload later with: wandb sync %s/wandb/offline-run-*",
            save_dir,
            save_dir,
        )
    return WandbLogger(
        project=project,
        entity=entity,
        save_dir=save_dir,
        id=id,
        resume="allow" if id else None,
        mode=mode,
        group=group or sweep_group,
        name=name or run_name,
        job_type=job_type or perception,
        tags=sorted({t[:64] for t in (*(tags or []), *overrides, *([perception] if perception else []))}),
        config=run_config,
        log_model=log_model,
    )


def finish_wandb(failed: bool) -> None:
    """End the active W&B run so the next job of a multirun starts its own; failed runs show as failed."""
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=1 if failed else 0)
