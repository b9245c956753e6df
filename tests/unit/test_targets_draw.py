"""Tests for the built-in target images drawn by ncalab.targets.draw."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from ncalab.targets import draw

PACKAGE_DIR = Path(draw.__file__).resolve().parent


def _load(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGBA")).copy()


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    out = tmp_path_factory.mktemp("targets")
    paths = draw.main(out)
    assert sorted(p.name for p in paths) == ["flower.png", "flower128.png", "mosaic.png"]
    return {name: _load(out / f"{name}.png") for name in draw.BUILTIN}


@pytest.fixture(scope="module")
def flower(written: dict[str, np.ndarray]) -> np.ndarray:
    return written["flower"]


@pytest.fixture(scope="module")
def mosaic(written: dict[str, np.ndarray]) -> np.ndarray:
    return written["mosaic"]


def _distinct_colours(rgb: np.ndarray, min_share: float, min_distance: float) -> list[np.ndarray]:
    """Mean colours of coarse colour bins that cover > min_share of the pixels,
    keeping only ones at least min_distance apart from each other."""
    bins, inverse, counts = np.unique(rgb // 64, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(-counts)
    picked: list[np.ndarray] = []
    for b in order:
        if counts[b] / len(rgb) <= min_share:
            break
        mean = rgb[inverse == b].mean(axis=0)
        if all(np.linalg.norm(mean - p) >= min_distance for p in picked):
            picked.append(mean)
    return picked


def test_builtin_registry() -> None:
    assert set(draw.BUILTIN) == {"flower", "flower128", "mosaic"}
    assert draw.BUILTIN["flower"] is draw.draw_flower
    assert draw.BUILTIN["flower128"] is draw.draw_flower128
    assert draw.BUILTIN["mosaic"] is draw.draw_mosaic


@pytest.mark.parametrize("name", ["flower", "flower128", "mosaic"])
def test_written_files_match_committed_pngs(name: str, written: dict[str, np.ndarray]) -> None:
    committed = PACKAGE_DIR / f"{name}.png"
    assert committed.is_file(), f"run `python -m ncalab.targets.draw` to create {committed}"
    np.testing.assert_array_equal(written[name], _load(committed))


@pytest.mark.parametrize("name", ["flower", "flower128", "mosaic"])
def test_drawing_is_deterministic(name: str) -> None:
    first = np.asarray(draw.BUILTIN[name]())
    second = np.asarray(draw.BUILTIN[name]())
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize(("name", "size"), [("flower", 48), ("flower128", 128), ("mosaic", 128)])
def test_size_and_mode(name: str, size: int) -> None:
    with Image.open(PACKAGE_DIR / f"{name}.png") as im:
        assert im.mode == "RGBA"
        assert im.size == (size, size)
    img = draw.BUILTIN[name]()
    assert img.mode == "RGBA"
    assert img.size == (size, size)


def test_flower_transparent_outside_opaque_inside(flower: np.ndarray) -> None:
    alpha = flower[..., 3]
    for y, x in [(0, 0), (0, 47), (47, 0), (47, 47)]:
        assert alpha[y, x] == 0
    # Centre of the flower head and a point inside the canvas centre line.
    assert alpha[16, 24] == 255
    assert alpha[24, 24] == 255
    # Pure transparency outside the figure, no stray low-alpha speckle.
    assert alpha.min() == 0
    assert np.all(flower[alpha == 0][:, :3] == 0)
    assert (alpha == 255).sum() > 0.2 * alpha.size


def test_flower_fills_canvas_with_small_margin(flower: np.ndarray) -> None:
    ys, xs = np.nonzero(flower[..., 3] > 0)
    margins = [ys.min(), xs.min(), 47 - ys.max(), 47 - xs.max()]
    assert all(2 <= m <= 4 for m in margins), margins


def test_flower_has_at_least_four_colours(flower: np.ndarray) -> None:
    opaque = flower[flower[..., 3] == 255][:, :3].astype(float)
    colours = _distinct_colours(opaque, min_share=0.02, min_distance=80.0)
    assert len(colours) >= 4, colours


def _runs(mask_row: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of each run of True values in a 1-D boolean array."""
    padded = np.concatenate([[False], mask_row, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [(int(s), int(e - s)) for s, e in zip(edges[::2], edges[1::2], strict=True)]


def test_flower_has_thin_green_stem(flower: np.ndarray) -> None:
    opaque = flower[..., 3] == 255
    thin_stem_rows = []
    for y in range(32, 48):
        runs = _runs(opaque[y])
        if len(runs) != 1:
            continue
        start, length = runs[0]
        if length > 3:
            continue
        r, g, b = flower[y, start : start + length, :3].astype(int).mean(axis=0)
        if g > r and g > b and abs(start + length / 2 - 24) <= 3:
            thin_stem_rows.append(y)
    # The stem must stay thin over several rows, not just at a single tip.
    assert len(thin_stem_rows) >= 3, thin_stem_rows


def test_mosaic_is_opaque_with_five_to_eight_colours(mosaic: np.ndarray) -> None:
    assert np.all(mosaic[..., 3] == 255)
    palette = np.unique(mosaic[..., :3].reshape(-1, 3), axis=0)
    assert 5 <= len(palette) <= 8
    colours = _distinct_colours(mosaic[..., :3].reshape(-1, 3).astype(float), 0.01, 60.0)
    assert len(colours) >= 5


def _diagonal_edge_count(ids: np.ndarray, step: int, length: int = 5) -> int:
    """Number of horizontal colour boundaries that move by ``step`` pixels per row
    for ``length`` consecutive rows, keeping the same pair of colours."""
    left, right = ids[:, :-1], ids[:, 1:]
    boundary = left != right
    pair = left * 1000 + right
    h, w = boundary.shape
    hits = boundary.copy()
    for k in range(1, length):
        shifted = np.zeros_like(boundary)
        same_pair = np.zeros_like(boundary)
        src = slice(max(0, -k * step), w - max(0, k * step))
        dst = slice(max(0, k * step), w - max(0, -k * step))
        shifted[: h - k, src] = boundary[k:, dst]
        same_pair[: h - k, src] = pair[k:, dst] == pair[: h - k, src]
        hits &= shifted & same_pair
    return int(hits.sum())


def _colour_ids(rgb: np.ndarray) -> np.ndarray:
    _, inverse = np.unique(rgb.reshape(-1, 3), axis=0, return_inverse=True)
    return inverse.reshape(rgb.shape[:2])


def test_mosaic_has_45_and_135_degree_edges(mosaic: np.ndarray) -> None:
    ids = _colour_ids(mosaic[..., :3])
    assert _diagonal_edge_count(ids, +1) >= 20  # boundary moves right going down
    assert _diagonal_edge_count(ids, -1) >= 20  # boundary moves left going down


def test_mosaic_has_diamonds_in_lower_half(mosaic: np.ndarray) -> None:
    ids = _colour_ids(mosaic[..., :3])
    h, w = ids.shape
    diamonds = 0
    for y in range(h // 2, h - 8):
        row = ids[y]
        for x in range(6, w - 6):
            colour = row[x]
            # Top tip: a single pixel whose row below widens by one on each side
            # for several rows, centred on the same column.
            if row[x - 1] == colour or row[x + 1] == colour or ids[y - 1, x] == colour:
                continue
            grows = all(
                np.all(ids[y + k, x - k : x + k + 1] == colour)
                and ids[y + k, x - k - 1] != colour
                and ids[y + k, x + k + 1] != colour
                for k in range(1, 5)
            )
            if grows:
                diamonds += 1
    assert diamonds >= 2


def test_mosaic_repeats_the_same_texture_in_each_quadrant(mosaic: np.ndarray) -> None:
    ids = _colour_ids(mosaic[..., :3])
    half = ids.shape[0] // 2
    probe = ids[12:28, 12:28]  # a 16x16 sample from the top-left quadrant
    windows = sliding_window_view(ids, probe.shape)
    matches = np.all(windows == probe, axis=(2, 3))
    ys, xs = np.nonzero(matches)
    quadrants = {(y + 8 >= half, x + 8 >= half) for y, x in zip(ys, xs, strict=True)}
    assert quadrants == {(False, False), (False, True), (True, False), (True, True)}


def test_flower128_is_the_flower_drawn_at_128_px(flower: np.ndarray, written: dict[str, np.ndarray]) -> None:
    """The same drawing at 128 px: brought down to 48 px it is the 48 px flower, up to resampling."""
    big = Image.fromarray(written["flower128"]).resize((48, 48), Image.Resampling.LANCZOS)
    alpha_small, alpha_big = flower[..., 3].astype(float), np.asarray(big)[..., 3].astype(float)
    assert np.abs(alpha_small - alpha_big).mean() < 8  # out of 255
    assert (written["flower128"][..., 3] == 255).sum() > 0.2 * 128 * 128
