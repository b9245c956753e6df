"""The browser demo: export and serve from the command line, and the page itself in headless Chromium.

Browser tests (parity with PyTorch for every perception on both backends, erase-and-regrow, the model picker,
loading models, every shipped model staying alive for thousands of steps) need Debian's ``chromium`` and
Playwright for Python (the ``dev`` extra); Playwright drives the system browser through ``executable_path`` and
never downloads one. Without them these tests skip and say how to enable them.
"""

from __future__ import annotations

import functools
import json
import threading
import urllib.request

import pytest
import torch

from ncalab.demo import (
    DEFAULT_PRETRAINED,
    FORMAT,
    INDEX_FORMAT,
    STATIC_FILES,
    make_server,
    pretrained_dir,
)
from ncalab.demo.__main__ import main as demo_main
from ncalab.nca import NCA
from ncalab.pretrained import names as shipped_names
from ncalab.targets import load_target

SHIPPED = shipped_names()

# The model `python -m ncalab.demo serve` opens on (export_pretrained falls back to the first if it is not shipped).
OPENS_ON = DEFAULT_PRETRAINED if DEFAULT_PRETRAINED in SHIPPED else (SHIPPED or [None])[0]


@functools.cache
def shipped(name: str) -> tuple[NCA, dict, torch.Tensor]:
    """A shipped model as PyTorch runs it, rebuilt from its exported files alone (``model.json`` + ``model.bin``),
    with its ``model.json`` and the padded target it was trained on (``4 x H x W`` in image pixels: the grid times
    a decoder's ``render.scale``)."""
    from ncalab.exported import load_model_folder

    nca, meta = load_model_folder(pretrained_dir(name))
    data = meta["config"]["data"]
    scale = nca.render.scale
    target = load_target(
        str(data["target"]),
        int(data["target_size"]),
        int(data["padding"]),
        bool(data.get("allow_upscale", False)),
        bool(data.get("seed_on_pattern", False)),
        cell=scale,
    )
    assert list(target.shape[-2:]) == [g * scale for g in meta["grid"]], (
        f"{name}: target {tuple(target.shape)}, grid {meta['grid']} x {scale}"
    )
    return nca, meta, target


def test_export_cli_reports_a_bad_checkpoint(tmp_path, capsys):
    assert demo_main(["export", str(tmp_path / "missing.ckpt"), str(tmp_path / "out")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "out" / "model.json").exists()


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_pretrained_model_loads(name):
    folder = pretrained_dir(name)
    meta = json.loads((folder / "model.json").read_text())
    assert meta["format"] == FORMAT and meta["perception"]["name"]
    assert (folder / "model.bin").stat().st_size == 4 * meta["n_floats"] < 2_000_000
    assert (folder / "MODEL_CARD.md").is_file() and (folder / "target.png").is_file()
    assert not list(folder.glob("*.ckpt"))
    # Rebuilt from the exported tensors, with the target it was trained on.
    nca, meta, target = shipped(name)
    assert nca.channels == meta["channels"] and target.shape[0] == 4


def test_default_pretrained_model_is_shipped():
    assert DEFAULT_PRETRAINED in SHIPPED, f"DEFAULT_PRETRAINED={DEFAULT_PRETRAINED!r}, shipped: {SHIPPED}"


def test_export_without_checkpoint_writes_every_shipped_model(tmp_path, capsys):
    assert demo_main(["export", str(tmp_path / "site")]) == 0
    site = tmp_path / "site"
    for f in (*STATIC_FILES, "models.json", "models.js"):
        assert (site / f).is_file(), f
    assert not (site / "model.json").exists()
    index = json.loads((site / "models.json").read_text())
    assert index["format"] == INDEX_FORMAT and index["default"] == OPENS_ON
    assert [e["name"] for e in index["models"]] == SHIPPED
    for entry in index["models"]:
        folder, source = site / entry["path"], pretrained_dir(entry["name"])
        assert entry["path"] == f"models/{entry['name']}/"
        for f in ("model.json", "model.bin", "target.png", "MODEL_CARD.md"):
            assert (folder / f).read_bytes() == (source / f).read_bytes(), f"{entry['name']}: {f}"
        embedded = (folder / "model.js").read_text()
        assert embedded.count("window.NCA_EMBEDDED_MODEL = ") == 1
        meta = json.loads((source / "model.json").read_text())
        assert entry["perception"] == {k: meta["perception"].get(k) for k in entry["perception"]}
        assert entry["grid"] == meta["grid"] and entry["card"] == entry["path"] + "MODEL_CARD.md"
    assert "window.NCA_MODEL_INDEX = " in (site / "models.js").read_text()
    # Another model to open on; an unknown one is refused, naming what is shipped.
    assert demo_main(["export", str(tmp_path / "other"), "--pretrained", SHIPPED[-1]]) == 0
    assert json.loads((tmp_path / "other" / "models.json").read_text())["default"] == SHIPPED[-1]
    capsys.readouterr()
    assert demo_main(["export", str(tmp_path / "bad"), "--pretrained", "no_such_model"]) == 2
    err = capsys.readouterr().err
    assert "no_such_model" in err and SHIPPED[0] in err


def test_server_serves_only_its_folder_and_many_clients_at_once(tmp_path):
    import http.client
    import socket

    site, secret = tmp_path / "site", tmp_path / "secret.txt"
    site.mkdir()
    (site / "index.html").write_text("<p>ok</p>")
    secret.write_text("not served")
    server = make_server(site, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address[:2]
    try:
        with socket.create_connection((host, port)):  # a client that sends nothing holds its own thread only
            for path in ("/../secret.txt", "/%2e%2e/secret.txt", "/..%2fsecret.txt", "/" + str(secret)):
                conn = http.client.HTTPConnection(host, port, timeout=10)
                conn.request("GET", path)
                resp = conn.getresponse()
                assert (resp.status, b"not served" in resp.read()) == (404, False), path
                conn.close()
            with urllib.request.urlopen(f"http://{host}:{port}/index.html", timeout=10) as resp:
                assert resp.read() == b"<p>ok</p>"
    finally:
        server.shutdown()
        server.server_close()
