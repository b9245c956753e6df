"""The browser demo: export and serve from the command line, and the page itself in headless Chromium.

Browser tests (parity with PyTorch for every perception on both backends, erase-and-regrow, loading models)
need Debian's ``chromium`` and Playwright for Python (the ``dev`` extra); Playwright drives the system browser
through ``executable_path`` and never downloads one. Without them these tests skip and say how to enable them.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PERCEPTIONS, ROOT, make_cfg
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ncalab.data import load_target
from ncalab.demo import FORMAT, STATIC_FILES, export_pretrained, make_server, model_tensors, pretrained_dir
from ncalab.demo.__main__ import main as demo_main
from ncalab.nca import NCA, alive_mask

GRID = 32
HIDDEN = 64
PARITY_STEPS = 64
PARITY_TOL = 1e-3
SCREENSHOT = Path("/tmp/ncalab_demo_screenshot.png")
ENABLE_HINT = (
    "install Debian's chromium (`apt-get install -y chromium`, as .ci/run does) and the dev extra "
    "(`pip install -e '.[dev]'`, which brings playwright), or set NCALAB_CHROMIUM=/path/to/chromium"
)
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # WebGL2 without a GPU: SwiftShader (software); the page falls back to plain JS where even that is missing.
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
]


def find_chromium() -> str | None:
    candidates = [
        os.environ.get("NCALAB_CHROMIUM"),
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
    ]
    return next((c for c in candidates if c and os.path.isfile(c) and os.access(c, os.X_OK)), None)


# --- models ------------------------------------------------------------------------------------------------


def stable_random_nca(perception: str, out: Path, seed: int = 0) -> tuple[NCA, dict]:
    """An NCA with non-zero random update weights whose state stays bounded, for a meaningful parity check.

    Hidden units 2c and 2c+1 read +x_c and -x_c and feed -0.2 x_c back (every channel decays), the other units
    are random (perception responses matter), and alpha has a positive bias so that the pattern grows from the
    seed. Trainable kernels are perturbed per channel and scale factors set away from 1, so that the exported
    depthwise layout and the scale are both checked.
    """
    cfg = make_cfg(
        out,
        "experiment=smoke",
        f"perception={perception}",
        f"model.hidden={HIDDEN}",
        f"data.target_size={GRID - 8}",
        "data.padding=4",
    )
    config = OmegaConf.to_container(cfg, resolve=True)
    if "precision" in config["model"]:
        config["model"]["precision"] = "fp32"  # the browser computes in float32: compare with float32
    torch.manual_seed(seed)
    nca = NCA(instantiate(config["perception"]), **config["model"])
    g = torch.Generator().manual_seed(seed)
    conv1, conv2 = nca.update[0], nca.update[-1]
    with torch.no_grad():
        w1, w2 = conv1.weight[:, :, 0, 0], conv2.weight[:, :, 0, 0]
        w2.copy_(torch.randn(w2.shape, generator=g) * 0.1)
        for c in range(nca.channels):
            w1[2 * c].zero_()
            w1[2 * c + 1].zero_()
            w1[2 * c, c], w1[2 * c + 1, c] = 1.0, -1.0
            conv1.bias[2 * c] = conv1.bias[2 * c + 1] = 0.0
            w2[:, 2 * c : 2 * c + 2] = 0.0
            w2[c, 2 * c], w2[c, 2 * c + 1] = -0.2, 0.2
        conv2.bias.copy_(torch.randn(nca.channels, generator=g) * 0.01)
        conv2.bias[3] = 0.06
        p = nca.perception
        if isinstance(p.weight, torch.nn.Parameter):
            p.weight.add_(torch.randn(p.weight.shape, generator=g) * 0.05)
        if hasattr(p, "scale"):
            p.scale.copy_(torch.linspace(0.6, 1.4, p.scale.numel()))
    return nca, config


def fp32_if_supported(model_config: dict) -> dict:
    return {"precision": "fp32"} if "precision" in model_config else {}


def save_checkpoint(nca: NCA, config: dict, path: Path, step: int = 0) -> Path:
    """The parts of a Lightning checkpoint that ``load_nca`` reads: the run config and the ``nca.`` weights."""
    state = {f"nca.{k}": v for k, v in nca.state_dict().items()}
    torch.save({"hyper_parameters": {"config": config}, "state_dict": state, "global_step": step}, path)
    return path


@contextlib.contextmanager
def one_thread():
    """Small rollouts run many times faster on one thread than on two threads of a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def reference_rollout(
    nca: NCA, grid: tuple[int, int] = (GRID, GRID), steps: int = PARITY_STEPS
) -> np.ndarray:
    """The PyTorch rollout the page must match: ``steps`` from the seed with every cell firing."""
    nca.fire_rate = 1.0
    with torch.no_grad(), one_thread():
        return nca.rollout(nca.seed(1, *grid), steps)[0].numpy()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Every perception exported through the CLI into ``<root>/<perception>/``, plus the pretrained flower."""
    root = tmp_path_factory.mktemp("demo_site")
    work = tmp_path_factory.mktemp("demo_ckpt")
    models = {}
    for name in PERCEPTIONS:
        nca, config = stable_random_nca(name, work / name)
        ckpt = save_checkpoint(nca, config, work / f"{name}.ckpt", step=7)
        assert demo_main(["export", str(ckpt), str(root / name), "--name", name]) == 0
        models[name] = (nca, reference_rollout(nca))
    export_pretrained(root / "flower")
    server = make_server(root, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}", models
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    exe = find_chromium()
    if exe is None:
        pytest.skip(f"no Chromium found for the browser demo tests: {ENABLE_HINT}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip(f"playwright is not installed for the browser demo tests: {ENABLE_HINT}")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium_profile")),
            executable_path=exe,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1200, "height": 820},
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser):
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    yield page
    page.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def open_demo(page, url: str) -> dict:
    page.goto(url)
    page.evaluate("() => window.nca.ready.then(() => true)")
    return page.evaluate("() => ({backend: nca.backend, error: nca.backendError, meta: nca.meta})")


def read_state(page, meta: dict) -> np.ndarray:
    """The page's state as ``C x H x W`` float32 (sent as base64 bytes: exact)."""
    b64 = page.evaluate(
        """() => { const b = new Uint8Array(nca.readState().buffer); let s = '';
        for (let i = 0; i < b.length; i += 0x8000) s += String.fromCharCode.apply(null, b.subarray(i, i + 0x8000));
        return btoa(s); }"""
    )
    h, w = meta["grid"]
    return np.frombuffer(base64.b64decode(b64), dtype="<f4").reshape(meta["channels"], h, w)


def alive(state: np.ndarray, threshold: float = 0.1) -> np.ndarray:
    return alive_mask(torch.from_numpy(state.copy())[None], threshold)[0, 0].numpy()


# --- export and serve (no browser) ----------------------------------------------------------------------------


def test_export_writes_the_page_and_exact_weights(site):
    root, _, models = site
    for name in PERCEPTIONS:
        folder = root / name
        for f in (*STATIC_FILES, "model.json", "model.bin", "model.js", "target.png"):
            assert (folder / f).is_file(), f"{name}: {f} missing"
        meta = json.loads((folder / "model.json").read_text())
        nca = models[name][0]
        p = nca.perception
        assert meta["format"] == FORMAT and meta["name"] == name
        assert meta["perception"]["name"] == name and meta["perception"]["n_ops"] == p.n_ops
        assert meta["perception"]["kernel_size"] == p.kernel_size
        assert (meta["channels"], meta["hidden"], meta["grid"]) == (16, HIDDEN, [GRID, GRID])
        assert meta["info"]["iterations"] == 7
        blob = np.frombuffer((folder / "model.bin").read_bytes(), dtype="<f4")
        assert blob.size == meta["n_floats"]
        for key, expected in model_tensors(nca).items():
            t = meta["tensors"][key]
            got = blob[t["offset"] : t["offset"] + expected.numel()].reshape(t["shape"])
            np.testing.assert_array_equal(got, expected.numpy(), err_msg=f"{name}: {key}")
        scale = blob[meta["tensors"]["scale"]["offset"] :][: 16 * p.n_ops]
        if name == "trainable_scale":
            np.testing.assert_allclose(scale, p.scale.detach().repeat(16).numpy())
        else:
            assert (scale == 1).all()


def test_export_cli_reports_a_bad_checkpoint(tmp_path, capsys):
    assert demo_main(["export", str(tmp_path / "missing.ckpt"), str(tmp_path / "out")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "out" / "model.json").exists()


def test_shipped_pretrained_flower_loads():
    folder = pretrained_dir("flower")
    meta = json.loads((folder / "model.json").read_text())
    assert meta["format"] == FORMAT and meta["perception"]["name"] == "sobel3"
    assert (folder / "model.bin").stat().st_size == 4 * meta["n_floats"] < 200_000
    assert (folder / "MODEL_CARD.md").is_file()
    assert not list(folder.glob("*.ckpt"))


def test_serve_prints_a_url_and_serves_the_page():
    proc = subprocess.Popen(
        [sys.executable, "-m", "ncalab.demo", "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    try:
        seen, deadline = [], time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
            seen.append(line)
            if "http://127.0.0.1:" in line:
                break
        assert "http://127.0.0.1:" in seen[-1], "".join(seen)
        url = seen[-1].split(" at ")[1].split()[0]
        with urllib.request.urlopen(url, timeout=10) as resp:
            html = resp.read().decode()
        assert resp.status == 200 and "nca.js" in html and "app.js" in html
        with urllib.request.urlopen(url.replace("index.html", "model.json"), timeout=10) as resp:
            assert json.loads(resp.read())["format"] == FORMAT
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# --- in the browser ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["js", "webgl"])
def test_parity_with_pytorch_for_every_perception(site, page, backend):
    """64 steps at fire rate 1 from the seed: the page's state matches the PyTorch rollout (RGBA < 1e-3)."""
    _, base, models = site
    report = []
    for name in PERCEPTIONS:
        info = open_demo(page, f"{base}/{name}/index.html?backend={backend}&paused=1")
        if backend == "webgl" and info["backend"] != "webgl":
            pytest.skip(f"no WebGL2 in this headless Chromium ({info['error']}); the JS backend is tested")
        page.evaluate(f"() => {{ nca.setFireRate(1); nca.reset(); nca.step({PARITY_STEPS}); }}")
        state = read_state(page, info["meta"])
        reference = models[name][1]
        seed = models[name][0].seed(1, GRID, GRID)[0].numpy()
        # The update is not trivial: the pattern grew and changed, so parity means something.
        assert alive(reference).sum() > 100 and np.abs(reference[:4] - seed[:4]).max() > 0.1, name
        rgba_err = float(np.abs(state[:4] - reference[:4]).max())
        all_err = float(np.abs(state - reference).max())
        report.append(f"{name}: rgba {rgba_err:.2e}, all channels {all_err:.2e}")
        assert rgba_err < PARITY_TOL, (
            f"{backend}/{name}: max |RGBA error| {rgba_err} after {PARITY_STEPS} steps"
        )
        assert all_err < PARITY_TOL, f"{backend}/{name}: max |error| {all_err}"
    print(f"[{backend}] " + "; ".join(report))


def test_backends_agree_with_a_stochastic_fire_mask(site, page):
    """Fire rate 0.5 with the page's seeded RNG: WebGL2 and plain JS give the same pattern, and a different one
    from fire rate 1 (cells really are skipped)."""
    _, base, models = site
    states = {}
    for backend in ("js", "webgl"):
        info = open_demo(page, f"{base}/trainable_scale/index.html?backend={backend}&paused=1&seed=5")
        if info["backend"] != backend:
            pytest.skip(f"no WebGL2 in this headless Chromium ({info['error']})")
        page.evaluate("() => { nca.setFireRate(0.5); nca.reset(); nca.step(48); }")
        states[backend] = read_state(page, info["meta"])
    assert np.abs(states["js"] - states["webgl"]).max() < PARITY_TOL
    assert np.abs(states["js"][:4] - models["trainable_scale"][1][:4]).max() > 0.05
    assert alive(states["js"]).sum() > 50


@pytest.fixture(scope="module")
def flower():
    """The shipped flower as PyTorch sees it, rebuilt from its exported weights (tests the export both ways)."""
    folder = pretrained_dir("flower")
    meta = json.loads((folder / "model.json").read_text())
    config = meta["config"]
    nca = NCA(instantiate(config["perception"]), **{**config["model"], **fp32_if_supported(config["model"])})
    blob = torch.from_numpy(np.frombuffer((folder / "model.bin").read_bytes(), dtype="<f4").copy())
    conv1, conv2 = nca.update[0], nca.update[-1]
    with torch.no_grad():
        for key, param in (
            ("w1", conv1.weight),
            ("b1", conv1.bias),
            ("w2", conv2.weight),
            ("b2", conv2.bias),
        ):
            t = meta["tensors"][key]
            param.copy_(blob[t["offset"] : t["offset"] + param.numel()].view_as(param))
    t = meta["tensors"]["kernels"]
    np.testing.assert_array_equal(
        model_tensors(nca)["kernels"].numpy().ravel(), blob[t["offset"] :][: int(np.prod(t["shape"]))]
    )
    data = config["data"]
    target = load_target(data["target"], data["target_size"], data["padding"]).numpy()
    return nca.eval(), meta, target


def test_pretrained_flower_parity(site, page, flower):
    nca, meta, _ = flower
    _, base, _ = site
    info = open_demo(page, f"{base}/flower/index.html?paused=1&backend=js")
    page.evaluate(f"() => {{ nca.setFireRate(1); nca.reset(); nca.step({PARITY_STEPS}); }}")
    state = read_state(page, info["meta"])
    reference = reference_rollout(nca, tuple(meta["grid"]))
    err = float(np.abs(state[:4] - reference[:4]).max())
    assert err < PARITY_TOL, f"pretrained flower on {info['backend']}: max |RGBA error| {err}"


@pytest.mark.parametrize("backend", ["js", "webgl"])
def test_erase_by_drag_then_regrow(site, page, flower, tmp_path, backend):
    """Drag across the grown flower: the erased cells are dead; stepping on, alive count and error recover.

    Recovery is judged against an undamaged run with the same fire masks (the page's RNG is seeded), so that
    the model's own drift over many steps is not mistaken for a failure to regrow.
    """
    _, base, _ = site
    _, meta, target = flower
    info = open_demo(page, f"{base}/flower/index.html?paused=1&seed=3&backend={backend}")
    if info["backend"] != backend:
        pytest.skip(f"no WebGL2 in this headless Chromium ({info['error']})")
    h, w = meta["grid"]
    grow, regrow = 64, 96

    def measure():
        state = read_state(page, info["meta"])
        return state, int(alive(state).sum()), float(np.abs(np.clip(state[:4], 0, 1) - target).mean())

    page.evaluate(f"() => {{ nca.reset(); nca.step({grow + regrow}); }}")
    _, alive_ctrl, err_ctrl = measure()
    page.evaluate(f"() => {{ nca.reset(); nca.step({grow}); }}")
    _, alive0, err0 = measure()
    assert alive0 > 200 and err0 < 0.03, (alive0, err0)

    # A horizontal stroke through the middle of the pattern, with real pointer events on the canvas.
    page.evaluate("() => { nca.setBrush(2); nca.render(); }")
    box = page.locator("#board").bounding_box()
    # Through the petals below the centre (the model regrows the yellow centre itself less well: see its card).
    row = (5 * h) // 8
    y = box["y"] + (row + 0.5) * box["height"] / h
    page.mouse.move(box["x"] + 2, y)
    page.mouse.down()
    for j in range(0, w + 1, 2):
        page.mouse.move(box["x"] + (j + 0.5) * box["width"] / w, y)
    page.mouse.up()
    damaged, alive1, err1 = measure()
    assert np.all(damaged[:, row - 1 : row + 2, 1:-1] == 0), "the stroke's cells are not all erased"
    assert not alive(damaged)[row, :].any(), "cells on the stroke are still alive"
    assert alive1 < alive0 - w // 2 and err1 > err0 + 0.005, (alive0, alive1, err0, err1)
    page.evaluate("() => nca.render()")
    page.screenshot(path=str(tmp_path / "demo_damaged.png"))

    page.evaluate(f"() => nca.step({regrow})")
    _, alive2, err2 = measure()
    print(
        f"[{backend}] alive {alive0} -> erased {alive1} -> regrown {alive2} (undamaged {alive_ctrl}); "
        f"RGBA error {err0:.4f} -> {err1:.4f} -> {err2:.4f} (undamaged {err_ctrl:.4f})"
    )
    assert abs(alive2 - alive_ctrl) <= 0.1 * alive_ctrl, "the alive count did not recover"
    assert err2 - err_ctrl < 0.25 * (err1 - err0), "the pattern did not regrow"

    # A click (no drag) plants a seed in empty space.
    page.mouse.click(box["x"] + 1.5 * box["width"] / w, box["y"] + 1.5 * box["height"] / h)
    planted = read_state(page, info["meta"])
    assert planted[3, 1, 1] == 1 and (planted[3:, 1, 1] == 1).all() and (planted[:3, 1, 1] == 0).all()

    page.evaluate("() => { nca.reset(); nca.step(96); nca.render(); }")
    shot = tmp_path / "demo_screenshot.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    if backend != "js":
        return
    try:
        shutil.copyfile(shot, SCREENSHOT)
        shutil.copyfile(
            tmp_path / "demo_damaged.png", SCREENSHOT.with_name("ncalab_demo_screenshot_damaged.png")
        )
    except OSError:
        pass
    print(f"screenshots: {shot}, {SCREENSHOT}")


def test_views_file_loading_and_opening_from_disk(site, page):
    root, base, _ = site
    info = open_demo(page, f"{base}/flower/index.html?paused=1&backend=js")
    assert info["backend"] == "js"
    page.evaluate(
        "() => { nca.step(8); nca.setView('all'); nca.render(); nca.setView('ch5'); nca.render(); }"
    )
    assert page.locator("#view option").count() == 2 + 16
    # Another exported model by file: model.json + model.bin.
    page.set_input_files(
        "#file", [str(root / "sobel5_diag" / "model.json"), str(root / "sobel5_diag" / "model.bin")]
    )
    page.wait_for_function("() => nca.meta.perception.name === 'sobel5_diag'")
    assert page.evaluate("() => nca.meta.grid") == [GRID, GRID]
    # Opened from disk (file://): the embedded model.js is used, nothing is fetched.
    info = open_demo(page, (root / "sobel3" / "index.html").as_uri() + "?paused=1")
    assert info["meta"]["perception"]["name"] == "sobel3"
    state = read_state(page, info["meta"])
    assert state[3, GRID // 2, GRID // 2] == 1 and state[3].sum() == 1


def test_steps_per_second_readout(site, page):
    _, base, _ = site
    open_demo(page, f"{base}/trainable_scale/index.html?speed=4")
    page.wait_for_function("() => nca.sps > 0", timeout=15_000)
    assert float(page.locator("#sps").inner_text()) > 0
