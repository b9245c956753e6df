"""Measuring an NCA: quality at the horizon, persistence (the long run) and regeneration (:func:`measure_nca`).

The same measurement runs at the end of every training run and in ``python -m ncalab.evaluate``;
``evaluation.json``, ``summary.json``, ``final.png``, the loggers' summaries, ``python -m ncalab.compare`` and the
sweep objective all read its result (its keys are listed in :mod:`ncalab.runs.folder`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ncalab.errors import NCALabError, TargetError
from ncalab.media import (
    REGIONS,
    WIDE_REGIONS,
    cell_box,
    cut_region,
    eval_mode,
    frames_uint8,
    record_rollout,
    write_video,
)
from ncalab.metrics import per_sample_loss, psnr, ssim
from ncalab.nca import ALPHA, NCA, to_rgb
from ncalab.targets import load_target, seed_shift

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
      ``regeneration.regrown`` counts them over the five cuts of :data:`ncalab.media.REGIONS` (halves and the
      centre) and ``regeneration.regrown_wide`` over the four of :data:`ncalab.media.WIDE_REGIONS` (a half and an
      eighth of the pattern past the middle).
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
    regrown = {region: False for region in REGIONS + WIDE_REGIONS}
    box = cell_box(target, scale)
    regeneration["pattern_box"] = list(
        box
    )  # top, bottom, left, right (cells): the centre cut is half its size
    for region in REGIONS + WIDE_REGIONS:
        damaged = cut_region(base, region, box)
        _, frames = record_rollout(nca, damaged, regrow_steps, seed=seed + 1)
        curve = [
            float(per_sample_loss(render(f), target).mean()) for f in frames
        ]  # frame i: after i regrow steps
        recovered = next((i for i, v in enumerate(curve) if i > 0 and v <= threshold), None)
        hit = curve[0] > threshold  # False for NaN: a cut into a non-finite state is no damage to measure
        # Back under the threshold at some step and still there at the end (not a pass on the way to collapse).
        ok = is_grown and hit and recovered is not None and curve[-1] <= threshold
        regrown[region] = ok
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
    regeneration["regrown"] = sum(regrown[r] for r in REGIONS)
    regeneration["regrown_wide"] = sum(regrown[r] for r in WIDE_REGIONS)
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
