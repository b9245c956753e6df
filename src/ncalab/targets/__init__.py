"""Targets: the built-in images (the PNGs in this folder, drawn by :mod:`ncalab.targets.draw`), and loading a
target (a built-in name or an image file) as the padded, premultiplied RGBA tensor that training grows.

- :func:`builtin_targets`: the names of the built-in targets (``flower``, ``mosaic``);
- :func:`resolve_target`: a built-in name or a path -> the image file;
- ``emoji:<name or code point>``: an emoji of the OpenMoji set, drawn from its SVG (:mod:`ncalab.targets.emoji`);
- :func:`load_target`: read it (checked from its header first: :mod:`ncalab.images`), fit it into
  ``size`` x ``size`` keeping its aspect ratio, premultiply alpha, centre it and pad it by empty cells.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from ncalab.errors import TargetError, kind_of
from ncalab.images import check_size, note_opaque
from ncalab.nca import ALPHA
from ncalab.targets.emoji import RENDER_PX, is_emoji_target, render_emoji

__all__ = ["builtin_targets", "load_target", "resolve_target", "seed_on_pattern"]


def builtin_targets() -> list[str]:
    """Names of the targets shipped in ``ncalab/targets``."""
    folder = resources.files("ncalab.targets")
    return sorted(p.name[:-4] for p in folder.iterdir() if p.name.endswith(".png"))


def resolve_target(target: str) -> Path:
    """A built-in name or a path to an image file."""
    if target in builtin_targets():
        return Path(str(resources.files("ncalab.targets") / f"{target}.png"))
    path = Path(target).expanduser()
    if not path.exists():
        raise TargetError(
            f"data.target={target!r}: no such file, and not a built-in target "
            f"(built-ins: {', '.join(builtin_targets())}; an emoji as emoji:<name or code point>; or a path to a PNG/JPEG/... image)"
        )
    if not path.is_file():
        raise TargetError(f"data.target={target!r} is {kind_of(path)}, not an image file")
    return path


def _to_rgba(im: Image.Image) -> Image.Image:
    """RGBA at 8 bits; 16/32-bit greyscale is scaled (Pillow's convert would clip it at 255)."""
    if im.mode.startswith("I"):
        grey = np.asarray(im, dtype=np.float64) / 65535.0
        im = Image.fromarray((grey.clip(0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), mode="L")
    return im.convert("RGBA")


def _read_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            check_size(im, path)  # from the header: Image.open has decoded nothing yet
            im.load()
            note_opaque(im, path)
            return _to_rgba(ImageOps.exif_transpose(im))
    except TargetError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise TargetError(f"data.target={str(path)!r} is not an image Pillow can read ({exc})") from exc


# The seed is one cell in the middle of the grid; a pattern must cover it.
SEED_ALPHA = 0.5


def seed_shift(rgba: torch.Tensor, target: str, cell: int = 1) -> tuple[int, int]:
    """The whole cells ``(dy, dx)`` by which :func:`seed_on_pattern` moves the padded target ``rgba``."""
    if cell > 1:  # the grid's cells are cell x cell pixels: a cell's alpha is its pixels' mean
        alpha = F.avg_pool2d(rgba[ALPHA : ALPHA + 1], cell)[0]
    else:
        alpha = rgba[ALPHA]
    h, w = alpha.shape
    cy, cx = h // 2, w // 2
    if alpha[cy, cx] >= SEED_ALPHA:
        return 0, 0
    ys, xs = torch.nonzero(alpha >= SEED_ALPHA, as_tuple=True)
    if len(ys) == 0:
        return 0, 0  # nothing solid anywhere: a faint target, left where it is
    i = int(((ys - cy) ** 2 + (xs - cx) ** 2).argmin())
    dy, dx = cy - int(ys[i]), cx - int(xs[i])
    rows, cols = torch.nonzero(alpha > 0, as_tuple=True)
    top, bottom = int(rows.min()) + dy, int(rows.max()) + dy
    left, right = int(cols.min()) + dx, int(cols.max()) + dx
    if top < 0 or left < 0 or bottom >= h or right >= w:
        raise TargetError(
            f"data.target={target!r}: the grid's middle cell, where the seed grows from, is transparent, and moving "
            f"the image by ({dy}, {dx}) cells to put the seed on it would push it off the grid; give more "
            "data.padding, or data.seed_on_pattern=false to keep it centred"
        )
    return dy, dx


def seed_on_pattern(rgba: torch.Tensor, target: str, cell: int = 1) -> torch.Tensor:
    """Move the padded target (whole cells) so that the grid's middle cell, where the seed grows from, lies on the
    pattern: unchanged when that cell's alpha is at least :data:`SEED_ALPHA`, otherwise the nearest cell that has
    it (ties: the first in row order) is moved there (:func:`seed_shift`).

    Why: a seed on a transparent cell (the hole of a doughnut or a ring) is taught by the first gradient to fade
    (its target is empty, and so is all it can see), and a dead grid never learns anything again.
    """
    dy, dx = seed_shift(rgba, target, cell)
    if (dy, dx) == (0, 0):
        return rgba
    return torch.roll(rgba, shifts=(dy * cell, dx * cell), dims=(1, 2))


def load_target(
    target: str,
    size: int = 40,
    padding: int = 16,
    allow_upscale: bool = False,
    on_seed: bool = False,
    cell: int = 1,
) -> torch.Tensor:
    """Load ``target`` (a built-in name, an image file, or ``emoji:<name or code point>``: :mod:`.emoji`) as
    premultiplied RGBA ``4 x H x W`` in [0, 1].

    The image is fitted into ``size`` x ``size`` keeping its aspect ratio (an image without alpha is fully opaque),
    then padded by ``padding`` empty cells on every side; with ``on_seed`` moved so that the seed's cell (the middle
    of the grid) is on the pattern (:func:`seed_on_pattern`). With ``cell`` > 1 (a decoder's ``render.scale``) sizes
    are in pixels and the grid's cells are ``cell`` x ``cell`` pixels: the padded image must divide into them. An image larger than
    :data:`ncalab.images.MAX_TARGET_PIXELS` is refused from its header, before it is decoded; one without alpha is
    said so once (it grows as an opaque rectangle).
    """
    if is_emoji_target(target):
        path = Path(target)  # names the target in the messages below
        image = render_emoji(target, max(RENDER_PX, 2 * size))
    else:
        path = resolve_target(target)
        image = _read_image(path)
    w, h = image.size
    scale = size / max(w, h)
    if scale > 1.0 and not allow_upscale:
        raise TargetError(
            f"data.target={str(path)!r} is {w}x{h} px, smaller than data.target_size={size}; "
            f"use data.target_size<={max(w, h)} or data.allow_upscale=true"
        )
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.Resampling.LANCZOS)
    rgba = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    if rgba[ALPHA].max() <= 0.1:
        raise TargetError(f"data.target={str(path)!r} is fully transparent: there is nothing to grow")
    rgba[:3] *= rgba[ALPHA : ALPHA + 1]
    # Centre the fitted image in a size x size square, then pad.
    pad_w, pad_h = size - new_w, size - new_h
    padded = F.pad(
        rgba,
        (
            pad_w // 2 + padding,
            pad_w - pad_w // 2 + padding,
            pad_h // 2 + padding,
            pad_h - pad_h // 2 + padding,
        ),
    )
    if cell > 1 and (padded.shape[1] % cell or padded.shape[2] % cell):
        raise TargetError(
            f"render.scale={cell} does not divide the image: data.target_size + 2 x data.padding = "
            f"{padded.shape[2]} px; choose a scale that divides it, or change data.padding"
        )
    return seed_on_pattern(padded, target, cell) if on_seed else padded
