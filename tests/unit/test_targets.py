"""Tests for loading targets: ncalab.targets.builtin_targets, resolve_target and load_target."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ncalab.errors import NCALabError, TargetError
from ncalab.targets import builtin_targets, load_target, resolve_target

# ---------------------------------------------------------------- helpers


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _save_rgba(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array.astype(np.uint8), "RGBA").save(path)
    return path


def _opaque_rgb(path: Path, w: int, h: int, value: int = 200, **save_kw) -> Path:
    Image.fromarray(np.full((h, w, 3), value, np.uint8), "RGB").save(path, **save_kw)
    return path


def _padding_is_zero(t: torch.Tensor, padding: int) -> bool:
    return bool(
        (t[:, :padding, :] == 0).all()
        and (t[:, -padding:, :] == 0).all()
        and (t[:, :, :padding] == 0).all()
        and (t[:, :, -padding:] == 0).all()
    )


def _alpha_bbox(t: torch.Tensor) -> tuple[int, int, int, int]:
    """(first row, last row, first col, last col) where alpha is non-zero."""
    a = t[3]
    rows = (a.sum(dim=1) > 0).nonzero().flatten()
    cols = (a.sum(dim=0) > 0).nonzero().flatten()
    return int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


# ---------------------------------------------------------------- built-ins


def test_builtin_targets_lists_flower_and_mosaic() -> None:
    names = builtin_targets()
    assert "flower" in names and "mosaic" in names
    assert names == sorted(names)
    for name in ("flower", "mosaic"):
        path = resolve_target(name)
        assert path.is_file()
        assert path.name == f"{name}.png"


def test_flower_default_shape_range_and_padding() -> None:
    t = load_target("flower", 40, 16)
    assert t.shape == (4, 72, 72)
    assert t.dtype == torch.float32
    assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    assert _padding_is_zero(t, 16)
    assert float(t[3].max()) == 1.0
    # premultiplied: no colour channel exceeds alpha
    assert bool((t[:3] <= t[3:4] + 1e-6).all())
    # something is actually there, inside the 40 x 40 box
    assert float(t[3, 16:56, 16:56].sum()) > 100.0


def test_mosaic_size_64_padding_8() -> None:
    t = load_target("mosaic", 64, 8)
    assert t.shape == (4, 80, 80)
    assert t.dtype == torch.float32
    assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    assert _padding_is_zero(t, 8)
    assert float(t[3].max()) == 1.0


def test_load_is_deterministic() -> None:
    assert torch.equal(load_target("flower", 40, 16), load_target("flower", 40, 16))


def test_resolve_target_returns_path_for_file(tmp_path: Path) -> None:
    path = _opaque_rgb(tmp_path / "a.png", 48, 48)
    assert resolve_target(str(path)) == path


# ---------------------------------------------------------------- accepted kinds


def _make_rgba(path: Path) -> Path:
    arr = _rng(1).integers(0, 256, (48, 48, 4))
    arr[..., 3] = 255
    return _save_rgba(path.with_suffix(".png"), arr)


def _make_rgb(path: Path) -> Path:
    arr = _rng(2).integers(0, 256, (48, 48, 3)).astype(np.uint8)
    out = path.with_suffix(".png")
    Image.fromarray(arr, "RGB").save(out)
    return out


def _make_jpeg(path: Path) -> Path:
    arr = _rng(3).integers(0, 256, (48, 48, 3)).astype(np.uint8)
    out = path.with_suffix(".jpg")
    Image.fromarray(arr, "RGB").save(out, quality=90)
    return out


def _make_gray(path: Path) -> Path:
    out = path.with_suffix(".png")
    Image.fromarray(np.tile(np.arange(48, dtype=np.uint8) * 5, (48, 1)), "L").save(out)
    return out


def _make_palette(path: Path) -> Path:
    idx = np.zeros((48, 48), np.uint8)
    idx[8:40, 8:40] = 1
    im = Image.fromarray(idx, "P")
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    out = path.with_suffix(".png")
    im.save(out, transparency=0)
    return out


def _make_la(path: Path) -> Path:
    lum = np.full((48, 48), 180, np.uint8)
    alpha = np.zeros((48, 48), np.uint8)
    alpha[8:40, 8:40] = 255
    out = path.with_suffix(".png")
    Image.fromarray(np.dstack([lum, alpha]), "LA").save(out)
    return out


def _make_gray16(path: Path) -> Path:
    out = path.with_suffix(".png")
    Image.fromarray(np.full((48, 48), 40000, np.uint16)).save(out)
    return out


KINDS = {
    "rgba": _make_rgba,
    "rgb": _make_rgb,
    "jpeg": _make_jpeg,
    "gray_L": _make_gray,
    "palette_P_transparency": _make_palette,
    "LA": _make_la,
    "gray16": _make_gray16,
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_accepted_kinds_load_with_right_shape(tmp_path: Path, kind: str) -> None:
    path = KINDS[kind](tmp_path / kind)
    t = load_target(str(path), 40, 6)
    assert t.shape == (4, 52, 52)
    assert t.dtype == torch.float32
    assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    assert _padding_is_zero(t, 6)
    assert float(t[3].max()) > 0.9


@pytest.mark.parametrize("kind", ["rgb", "jpeg", "gray_L"])
def test_images_without_alpha_are_fully_opaque(tmp_path: Path, kind: str) -> None:
    path = KINDS[kind](tmp_path / kind)
    t = load_target(str(path), 40, 4)
    assert bool((t[3, 4:44, 4:44] == 1.0).all())
    assert float(t[3].sum()) == 40 * 40


def test_rgb_no_resize_keeps_values(tmp_path: Path) -> None:
    arr = _rng(5).integers(0, 256, (40, 40, 3)).astype(np.uint8)
    path = tmp_path / "exact.png"
    Image.fromarray(arr, "RGB").save(path)
    t = load_target(str(path), 40, 2)
    expected = torch.from_numpy(arr.astype(np.float32) / 255.0).permute(2, 0, 1)
    torch.testing.assert_close(t[:3, 2:42, 2:42], expected)
    assert bool((t[3, 2:42, 2:42] == 1.0).all())


def test_palette_transparency_becomes_alpha(tmp_path: Path) -> None:
    path = _make_palette(tmp_path / "p")
    t = load_target(str(path), 48, 0)  # no resize
    inside = torch.zeros(48, 48, dtype=torch.bool)
    inside[8:40, 8:40] = True
    assert bool((t[3][inside] == 1.0).all())
    assert bool((t[3][~inside] == 0.0).all())
    assert bool((t[0][inside] == 1.0).all())  # red
    assert bool((t[1:3] == 0.0).all())
    assert bool((t[:, ~inside] == 0.0).all())  # transparent -> premultiplied to zero


def test_la_image_is_grey_with_alpha(tmp_path: Path) -> None:
    path = _make_la(tmp_path / "la")
    t = load_target(str(path), 48, 0)
    v = 180 / 255
    for c in range(3):
        torch.testing.assert_close(t[c, 8:40, 8:40], torch.full((32, 32), v))
    assert bool((t[3, 8:40, 8:40] == 1.0).all())
    assert float(t[3].sum()) == 32 * 32


def test_gray16_values_are_scaled_not_clipped(tmp_path: Path) -> None:
    path = _make_gray16(tmp_path / "g16")
    t = load_target(str(path), 48, 0)
    torch.testing.assert_close(t[0], torch.full((48, 48), 40000 / 65535), atol=1 / 255, rtol=0)


# ---------------------------------------------------------------- premultiplication


def test_premultiplied_half_transparent_red(tmp_path: Path) -> None:
    arr = np.zeros((40, 40, 4), np.uint8)
    arr[...] = (255, 0, 0, 128)
    path = _save_rgba(tmp_path / "red.png", arr)
    t = load_target(str(path), 40, 0)  # no resize
    a = 128 / 255
    torch.testing.assert_close(t[3], torch.full((40, 40), a))
    torch.testing.assert_close(t[0], torch.full((40, 40), a))  # alpha * 1.0
    assert bool((t[1:3] == 0).all())
    assert abs(float(t[0, 5, 5]) - 0.502) < 1e-3


def test_premultiplied_mixed_pixels(tmp_path: Path) -> None:
    arr = np.zeros((40, 40, 4), np.uint8)
    arr[:, :20] = (0, 200, 100, 64)
    arr[:, 20:] = (10, 20, 30, 255)
    path = _save_rgba(tmp_path / "mixed.png", arr)
    t = load_target(str(path), 40, 3)
    left = t[:, 3:43, 3:23]
    right = t[:, 3:43, 23:43]
    a = 64 / 255
    for c, v in enumerate((0, 200, 100)):
        torch.testing.assert_close(left[c], torch.full_like(left[c], a * v / 255))
    torch.testing.assert_close(left[3], torch.full_like(left[3], a))
    for c, v in enumerate((10, 20, 30)):
        torch.testing.assert_close(right[c], torch.full_like(right[c], v / 255))
    assert bool((right[3] == 1.0).all())


def test_transparent_pixels_with_colour_become_zero(tmp_path: Path) -> None:
    arr = np.zeros((40, 40, 4), np.uint8)
    arr[...] = (255, 255, 255, 0)  # white but invisible
    arr[10:30, 10:30] = (0, 0, 255, 255)
    path = _save_rgba(tmp_path / "invisible_white.png", arr)
    t = load_target(str(path), 40, 0)
    outside = torch.ones(40, 40, dtype=torch.bool)
    outside[10:30, 10:30] = False
    assert bool((t[:, outside] == 0).all())
    assert bool((t[2, 10:30, 10:30] == 1).all())


# ---------------------------------------------------------------- aspect ratio / fitting


def test_wide_image_is_fitted_and_centred(tmp_path: Path) -> None:
    path = _opaque_rgb(tmp_path / "wide.png", 100, 50)
    t = load_target(str(path), 40, 3)
    assert t.shape == (4, 46, 46)
    box = t[:, 3:43, 3:43]
    # 100 x 50 -> 40 wide x 20 high, centred: 10 empty rows above and below
    assert bool((box[3, 10:30, :] == 1.0).all())
    assert bool((box[:, :10, :] == 0).all())
    assert bool((box[:, 30:, :] == 0).all())
    assert _padding_is_zero(t, 3)
    assert _alpha_bbox(t) == (13, 32, 3, 42)
    assert float(t[3].sum()) == 40 * 20


def test_tall_image_is_fitted_and_centred(tmp_path: Path) -> None:
    path = _opaque_rgb(tmp_path / "tall.png", 50, 100)
    t = load_target(str(path), 40, 3)
    assert t.shape == (4, 46, 46)
    assert _alpha_bbox(t) == (3, 42, 13, 32)
    assert float(t[3].sum()) == 40 * 20


def test_odd_leftover_is_split_floor_first(tmp_path: Path) -> None:
    # 100 x 53 at size 40 -> 40 x 21; 19 leftover rows: 9 above, 10 below
    path = _opaque_rgb(tmp_path / "odd.png", 100, 53)
    t = load_target(str(path), 40, 0)
    assert t.shape == (4, 40, 40)
    assert _alpha_bbox(t) == (9, 29, 0, 39)


def test_square_image_downscaled_fills_box(tmp_path: Path) -> None:
    path = _opaque_rgb(tmp_path / "sq.png", 97, 97)
    t = load_target(str(path), 40, 5)
    assert t.shape == (4, 50, 50)
    assert _alpha_bbox(t) == (5, 44, 5, 44)
    torch.testing.assert_close(t[0, 5:45, 5:45], torch.full((40, 40), 200 / 255))


# ---------------------------------------------------------------- bad inputs


def test_missing_path_names_path_and_builtins(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "target.png"
    with pytest.raises(TargetError) as info:
        load_target(str(missing), 40, 16)
    msg = str(info.value)
    assert str(missing) in msg
    assert "data.target" in msg
    assert "flower" in msg and "mosaic" in msg


def test_unknown_builtin_name_is_a_missing_path() -> None:
    with pytest.raises(TargetError, match="flower") as info:
        load_target("no_such_builtin_xyz", 40, 16)
    assert "no_such_builtin_xyz" in str(info.value)


def test_directory_is_rejected(tmp_path: Path) -> None:
    folder = tmp_path / "a_folder"
    folder.mkdir()
    with pytest.raises(TargetError) as info:
        load_target(str(folder), 40, 16)
    msg = str(info.value)
    assert str(folder) in msg
    assert "data.target" in msg
    assert "directory" in msg and "image file" in msg


def test_text_file_named_png_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n" * 20)
    with pytest.raises(TargetError) as info:
        load_target(str(path), 40, 16)
    msg = str(info.value)
    assert str(path) in msg
    assert "data.target" in msg
    assert "not an image" in msg


def test_empty_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(TargetError, match="not an image"):
        load_target(str(path), 40, 16)


@pytest.mark.parametrize("keep", [8, 40, 100, 1000])
def test_truncated_png_is_rejected(tmp_path: Path, keep: int) -> None:
    full = tmp_path / "full.png"
    arr = _rng(7).integers(0, 256, (48, 48, 4))
    _save_rgba(full, arr)
    data = full.read_bytes()
    assert len(data) > keep + 100
    path = tmp_path / "truncated.png"
    path.write_bytes(data[:keep])
    with pytest.raises(TargetError) as info:
        load_target(str(path), 40, 16)
    msg = str(info.value)
    assert str(path) in msg
    assert "not an image" in msg


def test_corrupted_png_body_is_rejected(tmp_path: Path) -> None:
    full = tmp_path / "full.png"
    _save_rgba(full, _rng(8).integers(0, 256, (48, 48, 4)))
    data = bytearray(full.read_bytes())
    data[60:200] = bytes(140)  # zero out part of the compressed stream
    path = tmp_path / "corrupt.png"
    path.write_bytes(bytes(data))
    with pytest.raises(TargetError, match="not an image"):
        load_target(str(path), 40, 16)


def test_small_image_needs_allow_upscale(tmp_path: Path) -> None:
    path = _opaque_rgb(tmp_path / "small.png", 20, 10)
    with pytest.raises(TargetError) as info:
        load_target(str(path), 40, 4)
    msg = str(info.value)
    assert str(path) in msg
    assert "data.target_size" in msg
    assert "data.allow_upscale" in msg
    assert "20x10" in msg

    t = load_target(str(path), 40, 4, allow_upscale=True)
    assert t.shape == (4, 48, 48)
    # 20 x 10 -> 40 x 20, centred vertically
    assert _alpha_bbox(t) == (14, 33, 4, 43)
    assert bool((t[3, 14:34, 4:44] == 1.0).all())


def test_image_exactly_target_size_needs_no_upscale(tmp_path: Path) -> None:
    path = _opaque_rgb(tmp_path / "exact.png", 40, 25)
    t = load_target(str(path), 40, 0)
    assert t.shape == (4, 40, 40)
    assert float(t[3].sum()) == 40 * 25


def test_fully_transparent_image_is_rejected(tmp_path: Path) -> None:
    arr = np.zeros((48, 48, 4), np.uint8)
    arr[..., :3] = 255  # colour but alpha 0
    path = _save_rgba(tmp_path / "clear.png", arr)
    with pytest.raises(TargetError) as info:
        load_target(str(path), 40, 16)
    msg = str(info.value)
    assert str(path) in msg
    assert "transparent" in msg


def test_huge_image_header_raises_target_error(tmp_path: Path) -> None:
    # A valid PNG header claiming 30000 x 30000 px (900 Mpx): Pillow refuses to open it.
    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 6, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b""))
        + _png_chunk(b"IEND", b"")
    )
    path = tmp_path / "huge.png"
    path.write_bytes(data)
    with pytest.raises(TargetError, match="data.target"):
        load_target(str(path), 40, 16)


# ---------------------------------------------------------------- errors and side effects


def test_target_error_hierarchy() -> None:
    assert issubclass(TargetError, NCALabError)
    assert issubclass(TargetError, ValueError)
    with pytest.raises(ValueError):
        load_target("/definitely/not/here.png", 40, 16)
    with pytest.raises(NCALabError):
        load_target("/definitely/not/here.png", 40, 16)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_loading_does_not_modify_file(tmp_path: Path, kind: str) -> None:
    path = KINDS[kind](tmp_path / kind)
    before = path.read_bytes()
    mtime = path.stat().st_mtime_ns
    load_target(str(path), 40, 4)
    load_target(str(path), 24, 2)
    assert path.read_bytes() == before
    assert path.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_failed_load_does_not_modify_file(tmp_path: Path) -> None:
    path = _opaque_rgb(tmp_path / "small.png", 10, 10)
    before = path.read_bytes()
    with pytest.raises(TargetError):
        load_target(str(path), 40, 4)
    assert path.read_bytes() == before


def test_builtin_file_is_not_modified() -> None:
    path = resolve_target("flower")
    before = path.read_bytes()
    load_target("flower", 40, 16)
    assert path.read_bytes() == before


# ---------------------------------------------------------------- the seed on the pattern


def _ring(path: Path, size: int = 20, inner: float = 4.0, outer: float = 9.0) -> Path:
    """An opaque ring (a hole in the middle), centred."""
    yy, xx = np.mgrid[0:size, 0:size] - (size - 1) / 2
    r = np.hypot(yy, xx)
    a = np.zeros((size, size, 4), np.uint8)
    a[(r >= inner) & (r <= outer)] = (200, 40, 40, 255)
    return _save_rgba(path, a)


def test_a_target_with_a_hole_at_the_seed_is_moved_onto_it(tmp_path: Path) -> None:
    """A ring's middle cell is transparent: with on_seed the image moves by whole cells so that its nearest solid
    cell is the grid's middle cell (where the seed is), and nothing else about it changes."""
    path = _ring(tmp_path / "ring.png")
    centred = load_target(str(path), 20, 4)
    moved = load_target(str(path), 20, 4, on_seed=True)
    h, w = moved.shape[-2:]
    assert float(centred[3, h // 2, w // 2]) == 0.0
    assert float(moved[3, h // 2, w // 2]) >= 0.5
    # a pure shift, by the distance to the ring's inner edge
    found = [
        (dy, dx)
        for dy in range(-6, 7)
        for dx in range(-6, 7)
        if torch.equal(torch.roll(centred, (dy, dx), (1, 2)), moved)
    ]
    assert len(found) == 1 and 3 <= max(abs(found[0][0]), abs(found[0][1])) <= 5
    assert float(moved.sum()) == pytest.approx(float(centred.sum()))


def test_a_target_solid_at_the_seed_is_left_where_it_is() -> None:
    for name, size, padding in (("flower", 24, 6), ("mosaic", 64, 8)):
        assert torch.equal(load_target(name, size, padding), load_target(name, size, padding, on_seed=True))


def test_moving_onto_the_seed_refuses_to_push_the_image_off_the_grid(tmp_path: Path) -> None:
    path = _ring(tmp_path / "ring.png")
    with pytest.raises(TargetError, match=r"data\.padding.*data\.seed_on_pattern=false") as info:
        load_target(str(path), 20, 0, on_seed=True)
    assert "\n" not in str(info.value)


def test_the_datamodule_puts_the_seed_on_the_pattern_by_default(tmp_path: Path) -> None:
    """data.seed_on_pattern (default true) reaches load_target: the pool's seed cell sits on the ring; false keeps
    the image centred (a run from before the option evaluates as it trained: evaluate reads a missing key as false)."""
    from ncalab.data import NCADataModule
    from ncalab.evaluate import _target_and_horizon

    path = _ring(tmp_path / "ring.png")
    dm = NCADataModule(
        target=str(path), target_size=20, padding=4, pool_size=2, batch_size=1, damage_share=0.0
    )
    h, w = dm.target.shape[-2:]
    assert float(dm.target[3, h // 2, w // 2]) >= 0.5
    off = NCADataModule(
        target=str(path),
        target_size=20,
        padding=4,
        pool_size=2,
        batch_size=1,
        damage_share=0.0,
        seed_on_pattern=False,
    )
    assert float(off.target[3, h // 2, w // 2]) == 0.0
    config = {"data": {"target": str(path), "target_size": 20, "padding": 4}, "rollout": {"max_steps": 8}}
    assert torch.equal(_target_and_horizon(config, "old run")[0], off.target)
    config["data"]["seed_on_pattern"] = True
    assert torch.equal(_target_and_horizon(config, "new run")[0], dm.target)
