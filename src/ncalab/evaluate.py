"""Evaluate a trained NCA: quality, persistence (how long the pattern holds) and regeneration.

    python -m ncalab.evaluate PATH [--rollouts 4] [--long-run 500,1000,2000] [--video]

PATH is a ``.ckpt`` written by ncalab or an exported model folder (``model.json`` + ``model.bin``, as written by
``python -m ncalab.demo export``). Prints one JSON object (a short table goes to stderr) and writes it beside the
checkpoint (``<checkpoint stem>.eval.json``) or into the folder (``<folder>/evaluation.json``).

The same measurement (:func:`measure_nca`) runs at the end of every training run; ``evaluation.json``,
``summary.json``, ``final.png``, the loggers' summaries, ``python -m ncalab.compare`` and the sweep objective all
read its result (its keys are listed in :mod:`ncalab.runs.folder`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ncalab.errors import NCALabError, TargetError
from ncalab.media import (
    REGIONS,
    cell_box,
    cut_region,
    eval_mode,
    frames_uint8,
    record_rollout,
    write_video,
)
from ncalab.metrics import per_sample_loss, psnr, ssim
from ncalab.nca import ALPHA, NCA, to_rgb
from ncalab.runs import folder as run_folder
from ncalab.targets import load_target, seed_shift

__all__ = [
    "GROWN_MIN_GAIN_DB",
    "HOLD_FACTOR",
    "LONG_RUN_STEPS",
    "RECOVERY_FACTOR",
    "EvaluationError",
    "Measurement",
    "evaluate_checkpoint",
    "evaluate_model",
    "evaluate_nca",
    "compare_at_size",
    "format_evaluation",
    "holds_steps",
    "load_model",
    "long_run",
    "measure_nca",
    "parse_steps",
]

LONG_RUN_STEPS = (500, 1000, 2000)
# The most steps one measurement runs (a long-run mark, a horizon, grow/regrow steps): about 20 minutes of a 24 px
# model on one CPU core. A longer count is refused with one line instead of running silently for hours.
MAX_STEPS = 1_000_000
# A long run says how far it is every PROGRESS_EVERY_S seconds (INFO on the "ncalab" logger).
PROGRESS_EVERY_S = 10.0
_PROGRESS_CHUNK = 500
log = logging.getLogger("ncalab")
# Persistence: the pattern holds at a check while its loss is at most HOLD_FACTOR x the loss at the horizon.
HOLD_FACTOR = 2.0
# Regeneration: a cut is recovered once the loss is back within RECOVERY_FACTOR x the reference loss: the
# undamaged pattern's, or the loss at the horizon when that is higher (a model that keeps refining its pattern
# past the horizon would otherwise have to regrow a cut to better than it grows from the seed: 1.5 x 0.0001).
# The cut itself must have raised the loss above that threshold, or there was nothing to recover from.
RECOVERY_FACTOR = 1.5
# Regeneration needs a grown pattern to cut: the undamaged pattern's PSNR (RGBA composited on white, against the
# target) must be at least this many dB above an empty grid's, i.e. its squared error at most a tenth of an empty
# grid's. Relative to the empty grid, not an absolute dB value, because empty padding scores for free: an empty
# grid already reaches 15-17 dB against the flower targets (more with more padding), so "20 dB" would be only a
# few dB above nothing there, while on a full-frame target (mosaic: 5 dB empty) it would be a different bar.
GROWN_MIN_GAIN_DB = 10.0


class EvaluationError(NCALabError, ValueError):
    """A model or setting that cannot be evaluated (the message names the path or value)."""


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def parse_steps(text: str | Iterable[int]) -> tuple[int, ...]:
    """Check steps: ``"500,2000,10000"`` or a sequence of ints -> sorted, distinct, positive ints.

    Raises ``ValueError`` with a message naming the bad item.
    """
    items = [s.strip() for s in text.split(",")] if isinstance(text, str) else list(text)
    steps = []
    for item in items:
        if isinstance(item, bool):
            raise ValueError(f"{item!r} is not a step count")
        try:
            value = int(item)
        except (TypeError, ValueError):
            raise ValueError(f"{item!r} is not a whole number of steps") from None
        if isinstance(item, float) and item != value:
            raise ValueError(f"{item!r} is not a whole number of steps")
        if value < 1:
            raise ValueError(f"{value} is not a positive number of steps")
        if value > MAX_STEPS:
            raise ValueError(f"{value} is more than the {MAX_STEPS:,} steps a measurement may run")
        steps.append(value)
    if not steps:
        raise ValueError("no steps given (expected e.g. 500,1000,2000)")
    return tuple(sorted(set(steps)))


def holds_steps(
    checks: Iterable[tuple[int, float | None]], reference_loss: float, factor: float = HOLD_FACTOR
) -> int:
    """How many steps the pattern holds: the largest checked step ``s`` such that every check at or before ``s``
    has a finite loss ``<= factor * reference_loss``; 0 when the first check fails. ``None`` = a failed check."""
    bound = factor * reference_loss
    held = 0
    for step, loss in sorted(checks, key=lambda c: c[0]):
        if loss is None or not math.isfinite(loss) or not math.isfinite(bound) or loss > bound:
            break
        held = step
    return held


@torch.no_grad()
def long_run(
    nca: NCA,
    x0: torch.Tensor,
    target: torch.Tensor,
    steps: Iterable[int],
    horizon_loss: float,
    factor: float = HOLD_FACTOR,
    seed: int = 0,
) -> dict[str, Any]:
    """Run ``x0`` (``B x C x H x W``) and check the loss against ``target`` (``4 x H x W`` or ``1 x 4 x H x W``)
    at each of ``steps`` (counted from ``x0``); the fire masks are seeded by ``seed``.

    Returns ``loss`` (step -> loss, ``None`` when not finite), ``non_finite`` (whether any checked state held a
    NaN/inf), ``holds_steps`` (see :func:`holds_steps`; a non-finite state fails its check), ``hold_factor`` and
    ``reference_loss`` (= ``horizon_loss``).
    """
    target = target if target.dim() == 4 else target.unsqueeze(0)
    target = target.to(x0.device)
    marks = parse_steps(steps)
    losses: dict[str, float | None] = {}
    trace: dict[str, dict[str, float | None]] = {}
    checks: list[tuple[int, float | None]] = []
    non_finite = False
    x, done = x0, 0
    started = last_said = time.monotonic()
    with torch.random.fork_rng(devices=[x0.device] if x0.device.type == "cuda" else []):
        torch.manual_seed(seed)
        for mark in marks:
            while done < mark:  # in chunks, to say how far it is (the same steps as one rollout)
                n = min(mark - done, _PROGRESS_CHUNK)
                x = nca.rollout(x, n)
                done += n
                now = time.monotonic()
                if now - last_said >= PROGRESS_EVERY_S:
                    log.info("long run: step %d of %d (%.0f s)", done, marks[-1], now - started)
                    last_said = now
            finite = bool(torch.isfinite(x).all())
            non_finite = non_finite or not finite
            image = nca.render(x)
            loss = _finite(float(per_sample_loss(image, target).mean()))
            losses[str(mark)] = loss
            trace[str(mark)] = shape_trace(image, x, target)
            checks.append((mark, loss if finite else None))
    return {
        "loss": losses,
        "non_finite": non_finite,
        "holds_steps": holds_steps(checks, horizon_loss, factor),
        "hold_factor": factor,
        "reference_loss": _finite(horizon_loss),
        "trace": trace,
    }


def shape_trace(image: torch.Tensor, x: torch.Tensor, target: torch.Tensor) -> dict[str, float | None]:
    """How a pattern differs from its target, to tell slow failures apart (means over the batch):

    - ``excess``: alpha drawn above the target's, summed over pixels (``max(alpha - target, 0)``): growth or drift
      out of the shape;
    - ``missing``: alpha missing below the target's, summed (``max(target - alpha, 0)``): holes, or the shape
      leaving;
    - ``hidden_max``: the largest absolute value of a hidden channel: hidden-state drift.

    A pattern that moves shows ``excess`` and ``missing`` growing together; an edge that creeps, ``excess`` alone;
    hidden drift, ``hidden_max`` growing before the rest."""
    alpha = image[:, ALPHA].clamp(0.0, 1.0)
    wanted = target[:, ALPHA]
    hidden = x[:, ALPHA + 1 :]
    return {
        "excess": _finite(float((alpha - wanted).clamp(min=0.0).sum(dim=(1, 2)).mean())),
        "missing": _finite(float((wanted - alpha).clamp(min=0.0).sum(dim=(1, 2)).mean())),
        "hidden_max": _finite(float(hidden.abs().max())) if hidden.numel() else 0.0,
    }


@dataclass
class Measurement:
    """What :func:`measure_nca` found: the JSON-ready ``result`` and the ``grown`` states it measured at the
    horizon (``rollouts x C x H x W``; ``final.png`` shows the first)."""

    result: dict[str, Any]
    grown: torch.Tensor
    image: torch.Tensor  # the grown states drawn by the model's renderer (rollouts x 4 x image H x image W)


@torch.no_grad()
def measure_nca(
    nca: NCA,
    target: torch.Tensor,
    horizon: int,
    rollouts: int = 4,
    seed: int = 0,
    long_run_steps: Iterable[int] = LONG_RUN_STEPS,
    grow_steps: int = 200,
    regrow_steps: int = 200,
    recovery_factor: float = RECOVERY_FACTOR,
    hold_factor: float = HOLD_FACTOR,
    grown_min_gain_db: float = GROWN_MIN_GAIN_DB,
    video_dir: Path | None = None,
    fps: int = 24,
) -> Measurement:
    """All numbers for ``nca`` against ``target`` (``4 x H x W``); stochastic parts are seeded by ``seed``.

    - ``loss``/``psnr``/``ssim`` after ``horizon`` steps from the seed, averaged over ``rollouts`` rollouts;
    - ``long_run``: one rollout from the seed, the loss at each of ``long_run_steps``, ``non_finite``, and
      ``holds_steps`` (the pattern holds while its loss stays within ``hold_factor`` x ``loss``);
    - ``regeneration``: grow ``grow_steps``, cut each region, regrow ``regrow_steps``: the loss then and the steps
      until the loss is back within ``recovery_factor`` x the undamaged loss, or x the horizon ``loss`` when that
      is higher (``recovery_threshold``; ``None`` = never). A cut counts as
      ``regrown`` only when a pattern was ``grown`` (see ``GROWN_MIN_GAIN_DB``), the cut raised the loss above
      that threshold (``damaged``) and the loss came back under it and is still under it after ``regrow_steps``;
      ``regeneration.regrown`` counts them.
    """
    if horizon < 0 or rollouts < 1 or grow_steps < 0 or regrow_steps < 1:
        raise ValueError(
            f"need horizon >= 0, rollouts >= 1, grow_steps >= 0, regrow_steps >= 1; got {horizon}, {rollouts}, "
            f"{grow_steps}, {regrow_steps}"
        )
    marks = parse_steps(long_run_steps)
    with eval_mode(nca):
        return _measure(
            nca,
            target,
            horizon,
            rollouts,
            seed,
            marks,
            grow_steps,
            regrow_steps,
            recovery_factor,
            hold_factor,
            grown_min_gain_db,
            video_dir,
            fps,
        )


def evaluate_nca(nca: NCA, target: torch.Tensor, horizon: int, **kwargs: Any) -> dict[str, Any]:
    """:func:`measure_nca`'s ``result`` (same arguments)."""
    return measure_nca(nca, target, horizon, **kwargs).result


def _measure(
    nca: NCA,
    target: torch.Tensor,
    horizon: int,
    rollouts: int,
    seed: int,
    long_run_steps: tuple[int, ...],
    grow_steps: int,
    regrow_steps: int,
    recovery_factor: float,
    hold_factor: float,
    grown_min_gain_db: float,
    video_dir: Path | None,
    fps: int,
) -> Measurement:
    device = next(nca.parameters()).device
    target = target.to(device).unsqueeze(0)
    render, scale = nca.render, nca.render.scale  # the image is drawn `scale` pixels per cell side
    h, w = target.shape[-2] // scale, target.shape[-1] // scale
    target_rgb = to_rgb(target)

    grown, _ = record_rollout(nca, nca.seed(rollouts, h, w), horizon, frame_every=max(horizon, 1), seed=seed)
    image = render(grown)
    grown_rgb = to_rgb(image)
    loss = float(per_sample_loss(image, target).mean())
    result: dict[str, Any] = {
        "horizon": horizon,
        "rollouts": rollouts,
        "loss": loss,
        "psnr": sum(psnr(grown_rgb[i : i + 1], target_rgb) for i in range(rollouts)) / rollouts,
        "ssim": ssim(grown_rgb, target_rgb),
    }

    # Persistence: one rollout from the seed, checked at each requested step against the horizon loss.
    result["long_run"] = long_run(nca, nca.seed(1, h, w), target, long_run_steps, loss, hold_factor, seed)

    # Regeneration after the Distill protocol, counted only for a grown pattern and a cut that did damage.
    base, growth = record_rollout(nca, nca.seed(1, h, w), grow_steps, seed=seed)
    base_image = render(base)
    base_loss = float(per_sample_loss(base_image, target).mean())
    base_psnr = psnr(to_rgb(base_image), target_rgb)
    grown_min = psnr(to_rgb(torch.zeros_like(target)), target_rgb) + grown_min_gain_db
    is_grown = bool(torch.isfinite(base).all()) and math.isfinite(base_loss) and base_psnr >= grown_min
    video_scale = max(1, 4 // scale)  # videos about 4 pixels per cell
    reference = max(base_loss, loss)  # the undamaged pattern, but no stricter than growth from the seed
    threshold = recovery_factor * reference
    regeneration: dict[str, Any] = {
        "grow_steps": grow_steps,
        "regrow_steps": regrow_steps,
        "recovery_factor": recovery_factor,
        "recovery_reference_loss": _finite(reference),
        "recovery_threshold": _finite(threshold),
        "undamaged_loss": _finite(base_loss),
        "undamaged_psnr": base_psnr if not math.isnan(base_psnr) else None,
        "grown_psnr_min": grown_min,
        "grown": is_grown,
    }
    regrown = 0
    box = cell_box(target, scale)
    regeneration["pattern_box"] = list(
        box
    )  # top, bottom, left, right (cells): the centre cut is half its size
    for region in REGIONS:
        damaged = cut_region(base, region, box)
        _, frames = record_rollout(nca, damaged, regrow_steps, seed=seed + 1)
        curve = [
            float(per_sample_loss(render(f), target).mean()) for f in frames
        ]  # frame i: after i regrow steps
        recovered = next((i for i, v in enumerate(curve) if i > 0 and v <= threshold), None)
        hit = curve[0] > threshold  # False for NaN: a cut into a non-finite state is no damage to measure
        # Back under the threshold at some step and still there at the end (not a pass on the way to collapse).
        ok = is_grown and hit and recovered is not None and curve[-1] <= threshold
        regrown += ok
        regeneration[region] = {
            "damaged_loss": _finite(curve[0]),
            "loss": _finite(curve[-1]),
            "steps_to_recover": recovered,
            "damaged": hit,
            "regrown": ok,
        }
        if video_dir is not None:
            drawn = [render(f) for f in growth + frames]
            write_video(frames_uint8(drawn, video_scale), video_dir / f"regeneration_{region}.mp4", fps)
    regeneration["regrown"] = regrown
    result["regeneration"] = regeneration
    if video_dir is not None:
        write_video(frames_uint8([render(f) for f in growth], video_scale), video_dir / "growth.mp4", fps)
    return Measurement(result, grown, image)


def compare_at_size(image: torch.Tensor, data: dict[str, Any], cell: int, size: int) -> dict[str, Any]:
    """PSNR/SSIM of a model's drawn ``image`` (``B x 4 x H x W``, premultiplied) against its target drawn at
    ``size`` x ``size`` px, so that models of one image trained at different sizes or renderings compare on one
    scale: the square the target was fitted into (``data.target_size`` px, after :func:`seed_shift`) is cut from
    the image and resized to ``size`` px (bilinear, antialiased: a per-cell 48 px model is upscaled, a 128 px
    decoder model is compared as drawn); the reference is the target file fitted at ``size`` px, not an upscaled
    copy of the training target. Both composited on white."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2.functional import resize

    target, fitted, padding = str(data["target"]), int(data["target_size"]), int(data["padding"])
    try:
        padded = load_target(target, fitted, padding, bool(data.get("allow_upscale", False)), cell=cell)
        dy, dx = seed_shift(padded, target, cell) if data.get("seed_on_pattern", False) else (0, 0)
    except TargetError as exc:
        raise EvaluationError(f"comparing at {size} px: {exc}") from exc
    try:
        reference = load_target(target, size, 0).unsqueeze(0)
    except (
        TargetError
    ) as exc:  # the file is smaller than the size asked for: there is nothing to compare with
        raise EvaluationError(
            f"comparing at {size} px: the target {target!r} is smaller than {size} px; compare at its own size "
            "or less"
        ) from exc
    top, left = padding + dy * cell, padding + dx * cell
    crop = image[..., top : top + fitted, left : left + fitted].float()
    if fitted != size:
        crop = resize(crop, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)
    rgb, ref = to_rgb(crop), to_rgb(reference.to(crop.device))
    n = rgb.shape[0]
    return {
        "size": size,
        "from_size": fitted,
        "psnr": sum(psnr(rgb[i : i + 1], ref) for i in range(n)) / n,
        "ssim": ssim(rgb, ref),
    }


# --------------------------------------------------------------------------------------------- models on disk


def load_model(path: str | Path) -> tuple[NCA, dict[str, Any], dict[str, Any]]:
    """The NCA of a ``.ckpt`` or an exported model folder; returns ``(nca, run config, info)``.

    ``info`` has ``model`` (the path), ``kind`` (``checkpoint`` or ``folder``) and ``perception`` (its name).
    """
    from ncalab.exported import is_model_folder, load_model_folder

    path = Path(path).expanduser()
    if path.is_dir() or is_model_folder(path):
        nca, meta = load_model_folder(path)
        config = meta.get("config")
        perception = meta.get("perception")
        name = perception.get("name") if isinstance(perception, dict) else None
        kind = "folder"
    elif path.exists():
        from ncalab.checkpoint import load_nca

        nca, config = load_nca(path)
        name = (config.get("perception") or {}).get("name")
        kind = "checkpoint"
    else:
        raise EvaluationError(
            f"{str(path)!r}: no such file or folder (expected a .ckpt written by ncalab, or a model folder "
            "with model.json + model.bin written by `python -m ncalab.demo export`)"
        )
    if not isinstance(config, dict):
        raise EvaluationError(f"{str(path)!r}: no run config saved with the model")
    return nca, config, {"model": str(path), "kind": kind, "perception": name}


def _target_and_horizon(config: dict[str, Any], path: str | Path) -> tuple[torch.Tensor, int]:
    try:
        data = config["data"]
        target, size, padding = str(data["target"]), int(data["target_size"]), int(data["padding"])
        upscale = bool(data.get("allow_upscale", False))
        # Runs from before data.seed_on_pattern trained on the image centred as it was.
        on_seed = bool(data.get("seed_on_pattern", False))
        horizon = int(config["rollout"]["max_steps"])
        render = config.get("render") or {}
        cell = int(render.get("scale", 1)) if isinstance(render, dict) else 1
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise EvaluationError(
            f"{str(path)!r}: the saved run config lacks data.target/target_size/padding or rollout.max_steps "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    if not 1 <= horizon <= MAX_STEPS:
        raise EvaluationError(
            f"{str(path)!r}: the saved rollout.max_steps={horizon} is outside 1..{MAX_STEPS:,} "
            "(the steps a measurement may run)"
        )
    return load_target(target, size, padding, upscale, on_seed, cell=cell), horizon


def evaluate_model(
    path: str | Path,
    rollouts: int = 4,
    seed: int = 0,
    video: bool = False,
    at_size: int | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Evaluate the model of a ``.ckpt`` or an exported model folder against the target it was trained on, for
    the horizon it was trained for (``rollout.max_steps``). ``kwargs`` go to :func:`measure_nca`
    (``long_run_steps``, ``grow_steps``, ``regrow_steps``, ...). Videos go to ``<stem>_videos/`` beside a
    checkpoint, ``<folder>/evaluation_videos/`` in a folder. ``at_size``: also PSNR/SSIM against the target
    drawn at that many pixels (:func:`compare_at_size`), as ``at_size``."""
    nca, config, info = load_model(path)
    target, horizon = _target_and_horizon(config, path)
    video_dir = None
    if video:
        p = Path(info["model"])
        video_dir = p / "evaluation_videos" if info["kind"] == "folder" else p.parent / f"{p.stem}_videos"
    measured = measure_nca(nca, target, horizon, rollouts=rollouts, seed=seed, video_dir=video_dir, **kwargs)
    result = measured.result
    if at_size is not None:
        result["at_size"] = compare_at_size(measured.image, config["data"], nca.render.scale, at_size)
    return {**info, **result}


evaluate_checkpoint = evaluate_model  # the earlier name; takes folders too


def default_output(path: str | Path) -> Path:
    """Where the CLI writes the JSON: ``<folder>/evaluation.json`` or ``<checkpoint stem>.eval.json``."""
    path = Path(path).expanduser()
    if path.is_dir():
        return path / run_folder.EVALUATION_FILE
    if path.name == "model.json":
        return path.parent / run_folder.EVALUATION_FILE
    return path.with_suffix(".eval.json")


# --------------------------------------------------------------------------------------------- text


def _fmt(value: Any, spec: str = ".4g") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return format(value, spec)


def format_evaluation(result: dict[str, Any]) -> str:
    """A short plain-text account of a result of :func:`measure_nca` (what the CLI prints to stderr)."""
    lines = [
        f"after {result['horizon']} steps from the seed ({result['rollouts']} rollouts): loss {_fmt(result['loss'])}, "
        f"psnr {_fmt(result['psnr'], '.2f')} dB, ssim {_fmt(result['ssim'], '.3f')}"
    ]
    lr = result["long_run"]
    ref = lr.get("reference_loss")
    bound = None if ref is None else lr["hold_factor"] * ref
    lines.append(f"persistence: holds while loss <= {lr['hold_factor']:g} x {_fmt(ref)} = {_fmt(bound)}")
    lines.append(
        f"  {'step':>8}  {'loss':>10}  {'x horizon':>9}  holds  {'excess':>8}  {'missing':>8}  |hidden|"
    )
    still = True
    trace = lr.get("trace") or {}
    for step, loss in sorted(lr["loss"].items(), key=lambda kv: int(kv[0])):
        ratio = loss / ref if loss is not None and ref else None
        still = still and int(step) <= lr["holds_steps"]
        t = trace.get(step) or {}
        lines.append(
            f"  {step:>8}  {_fmt(loss):>10}  {_fmt(ratio, '.2f'):>9}  {'yes' if still else 'no ':<5}  "
            f"{_fmt(t.get('excess'), '.1f'):>8}  {_fmt(t.get('missing'), '.1f'):>8}  {_fmt(t.get('hidden_max'), '.2f')}"
        )
    lines.append(
        f"  holds_steps: {lr['holds_steps']}" + ("  (a state went non-finite)" if lr["non_finite"] else "")
    )
    rg = result["regeneration"]
    lines.append(
        f"regeneration: grown {rg['grow_steps']} steps: psnr {_fmt(rg['undamaged_psnr'], '.2f')} dB, grown needs "
        f">= {_fmt(rg['grown_psnr_min'], '.2f')} dB -> {'grown' if rg['grown'] else 'NOT grown (no cut counts)'}"
    )
    lines.append(f"  {'region':<7}  {'loss cut':>10}  {'loss after':>10}  {'steps':>5}  regrown")
    for region in REGIONS:
        r = rg[region]
        lines.append(
            f"  {region:<7}  {_fmt(r['damaged_loss']):>10}  {_fmt(r['loss']):>10}  "
            f"{_fmt(r['steps_to_recover'], 'd'):>5}  {'yes' if r['regrown'] else 'no'}"
        )
    lines.append(f"  regrown: {rg['regrown']}/{len(REGIONS)}")
    at = result.get("at_size")
    if at:
        lines.append(
            f"at {at['size']} px (the {at['from_size']} px image resized): psnr {_fmt(at['psnr'], '.2f')} dB, "
            f"ssim {_fmt(at['ssim'], '.3f')}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- CLI


def _steps_arg(text: str) -> tuple[int, ...]:
    try:
        return parse_steps(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r}: {exc}; expected positive step counts like 500,1000,2000"
        ) from None


def _count_arg(minimum: int, maximum: int = MAX_STEPS):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}")
        if value > maximum:
            raise argparse.ArgumentTypeError(f"{value} is more than the limit of {maximum:,}")
        return value

    return parse


MAX_SEED = 2**63 - 1  # torch's generators take a signed 64-bit seed
MAX_ROLLOUTS = 1024  # rollouts run as one batch


def _seed_arg(text: str) -> int:
    value = _count_arg(0, maximum=2**64)(text)
    if value > MAX_SEED:
        raise argparse.ArgumentTypeError(f"{value} is above {MAX_SEED}")
    return value


def output_problem(out: Path) -> str | None:
    """Why the result could not be written to ``out`` (checked before the evaluation runs), or None."""
    if out.is_dir():
        return f"--output {out} is a directory; give a file name such as {out / run_folder.EVALUATION_FILE}"
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent  # the folders that do not exist yet are created
    if not parent.is_dir():
        return f"cannot write {out}: {parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot write {out}: {parent} is not writable"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ncalab.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument(
        "path", help="a .ckpt written by ncalab, or an exported model folder (model.json + model.bin)"
    )
    parser.add_argument(
        "--rollouts",
        type=_count_arg(1, MAX_ROLLOUTS),
        default=4,
        help="stochastic rollouts averaged for psnr/ssim/loss",
    )
    parser.add_argument("--seed", type=_seed_arg, default=0, help="seeds the stochastic updates (>= 0)")
    parser.add_argument(
        "--long-run",
        type=_steps_arg,
        default=LONG_RUN_STEPS,
        metavar="STEPS",
        help="comma-separated steps from the seed at which to check the loss (default: 500,1000,2000)",
    )
    parser.add_argument(
        "--grow-steps", type=_count_arg(0), default=200, help="regeneration: steps grown before a cut"
    )
    parser.add_argument(
        "--regrow-steps", type=_count_arg(1), default=200, help="regeneration: steps to regrow"
    )
    parser.add_argument("--video", action="store_true", help="write growth and regeneration MP4s beside it")
    parser.add_argument(
        "--at-size",
        type=_count_arg(8, 4096),
        metavar="PX",
        help="also PSNR/SSIM against the target drawn at PX x PX, the model's image resized to it (to compare "
        "models of one image trained at different sizes or renderings)",
    )
    parser.add_argument(
        "--output",
        help="where to write the JSON (default: <checkpoint stem>.eval.json beside it, <folder>/evaluation.json)",
    )
    args = parser.parse_args(argv)
    if not log.handlers:  # progress of long measurements, and warnings, as one line each on stderr
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("ncalab.evaluate: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    out = Path(args.output).expanduser() if args.output else default_output(args.path)
    problem = output_problem(out)
    if problem:  # before the evaluation, which can take minutes
        print(f"ncalab.evaluate: error: {problem}", file=sys.stderr)
        return 2
    try:
        result = evaluate_model(
            args.path,
            rollouts=args.rollouts,
            seed=args.seed,
            video=args.video,
            long_run_steps=args.long_run,
            grow_steps=args.grow_steps,
            regrow_steps=args.regrow_steps,
            at_size=args.at_size,
        )
    except NCALabError as exc:
        print(f"ncalab.evaluate: error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=2)
    # The result goes to stdout first: a file that cannot be written does not lose it.
    print(format_evaluation(result), file=sys.stderr)
    print(text, flush=True)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    except OSError as exc:
        print(
            f"ncalab.evaluate: error: cannot write {out} ({exc.strerror or exc}); the result is printed above",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
