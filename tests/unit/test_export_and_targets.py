"""Smaller promises about inputs and outputs: ``demo export`` never overwrites someone else's files, an image
without alpha is said to grow as a rectangle, and a huge image is refused from its header before it is decoded."""

from __future__ import annotations

import json
import logging
import struct
import zlib

import pytest
from PIL import Image

from ncalab.demo import FORMAT, INDEX_FORMAT, ExportError, check_export_folder, written_by_export
from ncalab.demo.__main__ import main as demo_main
from ncalab.errors import TargetError
from ncalab.images import MAX_TARGET_PIXELS
from ncalab.targets import load_target


def test_export_refuses_a_folder_with_someone_elses_files(tmp_path, capsys):
    site = tmp_path / "my_site"
    site.mkdir()
    (site / "index.html").write_text("<h1>my own page</h1>")
    (site / "style.css").write_text("h1 { color: red }")
    assert demo_main(["export", str(site)]) == 2
    err = capsys.readouterr().err
    assert "is not empty" in err and "index.html" in err and "--force" in err
    assert len(err.strip().splitlines()) == 1
    assert (site / "index.html").read_text() == "<h1>my own page</h1>"  # untouched
    assert sorted(p.name for p in site.iterdir()) == ["index.html", "style.css"]
    # --force: the user said so
    assert demo_main(["export", str(site), "--force"]) == 0
    assert "my own page" not in (site / "index.html").read_text()


def test_export_may_rewrite_its_own_export_and_empty_or_new_folders(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert demo_main(["export", str(empty)]) == 0
    (empty / "CNAME").write_text("nca.example.org")  # the user's addition to a published export
    assert written_by_export(empty)
    assert demo_main(["export", str(empty)]) == 0  # again: it was our export
    assert (empty / "CNAME").read_text() == "nca.example.org"
    assert demo_main(["export", str(tmp_path / "new" / "site")]) == 0


def test_what_counts_as_an_export(tmp_path):
    single = tmp_path / "single"
    single.mkdir()
    (single / "model.json").write_text(json.dumps({"format": FORMAT}))
    assert written_by_export(single) and check_export_folder(single) == single
    index = tmp_path / "index"
    index.mkdir()
    (index / "models.json").write_text(json.dumps({"format": INDEX_FORMAT}))
    assert written_by_export(index)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "model.json").write_text(json.dumps({"format": "someone-else/2"}))
    assert not written_by_export(theirs)
    with pytest.raises(ExportError, match="not empty"):
        check_export_folder(theirs)
    assert check_export_folder(theirs, force=True) == theirs


def test_an_image_without_alpha_is_said_to_grow_as_a_rectangle_once(tmp_path, caplog):
    rgb = tmp_path / "photo.png"
    Image.new("RGB", (20, 16), (200, 100, 50)).save(rgb)
    rgba = tmp_path / "shape.png"
    Image.new("RGBA", (20, 16), (200, 100, 50, 255)).save(rgba)
    with caplog.at_level(logging.WARNING, logger="ncalab"):
        load_target(str(rgb), size=12, padding=2)
        load_target(str(rgb), size=12, padding=2)
        load_target(str(rgba), size=12, padding=2)
    notes = [r.getMessage() for r in caplog.records if "no alpha channel" in r.getMessage()]
    assert len(notes) == 1, notes
    assert "photo.png" in notes[0] and "20x16" in notes[0] and "rectangle" in notes[0]


def png_header(width: int, height: int) -> bytes:
    """A PNG that only has its header right: enough for Image.open, which decodes nothing."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def test_a_huge_image_is_refused_from_its_header_before_decoding(tmp_path, monkeypatch):
    huge = tmp_path / "huge.png"
    huge.write_bytes(png_header(13000, 13000))
    assert 13000 * 13000 > MAX_TARGET_PIXELS
    decoded = []
    real_load = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self.size) or real_load(self))
    with pytest.raises(TargetError, match=r"13000x13000 px \(169 megapixels\), more than the 50 megapixels"):
        load_target(str(huge), size=40)
    assert decoded == []  # refused before anything was decoded


def test_a_checkpoint_export_checks_the_folder_first(tmp_path, capsys):
    site = tmp_path / "site"
    site.mkdir()
    (site / "model.json").write_text('{"mine": true}')
    assert demo_main(["export", str(tmp_path / "any.ckpt"), str(site)]) == 2
    assert "is not empty (model.json)" in capsys.readouterr().err
    assert (site / "model.json").read_text() == '{"mine": true}'
