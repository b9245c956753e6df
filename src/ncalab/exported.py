"""Rebuild an NCA from an exported model folder (``model.json`` + ``model.bin``, as ``python -m ncalab.demo export``
writes it), from the stored tensors alone.

Nothing named in the files is imported or instantiated: the perception is a fixed depthwise convolution with the
stored ``kernels`` and per-response ``scale`` (exactly what the model applied when it was exported, whichever
perception it was trained with), or, where ``model.json``'s perception gives ``levels`` and ``upsample``, a
multi-scale perception reading the stored bank ``kernels`` at those levels
(:class:`ncalab.perception.MultiScalePerception` built from the tensors); the update network is the stored
``w1``/``b1``/``w2``/``b2``. The folder's
``model.json`` also holds the run's config (``config``: data, rollout, ...), which is what evaluation reads.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ncalab.errors import NCALabError
from ncalab.nca import NCA
from ncalab.perception import MultiScalePerception, Perception
from ncalab.render import build_render, decoder_tensors, load_decoder_tensors

__all__ = ["MODEL_FORMAT", "ModelFolderError", "StoredPerception", "is_model_folder", "load_model_folder"]

MODEL_FORMAT = "ncalab-demo/1"  # ncalab.demo.FORMAT: the layout this reader understands
TENSORS = ("kernels", "scale", "w1", "b1", "w2", "b2")


class ModelFolderError(NCALabError, ValueError):
    """An exported model folder that is missing, incomplete or inconsistent."""


class StoredPerception(Perception):
    """Identity + stored depthwise operator kernels (``C*n_ops x 1 x k x k``) times a stored per-response scale.

    The perception contract of :class:`ncalab.perception.Perception` filled from the files: ``operator_weight``
    is the stored kernels, ``response_scale`` the stored scale (None when it is all ones), so the NCA's fast path
    applies it exactly as it applied the perception the model was trained with. ``name`` and ``ops`` are the
    labels ``model.json`` gives (nothing is looked up by them).
    """

    def __init__(
        self,
        kernels: torch.Tensor,
        scale: torch.Tensor,
        channels: int,
        name: str | None = None,
        ops: tuple[str, ...] = (),
    ):
        n, one, k, k2 = kernels.shape
        if one != 1 or k != k2 or n % channels:
            raise ValueError(
                f"kernels of shape {tuple(kernels.shape)} are not a depthwise weight for {channels} channels"
            )
        if scale.shape != (n,):
            raise ValueError(f"scale has shape {tuple(scale.shape)}, expected ({n},)")
        if ops and len(ops) != n // channels:
            raise ValueError(f"model.json names {len(ops)} operators, the kernels hold {n // channels}")
        super().__init__(channels, n_ops=n // channels, kernel_size=k, name=name or "stored")
        self.ops = tuple(ops)
        self.register_buffer("weight", kernels.detach().clone().float())
        self.register_buffer("scale", scale.detach().clone().float())
        # Unscaled perceptions store ones: skip the multiply (the result is the same, bit for bit).
        self.unit_scale = bool((self.scale == 1).all())

    def operator_weight(self) -> torch.Tensor:
        return self.weight

    def response_scale(self) -> torch.Tensor | None:
        return None if self.unit_scale else self.scale


def is_model_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding ``model.json`` (or is that ``model.json``)."""
    path = Path(path).expanduser()
    return (path.is_dir() and (path / "model.json").is_file()) or (
        path.name == "model.json" and path.is_file()
    )


def _fail(folder: Path, what: str) -> ModelFolderError:
    return ModelFolderError(
        f"{str(folder)!r}: {what} (expected a model folder written by `python -m ncalab.demo export`)"
    )


def _read_meta(folder: Path) -> dict[str, Any]:
    meta_path = folder / "model.json"
    if not folder.is_dir():
        raise _fail(folder, "no such folder")
    if not meta_path.is_file():
        raise _fail(folder, "no model.json in it")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise _fail(
            folder, f"model.json is not readable JSON ({type(exc).__name__}: {str(exc)[:200]})"
        ) from exc
    if not isinstance(meta, dict):
        raise _fail(folder, "model.json does not hold an object")
    if meta.get("format") != MODEL_FORMAT:
        raise _fail(
            folder, f"model.json has format {meta.get('format')!r}, this reader knows {MODEL_FORMAT!r}"
        )
    if meta.get("dtype", "float32") != "float32" or meta.get("byte_order", "little") != "little":
        raise _fail(
            folder, f"weights are {meta.get('dtype')} {meta.get('byte_order')}-endian, not float32 little"
        )
    return meta


def _read_tensors(
    folder: Path, meta: dict[str, Any], keys: tuple[str, ...] = TENSORS
) -> dict[str, torch.Tensor]:
    name = meta.get("weights", "model.bin")
    if not isinstance(name, str) or not name or Path(name).name != name:
        raise _fail(folder, f"model.json names weights file {name!r}, not a file name in the folder")
    weights = folder / name
    try:
        blob = weights.read_bytes()
    except OSError as exc:
        raise _fail(folder, f"cannot read {name} ({type(exc).__name__}: {exc.strerror or exc})") from exc
    if len(blob) % 4:
        raise _fail(folder, f"{name} holds {len(blob)} bytes, not a whole number of float32 values")
    values = np.frombuffer(blob, dtype="<f4")
    n_floats = meta.get("n_floats")
    if n_floats is not None and n_floats != values.size:
        raise _fail(folder, f"{name} holds {values.size} float32 values, model.json says {n_floats}")
    table = meta.get("tensors")
    if not isinstance(table, dict):
        raise _fail(folder, "model.json has no tensor table ('tensors')")
    tensors = {}
    for key in keys:
        entry = table.get(key)
        try:
            offset = int(entry["offset"])
            shape = [int(s) for s in entry["shape"]]
        except (TypeError, KeyError, ValueError) as exc:
            raise _fail(folder, f"model.json has no valid entry for tensor {key!r}") from exc
        size = math.prod(shape)
        if offset < 0 or min(shape, default=1) < 1 or offset + size > values.size:
            raise _fail(folder, f"tensor {key!r} (offset {offset}, shape {shape}) lies outside {name}")
        t = torch.from_numpy(values[offset : offset + size].astype(np.float32)).reshape(shape)
        if not torch.isfinite(t).all():
            raise _fail(folder, f"tensor {key!r} holds non-finite values")
        tensors[key] = t
    return tensors


def _stored_multiscale(
    described: dict[str, Any], kernels: torch.Tensor, scale: torch.Tensor, channels: int, ops: tuple[str, ...]
) -> MultiScalePerception:
    """The multi-scale perception ``model.json`` describes (``levels``, ``upsample``), reading the stored bank
    ``kernels`` (``C*n_bank x 1 x k x k``); its responses carry no scale (the stored one must be all ones)."""
    levels, upsample, name = described.get("levels"), described.get("upsample"), described.get("name")
    if isinstance(levels, bool) or not isinstance(levels, int) or not isinstance(upsample, str):
        raise ValueError(
            f"model.json's multi-scale perception has levels={levels!r}, upsample={upsample!r}: "
            "an integer and a mode are expected"
        )
    perception = MultiScalePerception(
        channels, levels, ops or None, upsample, name=str(name) if name else None, kernels=kernels
    )
    if scale.shape != (perception.channels * perception.n_ops,) or not bool((scale == 1).all()):
        raise ValueError(
            f"a multi-scale perception stores ones as its scale ({perception.channels * perception.n_ops} of "
            f"them), this one has {tuple(scale.shape)} values, not all 1"
        )
    return perception


def load_model_folder(path: str | Path) -> tuple[NCA, dict[str, Any]]:
    """Rebuild the exported :class:`NCA` (in eval mode, fp32, on the CPU); returns ``(nca, model.json)``.

    ``path`` is the folder or its ``model.json``. The run's config is ``meta["config"]``. Raises
    :class:`ModelFolderError` naming the folder when anything is missing or does not fit together.
    """
    folder = Path(path).expanduser()
    if folder.name == "model.json" and folder.is_file():
        folder = folder.parent
    meta = _read_meta(folder)
    t = _read_tensors(folder, meta)
    try:
        channels = int(meta["channels"])
        fire_rate = float(meta.get("fire_rate", 0.5))
        alive_threshold = float(meta.get("alive_threshold", 0.1))
    except (KeyError, TypeError, ValueError) as exc:
        raise _fail(folder, f"model.json lacks a valid {exc}") from exc
    kernels, scale, w1, b1, w2, b2 = (t[k] for k in TENSORS)
    described = meta.get("perception")
    described = described if isinstance(described, dict) else {}
    name = described.get("name")  # labels only, never looked up
    ops = described.get("ops")
    ops = tuple(ops) if isinstance(ops, list) and all(isinstance(o, str) for o in ops) else ()
    try:
        if "levels" in described or "upsample" in described:
            perception = _stored_multiscale(described, kernels, scale, channels, ops)
        else:
            perception = StoredPerception(kernels, scale, channels, name=str(name) if name else None, ops=ops)
        hidden = w1.shape[0]
        expected = {
            "w1": (hidden, perception.out_channels),
            "b1": (hidden,),
            "w2": (channels, hidden),
            "b2": (channels,),
        }
        for key, shape in expected.items():
            if tuple(t[key].shape) != shape:
                raise ValueError(f"tensor {key!r} has shape {tuple(t[key].shape)}, expected {shape}")
        # A zero b2 is a model without last-layer bias (what the exporter writes for it).
        nca = NCA(
            perception,
            channels=channels,
            hidden=hidden,
            fire_rate=fire_rate,
            alive_threshold=alive_threshold,
            update_bias=bool(b2.any()),
        )
    except ValueError as exc:
        raise _fail(folder, str(exc)) from exc
    render_node = meta.get("render")
    if render_node is not None and render_node != {"name": "cells", "scale": 1}:
        try:
            render = build_render(render_node, channels, alive_threshold)
            names = tuple(decoder_tensors(render))
            load_decoder_tensors(render, _read_tensors(folder, meta, names))
        except ModelFolderError:
            raise
        except (NCALabError, ValueError) as exc:
            raise _fail(folder, f"its renderer ({render_node!r}) does not build: {exc}") from exc
        nca.render = render.eval()
    with torch.no_grad():
        first, last = nca.update[0], nca.update[2]
        first.weight.copy_(w1.view(hidden, perception.out_channels, 1, 1))
        first.bias.copy_(b1)
        last.weight.copy_(w2.view(channels, hidden, 1, 1))
        if last.bias is not None:
            last.bias.copy_(b2)
    return nca.eval(), meta
