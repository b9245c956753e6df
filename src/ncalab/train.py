"""Build everything from the composed config and train: DataModule -> NCA(perception) -> LightningModule."""

from __future__ import annotations

import errno
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from ncalab.callbacks import FinalCheckpoint, ResumeOptim, StepProgressBar
from ncalab.checkpoint import (
    AtomicCheckpointIO,
    check_compatible,
    check_training_state,
    check_weights,
    read_checkpoint,
)
from ncalab.config import validate
from ncalab.errors import ConfigError, NCALabError, RunError
from ncalab.guard import DivergenceGuard
from ncalab.lit_module import NCALitModule
from ncalab.loggers import finish_wandb, resume_extras
from ncalab.nca import NCA
from ncalab.render import build_render
from ncalab.runs import folder as run_folder
from ncalab.runs.allocator import keep_heap
from ncalab.runs.dirs import run_dir_problem
from ncalab.runs.processes import LAUNCHER_PID_ENV
from ncalab.runs.status import STOP, RunInterrupted, RunStatus, interrupt_signal
from ncalab.runs.supervision import (
    RUN_PID_ENV,
    RunProcess,
    run_process,
    torch_threads,
    watch_parent,
)

log = logging.getLogger("ncalab")


def build(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """``instantiate(node)`` with plain Python containers (nothing of OmegaConf's reaches a model, an optimiser's
    state or a checkpoint), turning a failure into one clear error that names the config key."""
    try:
        return instantiate(node, **{"_convert_": "all", **kwargs})
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, NCALabError):
            raise cause from None
        raise ConfigError(f"{key}: {cause if cause is not None else exc}") from exc


def _built(obj: Any, kind: type, key: str, what: str) -> Any:
    if not isinstance(obj, kind):
        raise ConfigError(f"{key} builds a {type(obj).__name__}, not {what}; check its _target_")
    return obj


def _factory(cfg: DictConfig, key: str) -> Any:
    """The partial that ``cfg[key]`` (a ``_target_`` with ``_partial_: true``) builds."""
    node = cfg.get(key)
    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise ConfigError(f"{key}: expected a mapping with a _target_ (e.g. the one in conf/train.yaml)")
    if not node.get("_partial_", False):
        raise ConfigError(f"{key}: set {key}._partial_=true; it is called later with the model's parameters")
    factory = build(node, key)
    if not callable(factory):
        raise ConfigError(f"{key} builds a {type(factory).__name__}, not a callable; check its _target_")
    return factory


def build_optim(cfg: DictConfig, module: torch.nn.Module) -> tuple[Any, Any]:
    """The optimiser and schedule factories of ``optim`` and ``schedule``, each tried once on ``module``'s
    parameters so that a bad value (torch's own check: a negative learning rate, a beta outside [0, 1), a key the
    class does not take) stops the run here, in one line naming the key, and not at the first training step."""
    optimizer, scheduler = _factory(cfg, "optim"), _factory(cfg, "schedule")
    try:
        trial = optimizer(module.parameters())
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"optim ({cfg.optim._target_}): {exc}") from None
    _built(trial, torch.optim.Optimizer, "optim", "a torch optimiser")
    try:
        schedule = scheduler(trial)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"schedule ({cfg.schedule._target_}): {exc}") from None
    _built(schedule, torch.optim.lr_scheduler.LRScheduler, "schedule", "a learning-rate scheduler")
    return optimizer, scheduler


def build_module(cfg: DictConfig, config: dict[str, Any] | None = None) -> NCALitModule:
    """The LightningModule for ``cfg``: the NCA (``model``) with its perception and renderer, the optimiser
    (``optim``) and schedule (``schedule``), all built by Hydra from their ``_target_``."""
    perception = build(cfg.perception, "perception")
    render_node = cfg.get("render")
    render = build_render(
        OmegaConf.to_container(render_node) if OmegaConf.is_config(render_node) else render_node,
        channels=cfg.model.channels,
        alive_threshold=cfg.model.get("alive_threshold", 0.1),
    )
    nca = _built(
        build(cfg.model, "model", perception=perception, render=render), NCA, "model", "an ncalab NCA"
    )
    optimizer, scheduler = build_optim(cfg, nca)
    return NCALitModule(
        nca,
        optimizer=optimizer,
        scheduler=scheduler,
        grad_mode=cfg.grad.mode,
        grad_max_norm=cfg.grad.max_norm,
        overflow_weight=cfg.loss.overflow_weight,
        overflow_bound=cfg.loss.overflow_bound,
        cell_weight=cfg.loss.get("cell_weight", 0.0),
        min_steps=cfg.rollout.min_steps,
        max_steps=cfg.rollout.max_steps,
        backprop_steps=cfg.rollout.backprop_steps,
        compile=cfg.compile,
        seed=cfg.seed,
        guard=DivergenceGuard(**cfg.guard),
        config=config,
    )


def _guard_output_dir(out: Path, ckpt_path: str | None) -> None:
    """Never write into another run's directory (its checkpoint, or a run that finished or is still running),
    except when resuming that very checkpoint in place; never into a directory that cannot be written.

    Under Hydra, :class:`ncalab.runs.dirs.RunDirGuard` has checked the same before Hydra wrote ``.hydra/``;
    this covers programmatic runs. Only rank 0 checks: the other ranks of a DDP run share its directory."""
    if rank_zero_only.rank != 0:
        return
    problem = run_dir_problem(out, ckpt_path)
    if problem:
        raise ConfigError(problem)


class _DropTips(logging.Filter):
    """Lightning's advertisements for other products ("Tip: ... litlogger")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in str(record.msg)


def quiet_libraries() -> None:
    """What a run prints, each line once and only what the user can act on.

    - Lightning's lines once: under Hydra the root logger (console and ``train.log``) prints them, so Lightning's
      own console handler, which prints them a second time, is removed (only when the root logger has a
      handler: a programmatic caller without logging set up keeps Lightning's);
    - no advertisement for other loggers;
    - no warnings about code that is not the user's: a deprecation inside Lightning (``LeafSpec``) and the
      ``IterableDataset`` length (ncalab's index stream has a length on purpose: it groups steps, nothing else).
    """
    lightning_log = logging.getLogger("lightning")
    if logging.getLogger().hasHandlers():
        for handler in list(lightning_log.handlers):
            if type(handler) is logging.StreamHandler:
                lightning_log.removeHandler(handler)
    tips = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropTips) for f in tips.filters):
        tips.addFilter(_DropTips())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")


def run(cfg: DictConfig, extra_callbacks: list[L.Callback] | None = None) -> dict[str, Any]:
    """Train one run and return its summary (final loss, PSNR, timing, parameter count).

    ``extra_callbacks`` are added to the configured ones (for programmatic use and tests).
    """
    out = Path(cfg.output_dir)
    quiet_libraries()
    parent = run_process()
    watch_parent(parent)  # a rank started as a new script ends with the process that started it
    launcher = os.environ.get(LAUNCHER_PID_ENV, "")
    if launcher.isdigit() and int(launcher) == os.getppid():
        watch_parent(int(launcher))  # a sweep's worker process (joblib) ends with the sweep
    _guard_output_dir(out, cfg.ckpt_path)
    # Under SLURM / strategy=ddp every rank runs this function: only rank 0 keeps the books.
    try:
        status = RunStatus(out, _overrides(cfg), write=rank_zero_only.rank == 0)
    except OSError as exc:
        if exc.errno not in WRITE_ERRNOS:
            raise
        raise RunError(f"cannot write into the run directory {out}: {exc.strerror}") from None
    # SIGINT (Ctrl+C) and SIGTERM (SLURM before a time limit): save last.ckpt, record "interrupted", exit 128+N.
    STOP.reset()
    installed = STOP.install()
    threads = torch.get_num_threads()  # put back afterwards: a programmatic caller keeps its own setting
    pid_before = os.environ.get(RUN_PID_ENV)
    if parent == os.getpid():  # for the ranks Lightning may start as new scripts (strategy=ddp)
        os.environ[RUN_PID_ENV] = str(parent)
    try:
        summary = _train(cfg, out, extra_callbacks, parent)
    except BaseException as exc:
        # A signal this process received counts too (with spawned DDP processes the error comes from them), and
        # one the spawned processes stopped for.
        signum = interrupt_signal(exc) or STOP.received()
        if signum is not None and not isinstance(exc, RunInterrupted):
            # Lightning's SystemExit for SIGTERM (code None, i.e. exit status 0) or Ctrl+C: one exception that
            # says which signal and where, and gives train.py its exit code.
            saved = STOP.saved_step
            last = run_folder.last_checkpoint(out) if saved is not None else None
            interrupted = RunInterrupted(signum, saved, last)
            status.failed(interrupted)
            finish_wandb(failed=True)
            raise interrupted from exc
        if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
            error = _write_error(exc, out)
            status.failed(error)
            finish_wandb(failed=True)
            raise error from exc
        status.failed(exc)
        finish_wandb(failed=True)
        raise
    finally:
        if installed:
            STOP.restore()
        STOP.reset()
        torch.set_num_threads(threads)
        if pid_before is None:
            os.environ.pop(RUN_PID_ENV, None)
        else:
            os.environ[RUN_PID_ENV] = pid_before
    status.finished()
    finish_wandb(failed=False)
    return summary


# A write that failed for a reason outside the program (a full disk, a quota, a read-only or lost filesystem, no
# permission): the run stops with one line that says which file and where the last checkpoint is.
WRITE_ERRNOS = frozenset(
    getattr(errno, name)
    for name in ("ENOSPC", "EDQUOT", "EROFS", "EFBIG", "EIO", "EACCES", "EPERM")
    if hasattr(errno, name)
)


def _write_error(exc: OSError, out: Path) -> RunError:
    last = run_folder.last_checkpoint(out)
    saved = (
        f"; the last checkpoint saved is {last} (resume with ckpt_path={last} once it can write)"
        if last.is_file()
        else "; no checkpoint was saved"
    )
    return RunError(f"cannot write {exc.filename or out}: {exc.strerror or exc}{saved}")


def _overrides(cfg: DictConfig) -> list[str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except ValueError:  # composed without a Hydra run (tests, notebooks)
        return []


def _train(
    cfg: DictConfig, out: Path, extra_callbacks: list[L.Callback] | None, parent: int | None = None
) -> dict[str, Any]:
    validate(cfg)
    heap = cfg.get("keep_heap", True)
    if not isinstance(heap, bool):
        raise ConfigError(f"keep_heap={heap!r} is not valid; expected true or false")
    keep_heap(heap)  # ncalab.runs.allocator: glibc keeps large buffers (NCALAB_KEEP_HEAP=0 turns it off too)
    threads, why = torch_threads(cfg.get("threads"))
    if threads is not None and threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    log.info("torch threads: %d (%s)", torch.get_num_threads(), why)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    config = OmegaConf.to_container(cfg, resolve=True)

    ckpt = None
    resume_callbacks: list[L.Callback] = []
    if cfg.ckpt_path:
        ckpt = read_checkpoint(cfg.ckpt_path)
        check_compatible(ckpt, config, cfg.ckpt_path)
        step = int(ckpt.get("global_step") or 0)
        if step >= cfg.trainer.max_steps:
            raise ConfigError(
                f"ckpt_path={cfg.ckpt_path!r} is already at step {step}, trainer.max_steps={cfg.trainer.max_steps}: "
                f"nothing to train; resume with trainer.max_steps above {step} to continue"
            )
        resume_callbacks = ResumeOptim.for_resume(ckpt["hyper_parameters"]["config"], config)

    module = build_module(cfg, config)
    scale = (
        module.nca.render.scale
    )  # a decoder draws `scale` pixels per cell side: the grid is that much coarser
    datamodule = build(cfg.data, "data", **({"scale": scale} if scale != 1 else {}))
    # Where the grid is first known: a perception that cannot read it (multi-scale levels coarser than the grid).
    module.nca.perception.check_grid(datamodule.height, datamodule.width)
    if ckpt is not None:
        check_weights(ckpt, module.state_dict(), cfg.ckpt_path)
        built = module.configure_optimizers()  # thrown away: Lightning builds the run's own
        check_training_state(ckpt, built["optimizer"], built["lr_scheduler"]["scheduler"], cfg.ckpt_path)
        if type(datamodule).__qualname__ not in ckpt:  # a saved pool is checked when Lightning restores it
            log.warning(
                "ckpt_path=%s holds no sample pool: this run resumes the model and optimiser with a fresh pool",
                cfg.ckpt_path,
            )
    # The process set-up first (in spawned DDP processes too), then the final checkpoint: it is saved before the
    # end-of-run callbacks that can fail or take long.
    callbacks: list[L.Callback] = [
        RunProcess(os.getpid() if parent is None else parent, heap),
        FinalCheckpoint(run_folder.last_checkpoint(out)),
    ]
    callbacks += [
        _built(build(c, f"callbacks.{k}"), L.Callback, f"callbacks.{k}", "a Lightning callback")
        for k, c in (cfg.get("callbacks") or {}).items()
        if c is not None
    ]
    callbacks += [*resume_callbacks, *(extra_callbacks or [])]
    if cfg.trainer.get("enable_progress_bar", True) is not False and not any(
        isinstance(c, ProgressBar) for c in callbacks
    ):
        callbacks.append(StepProgressBar())
    loggers = [
        _built(
            build(lg, f"logger.{k}", **resume_extras(lg, config, ckpt)),
            Logger,
            f"logger.{k}",
            "a Lightning logger",
        )
        for k, lg in (cfg.get("logger") or {}).items()
        if lg is not None
    ]
    # Every checkpoint save (ModelCheckpoint, FinalCheckpoint) writes beside its target and renames it over it.
    trainer: L.Trainer = build(
        cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()]
    )

    out.mkdir(parents=True, exist_ok=True)
    if rank_zero_only.rank == 0:
        (out / run_folder.CONFIG_FILE).write_text(OmegaConf.to_yaml(config))
    log.info(
        "perception=%s grid=%dx%d parameters=%d",
        module.nca.perception.name,
        datamodule.height,
        datamodule.width,
        sum(p.numel() for p in module.parameters() if p.requires_grad),
    )

    STOP.defer = True  # from here a first signal only asks FinalCheckpoint to save and stop after this step
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)
    finally:
        STOP.defer = False
    if STOP.signum is not None:  # a signal came after training ended (the final checkpoint is saved)
        raise RunInterrupted(STOP.signum, trainer.global_step, run_folder.last_checkpoint(out))
    if trainer.interrupted:
        log.warning("training was interrupted at step %d", trainer.global_step)

    # Read back what the run wrote: with spawned processes (ddp_spawn) the callbacks ran elsewhere.
    summary: dict[str, Any] = {"train_loss": module.last_loss, "steps": trainer.global_step}
    if (out / run_folder.SUMMARY_FILE).exists():
        summary.update(json.loads((out / run_folder.SUMMARY_FILE).read_text()))
    # What sweeps minimise: the loss of the pattern grown from the seed (train loss if it was not measured).
    summary["objective"] = float(summary.get("eval_loss", summary["train_loss"]))
    log.info(
        "done: %s",
        ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()),
    )
    return summary
