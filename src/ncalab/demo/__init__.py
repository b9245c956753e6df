"""Interactive browser demo: export any ncalab checkpoint as a self-contained static page, or serve it.

    python -m ncalab.demo export [<checkpoint.ckpt>] <folder>  # index.html + JS/CSS + weights, any static host
    python -m ncalab.demo serve [<checkpoint.ckpt> | <folder>] # export to a temporary folder, serve on 127.0.0.1

Without a checkpoint, both take every pretrained model shipped with ncalab (:func:`export_pretrained`): the page
opens on :data:`DEFAULT_PRETRAINED` (``--pretrained NAME`` picks another) and offers the others in a model picker.

The page runs the automaton entirely in the browser at full precision (float32 weights, no quantisation):
WebGL2 (float render targets) on a GPU, plain JavaScript (``Float32Array``) where WebGL2 is missing or only
emulated in software (SwiftShader, where plain JS is faster); ``?backend=webgl|js`` forces one. Every perception works: the exported weights are the depthwise operator weight exactly as the
model applies it (``C*n_ops x 1 x k x k``, channel-major; a bank of mixed kernel sizes zero-padded to its largest),
a per-response scale factor (ones for unscaled perceptions), and the two 1x1 convolutions of the update network:
the perception contract of ``ncalab.perception.Perception``. A multi-scale perception
(``ncalab.perception.MultiScalePerception``) exports its bank (``C*n_bank x 1 x k x k``, read at every level) as
``kernels``, ones as ``scale`` (``C*n_ops``), and ``levels`` and ``upsample`` in ``model.json``'s perception; the
page pools the state, applies the bank and upsamples per level as PyTorch does.

Files written by :func:`export_model` (one model):

``model.json``  metadata: perception, channels, hidden, fire rate, alive threshold, grid, tensor table, config
``model.bin``   the float32 (little-endian) tensors listed in ``model.json``
``model.js``    the same model embedded (base64), so that ``index.html`` also works opened from disk
``target.png``  the target composited on white (when the run's target can still be found)
``models.json`` the models the page offers (:data:`INDEX_FORMAT`): here one, at ``path`` ``""`` (the folder itself)
``models.js``   the same index as a script (``window.NCA_MODEL_INDEX``), for pages opened from disk
``index.html``, ``nca.js``, ``app.js``, ``style.css``  the page

:func:`export_models` / :func:`export_pretrained` (several models) write the page and ``models.json``/``models.js``
at the top, and each model's files (as above, plus its ``MODEL_CARD.md``) in ``models/<name>/``. Served over HTTP
the page fetches ``<path>model.json`` + ``<path>model.bin``; opened from disk (``file://``, where ``fetch`` is not
allowed) it loads ``<path>model.js`` with a ``<script>`` element instead.
"""

from __future__ import annotations

import base64
import functools
import http
import http.server
import json
import re
import shutil
import sys
import urllib.parse
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ncalab.errors import NCALabError, kind_of
from ncalab.nca import NCA
from ncalab.perception import MultiScalePerception, Perception
from ncalab.render import decoder_tensors

__all__ = [
    "DEFAULT_PRETRAINED",
    "FORMAT",
    "check_export_folder",
    "INDEX_FORMAT",
    "STATIC_FILES",
    "export_checkpoint",
    "export_model",
    "export_models",
    "export_pretrained",
    "make_server",
    "model_tensors",
    "pretrained_dir",
    "write_static",
]

FORMAT = "ncalab-demo/1"
INDEX_FORMAT = "ncalab-demo-index/1"
# The shipped pretrained model that `python -m ncalab.demo serve` (`make demo`) opens on: the one place it is named.
DEFAULT_PRETRAINED = "flower"
STATIC_FILES = ("index.html", "nca.js", "app.js", "style.css")
MODEL_FILES = ("model.json", "model.bin", "model.js", "target.png")
CARD = "MODEL_CARD.md"
INDEX_FILES = ("models.json", "models.js")
MODELS_DIR = "models"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class ExportError(NCALabError):
    """A model that the demo cannot represent, or a path that cannot be exported or served."""


def _update_convs(nca: NCA) -> tuple[nn.Conv2d, nn.Conv2d]:
    convs = [m for m in nca.update.modules() if isinstance(m, nn.Conv2d)]
    if len(convs) != 2 or any(c.kernel_size != (1, 1) for c in convs):
        raise ExportError(
            "the demo expects an update network of two 1x1 convolutions with a ReLU between them"
        )
    return convs[0], convs[1]


@torch.no_grad()
def _response_scale(perception) -> torch.Tensor:
    """The per-response factor of the perception contract (``response_scale()``; ones when it is None), checked
    against what ``scale_responses`` computes, so that a perception whose two disagree is refused."""
    n = perception.channels * perception.n_ops
    factor = perception.response_scale()
    factor = torch.ones(n) if factor is None else factor.detach().float().cpu().reshape(-1)
    if factor.shape != (n,):
        raise ExportError(
            f"perception {perception.name!r}: response_scale() has {factor.numel()} values, expected {n}"
        )
    probe = torch.linspace(-1.0, 1.0, n).view(1, -1, 1, 1).expand(1, n, 2, 2)
    applied = perception.scale_responses(probe.to(perception.operator_weight().dtype)).float().cpu()
    if not torch.allclose(applied, probe * factor.view(1, -1, 1, 1)):
        raise ExportError(
            f"perception {perception.name!r}: scale_responses does not multiply by response_scale(); not exportable"
        )
    return factor


def _is_multiscale(p: Perception) -> bool:
    """A multi-scale perception that computes what its class does (a subclass with another forward is not)."""
    return isinstance(p, MultiScalePerception) and type(p).forward is MultiScalePerception.forward


@torch.no_grad()
def model_tensors(nca: NCA) -> dict[str, torch.Tensor]:
    """The float32 tensors the browser needs, in the exact layout the PyTorch model applies them: the perception
    contract's ``operator_weight()`` and ``response_scale()`` (``ncalab.perception.Perception``), then the update
    network. A bank of mixed kernel sizes arrives already zero-padded to its largest size."""
    p = nca.perception
    multiscale = _is_multiscale(p)
    if type(p).forward is not Perception.forward and not multiscale:
        raise ExportError(
            f"perception {p.name!r} ({type(p).__name__}) computes its own forward: the page runs only what "
            "operator_weight() and response_scale() describe, or a multi-scale bank"
        )
    if multiscale:  # the bank, read at every level (levels and upsample go in model.json); no response scale
        kernels = p.bank_weight().detach().float().cpu()
        n = p.channels * p.n_bank
        scale = torch.ones(p.channels * p.n_ops)
    else:
        kernels = p.operator_weight().detach().float().cpu()
        n = p.channels * p.n_ops
        scale = _response_scale(p)
    if kernels.shape != (n, 1, p.kernel_size, p.kernel_size):
        raise ExportError(
            f"operator weight has shape {tuple(kernels.shape)}, expected {(n, 1, p.kernel_size, p.kernel_size)}"
        )
    conv1, conv2 = _update_convs(nca)
    hidden = conv1.out_channels
    tensors = {
        "kernels": kernels,
        "scale": scale,
        "w1": conv1.weight.detach().float().cpu().reshape(hidden, p.out_channels),
        "b1": (conv1.bias if conv1.bias is not None else torch.zeros(hidden)).detach().float().cpu(),
        "w2": conv2.weight.detach().float().cpu().reshape(nca.channels, hidden),
        "b2": (conv2.bias if conv2.bias is not None else torch.zeros(nca.channels)).detach().float().cpu(),
        **decoder_tensors(nca.render),  # render=decoder: the per-pixel network the page draws the image with
    }
    for name, t in tensors.items():
        if not torch.isfinite(t).all():
            raise ExportError(f"tensor {name} holds non-finite values: the checkpoint is broken")
    return tensors


def _target_preview(config: dict[str, Any], folder: Path) -> str | None:
    """Write ``target.png`` (the padded target over white); None when the target cannot be found any more."""
    data = config.get("data") or {}
    if "target" not in data:
        return None
    try:
        from PIL import Image

        from ncalab.targets import load_target

        target = load_target(
            str(data["target"]),
            int(data.get("target_size", 40)),
            int(data.get("padding", 16)),
            bool(data.get("allow_upscale", False)),
            bool(data.get("seed_on_pattern", False)),
            cell=int((config.get("render") or {}).get("scale", 1)),
        )
    except Exception:  # noqa: BLE001 - a preview is optional; the model works without it
        return None
    rgb = (target[:3] + 1.0 - target[3:4]).clamp(0, 1)
    array = (rgb.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    Image.fromarray(array).save(folder / "target.png")
    return "target.png"


def _grid(config: dict[str, Any], grid: tuple[int, int] | None, scale: int = 1) -> list[int]:
    """The cell grid: given, or the run's image side (target_size + 2 x padding) over the renderer's scale."""
    if grid is not None:
        return [int(grid[0]), int(grid[1])]
    data = config.get("data") or {}
    try:
        side = int(data["target_size"]) + 2 * int(data["padding"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportError("the run config has no data.target_size/data.padding: pass the grid size") from exc
    return [side // scale, side // scale]


def written_by_export(folder: Path) -> bool:
    """Whether ``folder`` holds a page written by an earlier export (its ``models.json`` or ``model.json`` in our
    format): exporting into it again replaces only what that export wrote."""
    for name, fmt in (("models.json", INDEX_FORMAT), ("model.json", FORMAT)):
        try:
            meta = json.loads((folder / name).read_text())
        except (OSError, ValueError, RecursionError):
            continue
        if isinstance(meta, dict) and meta.get("format") == fmt:
            return True
    return False


def check_export_folder(folder: str | Path, force: bool = False) -> Path:
    """Refuse to export into a folder that holds files of someone else's (an ``index.html``, ``style.css`` or
    ``model.json`` there would be overwritten): only an empty or new folder, or one an earlier export wrote, unless
    ``force``."""
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ExportError(f"{str(folder)!r} is {kind_of(folder)}, not a folder")
    if force or not folder.exists() or written_by_export(folder):
        return folder
    try:
        entries = sorted(p.name for p in folder.iterdir())
    except OSError as exc:
        raise ExportError(f"cannot read the folder {str(folder)!r} ({exc.strerror or exc})") from exc
    if entries:
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise ExportError(
            f"{str(folder)!r} is not empty ({shown}) and was not written by an export; exporting would overwrite "
            "files such as index.html, style.css and model.json there. Choose an empty or new folder, or pass --force"
        )
    return folder


def write_static(folder: str | Path) -> Path:
    """Copy the page (HTML, JS, CSS) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    static = resources.files("ncalab.demo") / "static"
    for name in STATIC_FILES:
        (folder / name).write_bytes((static / name).read_bytes())
    return folder


def export_model(
    nca: NCA,
    config: dict[str, Any],
    folder: str | Path,
    name: str | None = None,
    grid: tuple[int, int] | None = None,
    info: dict[str, Any] | None = None,
    force: bool = False,
) -> Path:
    """Write the page and ``nca``'s weights into ``folder``; returns the path of ``index.html``.

    ``folder`` must be new, empty or written by an earlier export, unless ``force`` (:func:`check_export_folder`)."""
    folder = check_export_folder(folder, force)
    tensors = model_tensors(nca)  # fails on a model the page cannot run, before anything is written
    p = nca.perception
    page_grid = _grid(config, grid, nca.render.scale)
    p.check_grid(*page_grid)  # a multi-scale perception's coarsest level must fit the page's grid
    write_static(folder)
    table, chunks, offset = {}, [], 0
    for key, t in tensors.items():
        flat = t.contiguous().view(-1).numpy().astype("<f4")
        table[key] = {"offset": offset, "shape": list(t.shape)}
        chunks.append(flat.tobytes())
        offset += flat.size
    blob = b"".join(chunks)
    meta: dict[str, Any] = {
        "format": FORMAT,
        "name": name or (config.get("data") or {}).get("target") or "model",
        "perception": {
            "name": p.name,
            "class": type(p).__name__,
            "n_ops": p.n_ops,
            "kernel_size": p.kernel_size,
            "scale_mode": getattr(p, "scale_mode", None),  # a label for the page
            "ops": list(p.ops) or None,  # a fixed bank's operators, in response order
            # a multi-scale bank: read at `levels` scales, upsampled so (n_ops = levels x len(ops))
            **({"levels": p.levels, "upsample": p.upsample} if _is_multiscale(p) else {}),
        },
        "channels": nca.channels,
        "hidden": int(tensors["w1"].shape[0]),
        "fire_rate": float(nca.fire_rate),
        "alive_threshold": float(nca.alive_threshold),
        "grid": page_grid,
        "render": nca.render.config(),  # cells: one pixel per cell; decoder: the image is grid x scale pixels
        "dtype": "float32",
        "byte_order": "little",
        "weights": "model.bin",
        "n_floats": offset,
        "tensors": table,
        "target": None,
        "info": info or {},
        "config": {
            k: config[k] for k in ("perception", "render", "model", "data", "rollout", "seed") if k in config
        },
    }
    for stale in (*MODEL_FILES, *INDEX_FILES):
        (folder / stale).unlink(missing_ok=True)
    meta["target"] = _target_preview(config, folder)
    (folder / "model.bin").write_bytes(blob)
    text = json.dumps(meta, indent=1, default=str)
    (folder / "model.json").write_text(text)
    _write_model_js(folder, text, blob)
    _write_index(folder, [_index_entry(meta["name"], "", json.loads(text), card=False)], meta["name"])
    return folder / "index.html"


def _write_model_js(folder: Path, meta_text: str, blob: bytes) -> None:
    embedded = base64.b64encode(blob).decode("ascii")
    (folder / "model.js").write_text(
        "// The model embedded for pages opened from disk (file://); model.json + model.bin hold the same.\n"
        f"window.NCA_EMBEDDED_MODEL = {{meta: {meta_text.strip()}, weights: {json.dumps(embedded)}}};\n"
    )


def _index_entry(name: str, path: str, meta: dict[str, Any], card: bool) -> dict[str, Any]:
    """What the model picker shows for one model (read from its ``model.json``); ``path`` ends with ``/`` or is ``""``."""
    perception = meta.get("perception") or {}
    info = meta.get("info") or {}
    return {
        "name": name,
        "path": path,
        "perception": {
            k: perception.get(k)
            for k in ("name", "n_ops", "kernel_size", "scale_mode", "ops", "levels", "upsample")
            if k in perception or k not in ("levels", "upsample")  # those two: a multi-scale bank's
        },
        "grid": meta.get("grid"),
        "channels": meta.get("channels"),
        "hidden": meta.get("hidden"),
        "fire_rate": meta.get("fire_rate"),
        "iterations": info.get("iterations"),
        "target": path + meta["target"] if meta.get("target") else None,
        "card": path + CARD if card else None,
    }


def _write_index(folder: Path, entries: list[dict[str, Any]], default: str) -> None:
    index = {"format": INDEX_FORMAT, "default": default, "models": entries}
    text = json.dumps(index, indent=1)
    (folder / "models.json").write_text(text + "\n")
    (folder / "models.js").write_text(
        "// The models this page offers, for pages opened from disk (file://); models.json holds the same.\n"
        f"window.NCA_MODEL_INDEX = {text};\n"
    )


def _checkpoint_info(path: Path) -> dict[str, Any]:
    from ncalab.checkpoint import read_checkpoint

    ckpt = read_checkpoint(path)
    return {"checkpoint": path.name, "iterations": ckpt.get("global_step")}


def export_checkpoint(
    checkpoint: str | Path, folder: str | Path, name: str | None = None, force: bool = False
) -> Path:
    """``python -m ncalab.demo export``: rebuild the model from ``checkpoint`` alone and export it."""
    from ncalab.checkpoint import load_nca

    check_export_folder(folder, force)
    checkpoint = Path(checkpoint).expanduser()
    nca, config = load_nca(checkpoint)
    return export_model(nca, config, folder, name=name, info=_checkpoint_info(checkpoint), force=force)


def pretrained_dir(name: str = DEFAULT_PRETRAINED) -> Path:
    """The folder of a pretrained model shipped with the package (``model.json``, ``model.bin``, card)."""
    from ncalab.pretrained import names

    available = names()
    if name not in available:
        raise ExportError(f"no pretrained model {name!r}; shipped: {', '.join(available) or 'none'}")
    return Path(str(resources.files("ncalab.pretrained") / name))


def _read_model_folder(name: str, source: Path) -> tuple[str, bytes]:
    """``model.json``'s text and ``model.bin``'s bytes of an exported model folder, checked against each other."""
    try:
        text = (source / "model.json").read_text()
        meta = json.loads(text)
        blob = (source / "model.bin").read_bytes()
    except (OSError, ValueError, RecursionError) as exc:
        raise ExportError(f"model {name!r}: {str(source)!r} is not an exported model folder ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("weights", "model.bin") != "model.bin":
        raise ExportError(f"model {name!r}: {str(source / 'model.json')!r} does not describe model.bin")
    if meta.get("format") != FORMAT:
        raise ExportError(f"model {name!r}: {str(source / 'model.json')!r} is not in the {FORMAT} format")
    if len(blob) != 4 * int(meta.get("n_floats", -1)):
        raise ExportError(
            f"model {name!r}: {len(blob)} bytes of weights, model.json expects 4 x {meta.get('n_floats')}"
        )
    return text, blob


def export_models(
    folder: str | Path, sources: Mapping[str, str | Path], default: str | None = None, force: bool = False
) -> Path:
    """The page offering several exported models: ``sources`` maps a name (shown in the model picker, and the
    folder ``models/<name>/``) to an exported model folder (``model.json`` + ``model.bin``, optionally
    ``target.png`` and ``MODEL_CARD.md``). The page opens on ``default`` (the first one when None)."""
    if not sources:
        raise ExportError("no models to export")
    names = list(sources)
    for name in names:
        if not _SAFE_NAME.match(name):
            raise ExportError(f"model name {name!r} is not usable as a folder name (letters, digits, _ . -)")
    default = names[0] if default is None else default
    if default not in sources:
        raise ExportError(f"the default model {default!r} is not among the exported ones: {', '.join(names)}")
    folder = write_static(check_export_folder(folder, force))
    for stale in (*MODEL_FILES, *INDEX_FILES):
        (folder / stale).unlink(missing_ok=True)
    entries = []
    for name in names:
        source = Path(sources[name])
        text, blob = _read_model_folder(name, source)
        out = folder / MODELS_DIR / name
        out.mkdir(parents=True, exist_ok=True)
        for stale in (*MODEL_FILES, CARD):
            (out / stale).unlink(missing_ok=True)
        meta = json.loads(text)
        (out / "model.json").write_text(text)
        (out / "model.bin").write_bytes(blob)
        for extra in ("target.png", CARD):
            if (source / extra).is_file():
                shutil.copyfile(source / extra, out / extra)
        if meta.get("target") and not (out / meta["target"]).is_file():
            meta["target"] = None
        _write_model_js(out, text, blob)
        entries.append(_index_entry(name, f"{MODELS_DIR}/{name}/", meta, card=(out / CARD).is_file()))
    _write_index(folder, entries, default)
    return folder / "index.html"


def export_pretrained(
    folder: str | Path, default: str | None = None, names: Iterable[str] | None = None, force: bool = False
) -> Path:
    """The page with the pretrained models shipped with ncalab (all of them unless ``names``), no checkpoint
    needed. It opens on ``default``: :data:`DEFAULT_PRETRAINED` when None (the first shipped model if that one
    is not shipped)."""
    from ncalab.pretrained import names as shipped

    chosen = list(names) if names is not None else shipped()
    if not chosen:
        raise ExportError("no pretrained models are shipped with this ncalab")
    if default is None:
        default = DEFAULT_PRETRAINED if DEFAULT_PRETRAINED in chosen else chosen[0]
    pretrained_dir(default)  # a clear error for an unknown name
    if default not in chosen:
        chosen.insert(0, default)
    return export_models(folder, {name: pretrained_dir(name) for name in chosen}, default, force=force)


# A connection that sends nothing for this long is closed (each open connection holds a thread).
IDLE_TIMEOUT_S = 30.0


class _Handler(http.server.SimpleHTTPRequestHandler):
    # Model cards (the page links them) shown as text rather than downloaded.
    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".js": "text/javascript",
        ".md": "text/plain; charset=utf-8",
    }

    def setup(self) -> None:
        self.timeout = IDLE_TIMEOUT_S  # read at setup: the socket's timeout (the base class closes on it)
        super().setup()

    def send_head(self):
        # A path the file system cannot take (a NUL byte, from %00) is a bad request, not a traceback.
        if "\x00" in urllib.parse.unquote(self.path):
            self.send_error(http.HTTPStatus.BAD_REQUEST, "bad path")
            return None
        return super().send_head()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        # One line for a request that failed (a client gone mid-answer, ...), not a traceback per request.
        exc = sys.exc_info()[1]
        log(f"demo server: request from {client_address[0]} failed: {type(exc).__name__}: {exc}")


class _QuietHandler(_Handler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


def make_server(folder: str | Path, port: int = 8000, host: str = "127.0.0.1", quiet: bool = True):
    """An HTTP server for ``folder`` on ``host:port`` (port 0 picks a free one); call ``serve_forever()``."""
    handler = functools.partial(_QuietHandler if quiet else _Handler, directory=str(folder))
    return _Server((host, port), handler)  # a thread per connection, daemon threads


def url_of(server) -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}/index.html"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
