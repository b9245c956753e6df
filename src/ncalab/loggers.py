"""Weights & Biases, all that ncalab knows of it: online with credentials, offline (inside the run directory)
without, never a prompt; the run's name, group and tags in a sweep; recognising the W&B logger among a run's
loggers (:func:`wandb_run_id`, :func:`wandb_run`); and a resumed checkpoint continuing its W&B run
(:func:`resume_extras`)."""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment

log = logging.getLogger("ncalab")
_told_offline = False

MODES = ("auto", "online", "offline", "disabled")


def _wandb_settings():
    """wandb's settings as ``wandb.init`` would load them now (settings files, then environment), read afresh
    rather than from wandb's process-wide singleton, so that a changed ``$HOME`` or environment is seen."""
    from wandb.sdk.wandb_settings import Settings

    settings = Settings()
    config_dir = os.environ.get("WANDB_CONFIG_DIR")
    system = Path(config_dir).expanduser() / "settings" if config_dir else Path("~/.config/wandb/settings")
    settings.settings_system = str(system.expanduser())
    settings.update_from_system_settings()
    settings.update_from_env_vars(dict(os.environ))
    return settings


def has_wandb_credentials() -> bool:
    """Whether wandb itself has credentials for the host it would use, from the sources ``wandb.init`` reads:
    ``WANDB_API_KEY`` (or ``WANDB_IDENTITY_TOKEN_FILE``), the ``.netrc`` entry that ``wandb login`` writes for
    wandb's own default host (``wandb.Settings().base_url``, or ``WANDB_BASE_URL``), or an ``api_key`` in
    wandb's settings file. Nothing is sent anywhere."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    try:
        from wandb.sdk.lib import wbauth

        settings = _wandb_settings()
        host = settings.base_url
        if wbauth.session_credentials(host=host) is not None:
            return True
        try:
            if wbauth.read_netrc_auth(host=host):
                return True
        except Exception:  # noqa: BLE001 - a malformed entry: wandb would refuse it too
            log.debug("W&B: unusable .netrc entry for %s", host, exc_info=True)
        return bool(settings.api_key)
    except Exception:  # noqa: BLE001 - an unreadable wandb configuration means no usable credentials
        log.debug("W&B: could not read wandb's settings", exc_info=True)
        return False


# What wandb itself accepts in $WANDB_MODE.
WANDB_ENV_MODES = ("online", "offline", "disabled", "dryrun", "run", "shared")


def _clear_empty_wandb_mode() -> None:
    """An empty ``WANDB_MODE=`` means unset (the ``auto`` choice), but wandb refuses it with a validation error
    before the run starts: remove it from this process's environment."""
    if "WANDB_MODE" in os.environ and not os.environ["WANDB_MODE"].strip():
        del os.environ["WANDB_MODE"]


def resolve_mode(mode: str = "auto") -> str:
    """``auto``: ``$WANDB_MODE`` if set, else online with credentials and offline without."""
    if mode not in MODES:
        raise ValueError(f"logger.wandb.mode={mode!r}; accepted: {', '.join(MODES)}")
    env = os.environ.get("WANDB_MODE", "").strip()
    if env and env not in WANDB_ENV_MODES:
        raise ValueError(
            f"the environment variable WANDB_MODE={env!r} is not a W&B mode; accepted: "
            f"{', '.join(WANDB_ENV_MODES)} (or unset it)"
        )
    if mode != "auto":
        return mode
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


def run_name(overrides_name: str | None, perception: dict[str, Any] | None) -> str | None:
    """A run's W&B name: the job's overrides (``perception=sobel5,seed=1``), plus the operators of a fixed bank
    that neither its name nor the overrides give (``perception=operators`` with the ops set in an experiment file),
    so that every bank's run names its operators; a multi-scale bank's levels and upsampling too
    (``perception=multiscale,perception.levels=3,perception.ops=[...],perception.upsample=bilinear``)."""
    node = perception or {}
    ops, name = node.get("ops"), node.get("name")
    given = overrides_name or ""
    from ncalab.perception import BANKS

    extra = []
    for key in ("levels", "ops", "upsample"):  # levels and upsample: a multi-scale bank's settings
        value = node.get(key)
        if value is None or (isinstance(value, list | tuple) and not value) or f"perception.{key}=" in given:
            continue
        if key == "ops":
            if not isinstance(ops, list | tuple) or tuple(ops) == BANKS.get(name):
                continue
            value = f"[{','.join(map(str, ops))}]"
        extra.append(f"perception.{key}={value}")
    if not extra:
        return overrides_name
    joined = ",".join(extra)
    return f"{overrides_name},{joined}" if overrides_name else f"perception={name},{joined}"


def init_timeout_seconds(init_timeout: Any) -> float:
    """The seconds ``wandb.init`` may wait for the server: ``$WANDB_INIT_TIMEOUT`` when set, else
    ``init_timeout``; a finite number > 0, or ``ValueError`` naming where the bad value came from (wandb reads the
    variable itself, in every mode, and fails with a traceback on one it cannot read; with 0 or less it waits
    forever)."""
    env = os.environ.get("WANDB_INIT_TIMEOUT", "").strip()
    where, value = (
        ("the environment variable WANDB_INIT_TIMEOUT", env)
        if env
        else ("logger.wandb.init_timeout", init_timeout)
    )
    try:
        seconds = float("nan") if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        seconds = float("nan")
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"{where}={value!r} is not a number of seconds > 0 (e.g. 30)")
    return seconds


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
    init_timeout: float = 30.0,
) -> WandbLogger:
    """A :class:`WandbLogger` whose files land in ``save_dir/wandb``.

    In a multirun the group is the sweep (``sweep-<sweep dir name>``), the name the job's overrides (with a fixed
    bank's operators, :func:`run_name`), the job type the perception and the tags the overrides, so a dashboard
    groups by perception and averages over seeds with no set-up. ``id`` resumes an earlier run (the id is kept in
    checkpoints).

    In ``auto`` mode with credentials, ``wandb.init`` may wait at most ``init_timeout`` seconds for the server
    (``$WANDB_INIT_TIMEOUT`` wins when set); when it cannot reach it (a compute node without network) the run
    logs offline instead, with one message. An explicit ``online`` mode keeps wandb's own behaviour.
    """
    global _told_offline
    _clear_empty_wandb_mode()
    timeout = init_timeout_seconds(init_timeout)
    auto = mode == "auto" and not os.environ.get("WANDB_MODE", "").strip()
    mode = resolve_mode(mode)
    sweep_group, overrides_name, overrides = _hydra_run_info()
    perception_config = (run_config or {}).get("perception") or {}
    perception = perception_config.get("name")
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    if mode == "offline" and not _told_offline:
        _told_offline = True
        log.warning(
            "W&B: no credentials found (or WANDB_MODE=offline): logging offline to %s/wandb. "
            "Upload later with: wandb sync %s/wandb/offline-run-*",
            save_dir,
            save_dir,
        )
    extra: dict[str, Any] = {}
    if auto and mode == "online":
        import wandb

        # quiet: wandb then skips looking up the account name to print it, which waits on the network too.
        extra["settings"] = wandb.Settings(init_timeout=timeout, quiet=True)
    elif mode == "offline":
        import wandb

        # The line above says where the run is and how to upload it; wandb's own banner and its end-of-run
        # history table (dozens of lines) say nothing more.
        extra["settings"] = wandb.Settings(silent=True)
    return WandbLogger(
        fallback_offline=auto and mode == "online",
        project=project,
        entity=entity,
        save_dir=save_dir,
        id=id,
        resume="allow" if id else None,
        mode=mode,
        group=group or sweep_group,
        name=name or run_name(overrides_name, perception_config),
        job_type=job_type or perception,
        tags=sorted({t[:64] for t in (*(tags or []), *overrides, *([perception] if perception else []))}),
        config=run_config,
        log_model=log_model,
        **extra,
    )


class WandbLogger(LightningWandbLogger):
    """Lightning's ``WandbLogger`` that, when ``fallback_offline``, turns into an offline run if ``wandb.init``
    cannot reach the server (within the run settings' ``init_timeout``), instead of ending the run."""

    def __init__(self, *args: Any, fallback_offline: bool = False, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # Lightning always passes `anonymous` (None when unset), and wandb warns that the setting has no effect.
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)
        self._fallback_offline = fallback_offline

    @property
    @rank_zero_experiment
    def experiment(self):  # type: ignore[override]
        create = LightningWandbLogger.experiment.fget  # Lightning's: wandb.init on first use
        if self._experiment is not None or not self._fallback_offline:
            return create(self)
        self._fallback_offline = False
        try:
            run = create(self)
        except Exception as exc:  # noqa: BLE001 - wandb raises CommError, AuthenticationError, timeouts...
            self._experiment = None
            settings = self._wandb_init.get("settings")
            save_dir = self._wandb_init.get("dir") or "."
            log.warning(
                "W&B: credentials found but the server could not be reached within %ss (%s): logging offline to "
                "%s/wandb instead. Upload later with: wandb sync %s/wandb/offline-run-*",
                getattr(settings, "init_timeout", "?"),
                " ".join(str(exc).split())[:200],
                save_dir,
                save_dir,
            )
            self._wandb_init["mode"] = "offline"
            return create(self)
        url = getattr(run, "url", None)
        if url:
            log.info("W&B run: %s", url)
        return run


# The key under which a checkpoint keeps the id of its run's W&B run (a resume continues that run).
CHECKPOINT_WANDB_ID = "ncalab_wandb_id"
# What ncalab accepts as a saved W&B run id (W&B's own ids are 8 lowercase letters and digits).
WANDB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def is_wandb(logger: Any) -> bool:
    """Whether ``logger`` logs to W&B (Lightning's ``WandbLogger``, or ncalab's :class:`WandbLogger`)."""
    return isinstance(logger, LightningWandbLogger)


def wandb_run_id(logger: Any) -> str | None:
    """The id of ``logger``'s W&B run, when it is a W&B logger that has one (what a checkpoint keeps under
    :data:`CHECKPOINT_WANDB_ID`); else None."""
    if is_wandb(logger) and logger.version:
        return str(logger.version)
    return None


def wandb_run(logger: Any) -> Any:
    """``logger``'s W&B run (``wandb.Run``: started on first use), when it is a W&B logger; else None."""
    return getattr(logger, "experiment", None) if is_wandb(logger) else None


def resume_extras(node: Any, config: dict[str, Any], ckpt: dict[str, Any] | None) -> dict[str, Any]:
    """What :func:`wandb_logger` gets besides its config node ``node`` (``logger.<name>``): the run's resolved
    ``config``, and the W&B run id kept in the resumed checkpoint ``ckpt`` (one curve, not two) unless ``node``
    gives an ``id``. Empty for any other logger."""
    if node.get("_target_") != f"{__name__}.{wandb_logger.__name__}":
        return {}
    # Not recursive: the config holds _target_ nodes that must reach W&B as plain values.
    extras: dict[str, Any] = {"run_config": config, "_recursive_": False, "_convert_": "all"}
    if ckpt and ckpt.get(CHECKPOINT_WANDB_ID) and not node.get("id"):
        saved = ckpt[CHECKPOINT_WANDB_ID]
        # Data, never a config value: an id that is not W&B's alphabet (an interpolation such as ${oc.env:...}, a
        # path, a dict) is dropped rather than resolved or passed on.
        if isinstance(saved, str) and WANDB_ID.fullmatch(saved):
            extras["id"] = saved
        else:
            log.warning(
                "the checkpoint's W&B run id %.80r is not a W&B id (letters, digits, - and _); "
                "this run starts a new W&B run",
                saved,
            )
    return extras


def finish_wandb(failed: bool) -> None:
    """End the active W&B run so the next job of a multirun starts its own; failed runs show as failed."""
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=1 if failed else 0)
