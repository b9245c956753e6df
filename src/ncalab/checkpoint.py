"""Reading checkpoints safely (``weights_only=True``), checking that they fit the run that loads them, rebuilding
a model from one without calling anything it names, and writing them so that a killed save never destroys the
last good one."""

from __future__ import annotations

import contextlib
import glob
import inspect
import math
import os
import re
import secrets
import socket
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ncalab.errors import CheckpointError, kind_of
from ncalab.nca import NCA
from ncalab.perception import (
    BANKS,
    REGISTRY,
    FixedPerception,
    MultiScalePerception,
    Perception,
    resolve_ops,
)
from ncalab.render import build_render
from ncalab.runs.dirs import pid_alive

# Settings that decide the shapes and meaning of what a checkpoint holds.
COMPATIBLE_KEYS = (
    "perception",
    "render",
    "model.channels",
    "model.hidden",
    "model.update_bias",
    "data.target_size",
    "data.padding",
    "data.pool_size",
    "data.mode",
)

# What a checkpoint's model._target_ may name (a config saved before model had a _target_ names nothing: the NCA).
NCA_TARGETS = (f"{NCA.__module__}.{NCA.__name__}", "ncalab.NCA")

# The optimiser and schedule a run config names; a config saved before they were Hydra partials had only
# optim.{lr,betas,milestones,gamma}: Adam and a step schedule.
OPTIM_DEFAULT = "torch.optim.Adam"
SCHEDULE_DEFAULT = "torch.optim.lr_scheduler.MultiStepLR"
_OLD_SCHEDULE_KEYS = ("milestones", "gamma")


def optim_settings(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A run config's optimiser and schedule settings, each ``{"_target_": class path, key: value, ...}`` without
    ``_partial_``; a config from before the ``schedule`` group gives its milestones and gamma as the schedule's."""
    optim = dict(config.get("optim") or {})
    schedule = dict(config.get("schedule") or {})
    if "schedule" not in config:
        schedule = {k: optim.pop(k) for k in _OLD_SCHEDULE_KEYS if k in optim}
    for node, default in ((optim, OPTIM_DEFAULT), (schedule, SCHEDULE_DEFAULT)):
        node.setdefault("_target_", default)
        node.pop("_partial_", None)
    return optim, schedule


_ANSI = re.compile(r"\x1b\[[0-9;]*m")

# The only classes a checkpoint may name as its perception: the registered subclasses of Perception (ncalab's own,
# and any other whose module this process has imported; ncalab.perception.REGISTRY). A checkpoint's config is data:
# nothing it names is imported or called, and no ``${...}`` in it is resolved.
PERCEPTION_CLASSES: dict[str, type[Perception]] = REGISTRY
_MULTISCALE = f"ncalab.perception.{MultiScalePerception.__name__}"


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file without running any code in it; raise a clear error when that fails."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_file():
        raise CheckpointError(f"ckpt_path={str(path)!r} is {kind_of(path)}, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"ckpt_path={str(path)!r}: no such file (expected a .ckpt written by ncalab)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to unpickle means the same thing to the user
        # The whole message: torch's own explanation of weights_only (and its warning that loading the file
        # with weights_only=False can execute arbitrary code) is what the user needs to decide what to do.
        raise CheckpointError(
            f"ckpt_path={str(path)!r} is not a readable checkpoint "
            f"({type(exc).__name__}: {' '.join(_ANSI.sub('', str(exc)).split())})"
        ) from exc
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    config = hparams.get("config") if isinstance(hparams, dict) else None
    if not isinstance(config, dict) or not config or "state_dict" not in ckpt:
        raise CheckpointError(f"ckpt_path={str(path)!r} is not an ncalab checkpoint (no saved run config)")
    return ckpt


# What a key meant in checkpoints written before it existed.
LEGACY_DEFAULTS = {
    "model.update_bias": True,
    "data.mode": "regenerating",
    "render": {"name": "cells", "scale": 1},  # before the rendering choice: one pixel per cell
}


def _select(config: dict, key: str) -> Any:
    """``config[a][b]`` for ``key="a.b"``, as plain data (no interpolation is resolved)."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return LEGACY_DEFAULTS.get(key)
        node = node[part]
    return node


def _fixed_ops(node: Any) -> tuple[str, ...] | None:
    """The operators a saved fixed-bank perception names (``ops``, or the bank ``operators`` of configs written
    before ``ops`` existed); None for any other perception or a bank that does not resolve."""
    if not isinstance(node, dict) or node.get("_target_") != f"ncalab.perception.{FixedPerception.__name__}":
        return None
    try:
        return resolve_ops(node.get("ops"), node.get("operators"))
    except (TypeError, ValueError):
        return None


def _perception_identity(node: Any) -> Any:
    """What decides a perception's weights and meaning: a fixed bank is its operators (in order) and channels,
    however it was written; any other perception its settings. The name is a label and does not count."""
    ops = _fixed_ops(node)
    if ops is not None:
        return {"ops": list(ops), "channels": node.get("channels")}
    return {k: v for k, v in node.items() if k != "name"} if isinstance(node, dict) else node


def _describe_perception(node: Any) -> str:
    ops = _fixed_ops(node)
    if ops is not None:
        return f"{node.get('name')} (identity + {', '.join(ops)})"
    if isinstance(node, dict) and node.get("_target_") == _MULTISCALE:
        bank = ", ".join(map(str, node.get("ops") or ()))
        return (
            f"{node.get('name')} (identity + {bank} at {node.get('levels')} levels, upsampled "
            f"{node.get('upsample')})"
        )
    return f"{node.get('name')} {node}" if isinstance(node, dict) else str(node)


def _perception_override(node: Any) -> str:
    """The command-line choice that builds ``node`` again."""
    name = node.get("name", "?") if isinstance(node, dict) else "?"
    if isinstance(node, dict) and node.get("_target_") == _MULTISCALE:
        ops = ",".join(map(str, node.get("ops") or ()))
        return (
            f"perception={name} perception.levels={node.get('levels')} 'perception.ops=[{ops}]' "
            f"perception.upsample={node.get('upsample')}"
        )
    ops = _fixed_ops(node)
    if ops is None or BANKS.get(name) == ops:
        return f"perception={name}"
    return f"perception=operators 'perception.ops=[{','.join(ops)}]'"


def check_compatible(ckpt: dict[str, Any], config: dict[str, Any], path: str | Path) -> None:
    """Raise :class:`CheckpointError` naming every setting where the checkpoint and this run differ.

    The perception is compared by what it computes: a fixed bank by its operators (so ``perception=sobel3`` and a
    checkpoint that names the bank ``operators: sobel3`` match), any other perception by its settings."""
    saved = ckpt["hyper_parameters"]["config"]
    diffs = []
    for key in COMPATIBLE_KEYS:
        a, b = _select(saved, key), _select(config, key)
        if key == "perception":
            if _perception_identity(a) != _perception_identity(b):
                diffs.append(
                    f"  perception: checkpoint has {_describe_perception(a)}, this run has {_describe_perception(b)}"
                )
        elif a != b:
            diffs.append(f"  {key}: checkpoint has {a}, this run has {b}")
    for section, a_node, b_node in zip(
        ("optim", "schedule"), optim_settings(saved), optim_settings(config), strict=True
    ):
        if a_node["_target_"] != b_node["_target_"]:
            diffs.append(
                f"  {section}._target_: checkpoint has {a_node['_target_']}, this run has {b_node['_target_']} "
                f"(its state cannot carry over to another class)"
            )
    if diffs:
        example = _perception_override(saved.get("perception"))
        render = _select(saved, "render")
        if render != _select(config, "render") and isinstance(render, dict):
            example = " ".join(
                [f"render={render.get('name')}"]
                + [
                    f"render.{k}={v}"
                    for k, v in render.items()
                    if k != "name" and render.get("name") != "cells"
                ]
            )
        raise CheckpointError(
            f"ckpt_path={str(path)!r} does not match this run:\n"
            + "\n".join(diffs)
            + f"\nResume with the checkpoint's settings (e.g. {example}) or start a new run without ckpt_path."
        )


def _finite_number(value: Any) -> bool:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_training_state(ckpt: dict[str, Any], optimizer: Any, scheduler: Any, path: str | Path) -> None:
    """Raise :class:`CheckpointError` when the checkpoint's optimiser or schedule state does not fit this run's
    ``optimizer`` and ``scheduler`` (built for the model's parameters, then thrown away): each moment a tensor of
    its parameter's shape, every number finite. Said before training, in one line, rather than as PyTorch's error
    at the first step (or a NaN model) from a crafted or damaged file."""

    def fail(what: str) -> CheckpointError:
        return CheckpointError(f"ckpt_path={str(path)!r}: its {what}; the file was altered or is damaged")

    states, schedules = ckpt.get("optimizer_states"), ckpt.get("lr_schedulers")
    if not isinstance(states, list) or len(states) != 1 or not isinstance(states[0], dict):
        raise fail("optimiser state is not the one optimiser ncalab saves")
    try:
        optimizer.load_state_dict(states[0])
    except Exception as exc:  # noqa: BLE001 - torch's checks of the structure
        raise fail(
            f"optimiser state does not fit this run's optimiser ({type(exc).__name__}: {str(exc)[:200]})"
        ) from None
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for group in optimizer.param_groups:
        for key in ("lr", "eps", "weight_decay"):
            if key in group and not (_finite_number(group[key]) and float(group[key]) >= 0):
                raise fail(f"optimiser's {key} is {group[key]!r}, not a finite number >= 0")
        betas = group.get("betas", (0.0, 0.0))
        if not isinstance(betas, list | tuple) or not all(_finite_number(b) for b in betas):
            raise fail(f"optimiser's betas are {betas!r}")
    for param, state in optimizer.state.items():
        if not isinstance(state, dict):
            raise fail("optimiser state holds something that is not a parameter's state")
        for key, value in state.items():
            if key == "step":
                if not (_finite_number(value) and float(value) >= 0):
                    raise fail(f"optimiser's step count is {value!r}")
            elif (
                not isinstance(value, torch.Tensor)
                or value.shape != param.shape
                or not value.is_floating_point()
            ):
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise fail(f"optimiser's {key} is {shape} for a parameter of shape {tuple(param.shape)}")
            elif not bool(torch.isfinite(value).all()):
                raise fail(f"optimiser's {key} holds NaN or infinite values")
    if len(optimizer.state) > len(params):
        raise fail("optimiser state has more entries than the model has parameters")
    if schedules is None:
        return
    if not isinstance(schedules, list) or len(schedules) != 1 or not isinstance(schedules[0], dict):
        raise fail("learning-rate schedule state is not the one schedule ncalab saves")
    try:
        scheduler.load_state_dict(schedules[0])
    except Exception as exc:  # noqa: BLE001
        raise fail(f"schedule state does not fit ({type(exc).__name__}: {str(exc)[:200]})") from None
    numbers = [scheduler.__dict__.get("gamma", 1.0), *scheduler.__dict__.get("base_lrs", [])]
    numbers += list(scheduler.__dict__.get("_last_lr", []) or [])
    if not all(_finite_number(v) for v in numbers):
        raise fail("schedule holds a value that is not a finite number")
    last_epoch = scheduler.__dict__.get("last_epoch", 0)
    milestones = scheduler.__dict__.get("milestones", {})
    if not (isinstance(last_epoch, int) and not isinstance(last_epoch, bool)) or not all(
        isinstance(m, int) and not isinstance(m, bool) for m in milestones
    ):
        raise fail("schedule's step or milestones are not whole numbers")


def check_weights(ckpt: dict[str, Any], expected: dict[str, torch.Tensor], path: str | Path) -> None:
    """Raise :class:`CheckpointError` when the checkpoint's weights do not fit the model this run built (a key
    missing or unknown, a tensor of another shape): said before training starts, in one message, rather than as
    PyTorch's error from deep inside Lightning's restore."""
    saved = ckpt.get("state_dict")
    if not isinstance(saved, dict):
        raise CheckpointError(f"ckpt_path={str(path)!r} has no weights (state_dict)")
    problems = []
    missing = sorted(set(expected) - set(saved))
    unknown = sorted(set(saved) - set(expected))
    if missing:
        problems.append(f"missing {', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}")
    if unknown:
        problems.append(f"unknown {', '.join(map(str, unknown[:4]))}{', ...' if len(unknown) > 4 else ''}")
    for key, tensor in expected.items():
        value = saved.get(key)
        if key in saved and (not isinstance(value, torch.Tensor) or value.shape != tensor.shape):
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            problems.append(f"{key} is {shape} where this run's model has {tuple(tensor.shape)}")
    if problems:
        raise CheckpointError(
            f"ckpt_path={str(path)!r}: its weights do not fit this run's model ({'; '.join(problems[:6])}); "
            "the file was altered or written by another version of the model"
        )


def _check_plain(value: Any, where: str, path: str | Path) -> None:
    """Refuse anything in a checkpoint's config that is not plain data, and any interpolation (``${...}``):
    ncalab saves resolved configs, and a value read from a checkpoint is never resolved."""
    if isinstance(value, dict):
        for k, v in value.items():
            _check_plain(v, f"{where}.{k}" if where else str(k), path)
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]", path)
    elif isinstance(value, str):
        if "${" in value:
            raise CheckpointError(
                f"{str(path)!r}: the saved config has an interpolation at {where} ({value!r}); "
                "ncalab saves resolved configs, so this one was altered; refused"
            )
    elif value is not None and not isinstance(value, bool | int | float):
        raise CheckpointError(f"{str(path)!r}: the saved config holds a {type(value).__name__} at {where}")


def _keyword_args(cls: type, node: dict[str, Any], skip: set[str], where: str, path: str | Path) -> dict:
    """``node`` as keyword arguments of ``cls``, refusing keys it does not take and values that are neither
    scalars nor lists of scalars."""
    params = inspect.signature(cls.__init__).parameters
    accepted = {n for n, p in params.items() if n != "self" and p.kind is p.POSITIONAL_OR_KEYWORD} - skip
    kwargs = {}
    for key, value in node.items():
        if key == "_target_":
            continue
        if key not in accepted:
            raise CheckpointError(
                f"{str(path)!r}: {where}.{key} is not a setting of {cls.__name__} "
                f"(accepted: {', '.join(sorted(accepted))})"
            )
        plain = bool | int | float | str
        if isinstance(value, list) and all(isinstance(v, plain) for v in value):
            value = list(value)  # a list of plain values, e.g. a bank's ops
        elif value is not None and not isinstance(value, plain):
            raise CheckpointError(
                f"{str(path)!r}: {where}.{key} must be a plain value or a list of them, got {value!r}"
            )
        kwargs[key] = value
    return kwargs


def build_perception(config: dict[str, Any], path: str | Path) -> Perception:
    """The perception a saved run config describes, built from the known classes only (never instantiated
    through Hydra: a checkpoint cannot make this call anything it names)."""
    node = config.get("perception")
    if not isinstance(node, dict):
        raise CheckpointError(f"{str(path)!r}: the saved config has no perception")
    target = node.get("_target_")
    cls = PERCEPTION_CLASSES.get(target) if isinstance(target, str) else None
    if cls is None:
        raise CheckpointError(
            f"{str(path)!r}: perception._target_={target!r} is not an ncalab perception; "
            f"accepted: {', '.join(sorted(PERCEPTION_CLASSES))}"
        )
    kwargs = _keyword_args(cls, node, set(), "perception", path)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{str(path)!r}: the saved perception config does not build ({exc})") from exc


def load_nca(path: str | Path) -> tuple[NCA, dict[str, Any]]:
    """Rebuild the trained :class:`NCA` from a checkpoint alone; returns ``(nca, run config)``.

    Only tensors and plain values are read: the perception is one of :data:`PERCEPTION_CLASSES` built from
    its saved plain settings (scalars, and lists of them such as a fixed bank's ``ops``), nothing else named in
    the checkpoint is imported or called, and a config with an interpolation (``${...}``) or a Hydra key other
    than the perception's ``_target_`` is refused.
    """
    ckpt = read_checkpoint(path)
    config = ckpt["hyper_parameters"]["config"]
    _check_plain(config, "", path)
    perception = build_perception(config, path)
    state = {k.removeprefix("nca."): v for k, v in ckpt["state_dict"].items() if k.startswith("nca.")}
    saved_model = config.get("model")
    if not isinstance(saved_model, dict):
        raise CheckpointError(f"{str(path)!r}: the saved config has no model settings")
    target = saved_model.get("_target_", NCA_TARGETS[0])
    if target not in NCA_TARGETS:
        raise CheckpointError(
            f"{str(path)!r}: model._target_={target!r} is not ncalab's NCA; a checkpoint is read as "
            f"{NCA_TARGETS[0]} only"
        )
    model = _keyword_args(NCA, saved_model, {"perception", "render"}, "model", path)
    # Checkpoints written before model.update_bias existed always had the bias.
    model.setdefault("update_bias", "update.2.bias" in state)
    try:
        render = build_render(
            config.get("render"), saved_model.get("channels", 16), model.get("alive_threshold", 0.1)
        )
        nca = NCA(perception, render=render, **model)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{str(path)!r}: the saved model config does not build ({exc})") from exc
    try:
        nca.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{str(path)!r}: weights do not fit the saved config ({exc})") from exc
    return nca.eval(), config


# Saving: written beside the target, synced, then renamed over it.
TEMP_MARK = ".ncalab-tmp-"


def _temp_name(target: Path) -> Path:
    """``.<name>.ncalab-tmp-<host>-<pid>-<random>`` in the target's folder (hidden, and named so that stale
    ones of a killed save can be recognised and removed)."""
    host = socket.gethostname().replace("-", "_") or "host"
    return target.with_name(f".{target.name}{TEMP_MARK}{host}-{os.getpid()}-{secrets.token_hex(4)}")


def remove_stale_temp_files(target: str | Path) -> list[Path]:
    """Remove the temporary files that killed saves of ``target`` left behind (ours only: by name, and not
    those of a process on this host that is still alive)."""
    target = Path(target)
    host = socket.gethostname().replace("-", "_") or "host"
    removed = []
    for temp in target.parent.glob(f".{glob.escape(target.name)}{TEMP_MARK}*"):
        owner = temp.name.split(TEMP_MARK, 1)[1].split("-")
        try:
            pid = int(owner[1])
        except (IndexError, ValueError):
            continue
        if owner[0] == host and pid != os.getpid() and pid_alive(pid):
            continue  # another live process on this machine is writing it
        try:
            temp.unlink()
            removed.append(temp)
        except OSError:
            pass
    return removed


def atomic_torch_save(obj: Any, target: str | Path) -> None:
    """``torch.save(obj, target)`` such that ``target`` always holds either its old or its new complete content:
    the file is written in the target's folder (never under ``$TMPDIR``, which may be another filesystem, where a
    move is a copy that first empties the target, or too small), flushed and fsync'ed, then ``os.replace``d over
    the target. A failed or killed save leaves the old file as it was; its temporary file is removed on
    failure, or by the next save after a kill."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(target)
    temp = _temp_name(target)
    try:
        with open(temp, "xb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    # Make the rename itself durable (best effort: not every filesystem lets a folder be opened).
    with contextlib.suppress(OSError):
        fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer for every save of a run (``ModelCheckpoint``, ``FinalCheckpoint``,
    ``trainer.save_checkpoint``): local paths go through :func:`atomic_torch_save`; remote URLs (``s3://``...)
    keep Lightning's own path."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        text = str(path)
        if "://" in text and not text.startswith("file://"):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError("storage_options are not supported for local checkpoints")
        atomic_torch_save(checkpoint, text.removeprefix("file://"))
