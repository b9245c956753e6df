"""Checks on a target image read from its header, before it is decoded, and notes about what it will grow."""

from __future__ import annotations

import logging
from pathlib import Path

from PIL import Image

from ncalab.errors import TargetError

log = logging.getLogger("ncalab")

# A target is fitted into data.target_size (tens to hundreds of pixels): a larger image only costs memory. This
# bound (50 megapixels: a phone camera's photo fits) keeps decoding within a few hundred MB; Pillow's own limit
# (about 89 megapixels, errors at twice that) lets a 13000 x 13000 image through at several GB.
MAX_TARGET_PIXELS = 50_000_000

_told_opaque: set[str] = set()


def check_size(im: Image.Image, path: Path) -> None:
    """Refuse an image too large to decode for a target, from the size in its header (``Image.open`` is lazy:
    nothing is decoded yet)."""
    w, h = im.size
    if w * h > MAX_TARGET_PIXELS:
        raise TargetError(
            f"data.target={str(path)!r} is {w}x{h} px ({w * h / 1e6:.0f} megapixels), more than the "
            f"{MAX_TARGET_PIXELS / 1e6:.0f} megapixels ncalab decodes for a target; it is fitted into "
            "data.target_size anyway: scale it down first"
        )


def has_alpha(im: Image.Image) -> bool:
    """Whether the image carries transparency (an alpha band, or a transparent colour/palette entry)."""
    return "A" in im.getbands() or "a" in im.getbands() or "transparency" in im.info


def note_opaque(im: Image.Image, path: Path) -> None:
    """Say once per image that one without transparency is grown as an opaque rectangle, background included."""
    key = str(path.resolve())
    if has_alpha(im) or key in _told_opaque:
        return
    _told_opaque.add(key)
    w, h = im.size
    log.warning(
        "data.target=%r has no alpha channel: all of its %dx%d pixels are opaque, so the NCA learns to grow the "
        "whole rectangle, background included. For a shape on an empty background, give an image with "
        "transparency (e.g. a PNG whose background has alpha 0).",
        str(path),
        w,
        h,
    )
