"""Rollout media: frames composited on white, MP4/GIF files, image grids, regions cut out for regeneration."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import torch
import torch.nn.functional as F
from torchvision.utils import make_grid

from ncalab.nca import NCA, to_rgb

REGIONS = ("left", "right", "top", "bottom", "center")
# Cuts past the middle: a side's half and an eighth of the pattern beyond it (5/8 of a centred pattern), so that
# what is left must regrow the middle too. Measured beside REGIONS, and counted apart from them.
WIDE_REGIONS = ("left_wide", "right_wide", "top_wide", "bottom_wide")
WIDE_PAST = 1 / 8


def frames_uint8(states: list[torch.Tensor] | torch.Tensor, scale: int = 1) -> np.ndarray:
    """States (``B x C x H x W``, first sample of each) -> ``T x 3 x H*scale x W*scale`` uint8 over white."""
    rgb = torch.stack([to_rgb(s[:1])[0] for s in states])
    if scale > 1:
        rgb = rgb.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    return (rgb.float().cpu() * 255.0 + 0.5).clamp(0, 255).to(torch.uint8).numpy()


def write_video(frames: np.ndarray, path: Path, fps: int = 24) -> Path:
    """Write ``T x 3 x H x W`` uint8 frames as MP4 (H.264) or GIF, chosen by the suffix of ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    hwc = np.ascontiguousarray(frames.transpose(0, 2, 3, 1))
    if path.suffix == ".gif":
        imageio.mimwrite(path, list(hwc), duration=1000.0 / fps, loop=0)
    elif path.suffix == ".mp4":
        # H.264 with yuv420p needs even sides: pad with white.
        h, w = hwc.shape[1:3]
        hwc = np.pad(hwc, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=255)
        imageio.mimwrite(path, list(hwc), fps=fps, codec="libx264", quality=8, macro_block_size=1)
    else:
        raise ValueError(f"unknown video format {path.suffix!r}; accepted: .mp4, .gif")
    return path


def cell_box(target: torch.Tensor, scale: int = 1) -> tuple[int, int, int, int]:
    """:func:`pattern_box` on the cell grid of a target drawn ``scale`` pixels per cell side (a decoder's): the
    cells any of whose pixels the pattern covers."""
    if scale == 1:
        return pattern_box(target)
    t = target if target.dim() == 4 else target.unsqueeze(0)
    return pattern_box(F.max_pool2d(t, scale))


def pattern_box(target: torch.Tensor) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` (bottom/right exclusive) of the cells where the target's alpha is above 0;
    the whole grid for an empty target."""
    alpha = target[..., 3, :, :] if target.dim() >= 3 else target
    while alpha.dim() > 2:
        alpha = alpha.amax(0)
    ys, xs = (alpha > 0).nonzero(as_tuple=True)
    if len(ys) == 0:
        return 0, alpha.shape[0], 0, alpha.shape[1]
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def cut_region(x: torch.Tensor, region: str, box: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """Zero every channel of ``region``: the left/right/top/bottom half of the grid, ``<side>_wide``: that half and
    :data:`WIDE_PAST` of the pattern's extent past the middle, or ``center``: a square of half
    the pattern's size at its centre (``box`` = ``(top, bottom, left, right)`` of the pattern, e.g.
    :func:`pattern_box` of the target; default the whole grid). Each cut takes about half of a centred pattern; a
    centre square of half the *grid* would take nearly all of it when the padding is small."""
    if region not in REGIONS + WIDE_REGIONS:
        raise ValueError(f"unknown region {region!r}; accepted: {', '.join(REGIONS + WIDE_REGIONS)}")
    h, w = x.shape[-2:]
    x = x.clone()
    if region in WIDE_REGIONS:
        top, bottom, left, right = box if box is not None else (0, h, 0, w)
        past_x = max(1, math.ceil((right - left) * WIDE_PAST))
        past_y = max(1, math.ceil((bottom - top) * WIDE_PAST))
        if region == "left_wide":
            x[..., :, : w // 2 + past_x] = 0
        elif region == "right_wide":
            x[..., :, max(0, w // 2 - past_x) :] = 0
        elif region == "top_wide":
            x[..., : h // 2 + past_y, :] = 0
        else:
            x[..., max(0, h // 2 - past_y) :, :] = 0
        return x
    if region == "left":
        x[..., :, : w // 2] = 0
    elif region == "right":
        x[..., :, w // 2 :] = 0
    elif region == "top":
        x[..., : h // 2, :] = 0
    elif region == "bottom":
        x[..., h // 2 :, :] = 0
    else:
        top, bottom, left, right = box if box is not None else (0, h, 0, w)
        size = max(1, round(min(bottom - top, right - left) / 2))
        y0 = round((top + bottom - size) / 2)
        x0 = round((left + right - size) / 2)
        x[..., y0 : y0 + size, x0 : x0 + size] = 0
    return x


@contextmanager
def eval_mode(nca: NCA) -> Iterator[NCA]:
    """The NCA in eval mode for the block, then back as it was (also when the block raises)."""
    was_training = nca.training
    nca.eval()
    try:
        yield nca
    finally:
        nca.train(was_training)


@torch.no_grad()
def record_rollout(
    nca: NCA, x: torch.Tensor, steps: int, frame_every: int = 1, seed: int = 0
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run ``steps`` from ``x`` with a fixed RNG seed (the training RNG is left as it was).

    Returns the final state and the frames (the start state, then every ``frame_every``-th step).
    """
    frames = [x.clone()]

    def record(i: int, state: torch.Tensor) -> None:
        if i % frame_every == 0:
            frames.append(state.clone())

    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        x = nca.rollout(x, steps, on_step=record)
    return x, frames


def pool_grid(states: torch.Tensor, nrow: int = 8, scale: int = 2) -> np.ndarray:
    """A grid of pool states over white as ``3 x H x W`` uint8."""
    rgb = to_rgb(states).float().cpu()
    if scale > 1:
        rgb = rgb.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    grid = make_grid(rgb, nrow=nrow, padding=2, pad_value=1.0)
    return (grid * 255.0 + 0.5).clamp(0, 255).to(torch.uint8).numpy()


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 4) -> np.ndarray:
    """Two ``3 x H x W`` uint8 images with a white gap between them, as ``H x W x 3``."""
    h = max(left.shape[1], right.shape[1])
    out = np.full((h, left.shape[2] + gap + right.shape[2], 3), 255, dtype=np.uint8)
    out[: left.shape[1], : left.shape[2]] = left.transpose(1, 2, 0)
    out[: right.shape[1], left.shape[2] + gap :] = right.transpose(1, 2, 0)
    return out
