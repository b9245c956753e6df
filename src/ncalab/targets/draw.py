"""Draw the built-in target images (``flower``, ``flower128``, ``mosaic``) with Pillow.

Everything is computed from fixed coordinates, so every run produces the same
pixels. Run ``python -m ncalab.targets.draw`` to regenerate the PNGs that ship
in this package folder.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw

Color = tuple[int, int, int, int]
Point = tuple[float, float]

FLOWER_SIZE = 48
FLOWER128_SIZE = (
    128  # the same drawing at 128 px: its seeds, stem and leaf tips are details a few pixels wide
)
MOSAIC_SIZE = 128
# The flower is drawn at this multiple of its final size and downsampled, which
# gives antialiased edges without any font or external artwork.
SUPERSAMPLE = 4

# Flower palette.
PETAL_BACK: Color = (156, 72, 214, 255)  # violet
PETAL_FRONT: Color = (255, 110, 170, 255)  # pink
CENTRE: Color = (255, 208, 36, 255)  # yellow
CENTRE_DOT: Color = (238, 140, 20, 255)  # orange
STEM: Color = (46, 130, 60, 255)  # dark green
LEAF: Color = (104, 190, 72, 255)  # light green

# Mosaic palette.
NAVY: Color = (24, 32, 72, 255)
CREAM: Color = (242, 232, 204, 255)
TEAL: Color = (0, 148, 140, 255)
CRIMSON: Color = (204, 34, 64, 255)
GOLD: Color = (250, 196, 40, 255)
VIOLET: Color = (124, 64, 176, 255)
ORANGE: Color = (240, 120, 32, 255)


def _ellipse_polygon(
    centre: Point, half_length: float, half_width: float, angle: float, steps: int = 96
) -> list[Point]:
    """Points of an ellipse whose long axis points along ``angle`` (radians)."""
    cx, cy = centre
    ca, sa = math.cos(angle), math.sin(angle)
    points = []
    for i in range(steps):
        t = 2.0 * math.pi * i / steps
        u, v = half_length * math.cos(t), half_width * math.sin(t)
        points.append((cx + u * ca - v * sa, cy + u * sa + v * ca))
    return points


def _leaf_polygon(base: Point, tip: Point, half_width: float, bend: float, steps: int = 64) -> list[Point]:
    """A lens-shaped leaf from ``base`` to ``tip``, pointed at both ends.

    ``bend`` shifts the midline sideways (in pixels) so the leaf curves.
    """
    bx, by = base
    tx, ty = tip
    dx, dy = tx - bx, ty - by
    length = math.hypot(dx, dy)
    nx, ny = -dy / length, dx / length
    upper, lower = [], []
    for i in range(steps + 1):
        t = i / steps
        # sin^1.3 rather than sin keeps the tips needle-thin after downsampling.
        h = half_width * math.sin(math.pi * t) ** 1.3
        m = bend * math.sin(math.pi * t)
        px, py = bx + dx * t + nx * m, by + dy * t + ny * m
        upper.append((px + nx * h, py + ny * h))
        lower.append((px - nx * h, py - ny * h))
    return upper + lower[::-1]


def draw_flower(size: int = FLOWER_SIZE) -> Image.Image:
    """A ``size`` x ``size`` (48 by default) RGBA emoji-like flower on a transparent background.

    Violet and pink petals around a yellow centre, a thin dark-green stem and
    two light-green leaves with thin tips. The coordinates below are in 48 px units, scaled to ``size``.
    """
    s = SUPERSAMPLE * size / FLOWER_SIZE
    big = Image.new("RGBA", (size * SUPERSAMPLE, size * SUPERSAMPLE), (0, 0, 0, 0))
    draw = ImageDraw.Draw(big)

    def sc(x: float, y: float) -> Point:
        return (x * s, y * s)

    def scale_all(points: list[Point]) -> list[Point]:
        return [sc(x, y) for x, y in points]

    head = (24.0, 16.5)

    # Stem first so the head and leaves overlap its ends.
    draw.rectangle([sc(22.75, 24.0), sc(25.25, 45.0)], fill=STEM)
    draw.polygon(scale_all(_leaf_polygon((23.0, 38.0), (4.0, 27.0), 3.6, -2.0)), fill=LEAF)
    draw.polygon(scale_all(_leaf_polygon((25.0, 41.0), (44.0, 31.0), 3.2, 2.0)), fill=LEAF)

    # Back ring: four violet petals on the diagonals; front ring: four pink
    # petals on the axes, so both colours stay visible.
    for ring, colour, offset in ((0, PETAL_BACK, math.pi / 4), (1, PETAL_FRONT, 0.0)):
        for k in range(4):
            angle = offset + k * math.pi / 2
            reach = 7.2 if ring == 0 else 7.6
            centre = (head[0] + reach * math.cos(angle), head[1] + reach * math.sin(angle))
            petal = _ellipse_polygon(centre, 6.4, 3.9 if ring == 0 else 3.6, angle)
            draw.polygon(scale_all(petal), fill=colour)

    r = 5.2
    draw.ellipse([sc(head[0] - r, head[1] - r), sc(head[0] + r, head[1] + r)], fill=CENTRE)
    # A ring of small orange seeds gives the centre some texture.
    for k in range(6):
        a = k * math.pi / 3 + math.pi / 6
        x, y = head[0] + 2.6 * math.cos(a), head[1] + 2.6 * math.sin(a)
        d = 0.8
        draw.ellipse([sc(x - d, y - d), sc(x + d, y + d)], fill=CENTRE_DOT)

    small = big.resize((size, size), Image.Resampling.LANCZOS)

    # Lanczos rings slightly around edges; snap near-transparent pixels to fully
    # transparent and near-opaque ones to fully opaque so the figure has a clean
    # inside and outside.
    alpha = small.getchannel("A").point(lambda v: 0 if v <= 8 else 255 if v >= 247 else v)
    small.putalpha(alpha)
    inside = alpha.point(lambda v: 255 if v else 0)
    return Image.composite(small, Image.new("RGBA", small.size, (0, 0, 0, 0)), inside)


def _stripe_tile(size: int, period: int) -> Image.Image:
    """A square of 45-degree teal/cream stripes, phase anchored at its own corner."""
    tile = Image.new("RGBA", (size, size))
    tile.putdata(
        [TEAL if ((x - y) % period) < period // 2 else CREAM for y in range(size) for x in range(size)]
    )
    return tile


def _diamond(draw: ImageDraw.ImageDraw, cx: int, cy: int, radius: int, fill: Color) -> None:
    """A square rotated by 45 degrees: all pixels with |x-cx| + |y-cy| <= radius."""
    # Row by row rather than ImageDraw.polygon, whose edge rasterisation is not
    # exactly mirror-symmetric; this way every edge steps one pixel per row.
    for dy in range(-radius, radius + 1):
        half = radius - abs(dy)
        draw.line([(cx - half, cy + dy), (cx + half, cy + dy)], fill=fill)


def draw_mosaic() -> Image.Image:
    """A 128x128 opaque RGBA mosaic that is hard for a Neural Cellular Automaton.

    Four identical stripe patches sit in the four quadrants and can only be told
    apart by where they are; their framing differs only in the bottom-right one.
    Nested diamonds in the middle, a row of diamonds along the bottom and two
    side diamonds add 45/135-degree edges.
    """
    img = Image.new("RGBA", (MOSAIC_SIZE, MOSAIC_SIZE), NAVY)
    draw = ImageDraw.Draw(img)

    patch, frame = 36, 2
    tile = _stripe_tile(patch, 8)
    for i, (x0, y0) in enumerate(((6, 6), (87, 6), (6, 87), (87, 87))):
        # One quadrant gets an orange frame instead of cream: a small context cue
        # that is invisible from inside the patch.
        colour = ORANGE if i == 3 else CREAM
        draw.rectangle([x0 - frame, y0 - frame, x0 + patch + frame - 1, y0 + patch + frame - 1], fill=colour)
        img.paste(tile, (x0, y0))

    # Central nested diamond.
    _diamond(draw, 64, 64, 24, CRIMSON)
    _diamond(draw, 64, 64, 15, GOLD)
    _diamond(draw, 64, 64, 6, VIOLET)

    # Side diamonds, left and right of the centre.
    _diamond(draw, 16, 64, 9, ORANGE)
    _diamond(draw, 112, 64, 9, ORANGE)

    # Lower diamonds between the bottom patches; nothing mirrors them at the top.
    _diamond(draw, 64, 108, 13, VIOLET)
    _diamond(draw, 64, 108, 5, GOLD)
    return img


def draw_flower128() -> Image.Image:
    """The flower drawn at 128x128 px: a target for models drawn at high resolution (``render=decoder``)."""
    return draw_flower(FLOWER128_SIZE)


BUILTIN: dict[str, Callable[[], Image.Image]] = {
    "flower": draw_flower,
    "flower128": draw_flower128,
    "mosaic": draw_mosaic,
}


def main(out_dir: str | Path | None = None) -> list[Path]:
    """Write ``<name>.png`` for every built-in target into ``out_dir``.

    ``out_dir`` defaults to the folder of this file, i.e. the package data
    folder. Returns the written paths.
    """
    folder = Path(out_dir) if out_dir is not None else Path(__file__).resolve().parent
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, drawer in BUILTIN.items():
        path = folder / f"{name}.png"
        drawer().save(path, format="PNG")
        written.append(path)
    return written


if __name__ == "__main__":
    for written_path in main():
        print(written_path)
