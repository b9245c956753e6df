"""Reading checkpoints safely (``weights_only=True``) and checking that they fit the run that loads them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ncalab.errors import CheckpointError
from ncalab.nca import NCA

# Settings that decide the shapes and meaning of what a checkpoint holds.
COMPATIBLE_KEYS = (
    "perception",
    "model.channels",
    "model.hidden",
    "model.update_bias",
    "data.target_size",
    "data.padding",
    "data.pool_size",
)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file without running any code in it; raise a clear error when that fails."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"ckpt_path={str(path)!r}: no such file (expected a .ckpt written by ncalab)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to unpickle means the same thing to the user
        raise CheckpointError(
            f"ckpt_path={str(path)!r} is not a readable checkpoint ({type(exc).__name__}: {str(exc)[:200]})"
        ) from exc
    config = ckpt.get("hyper_parameters", {}).get("config") if isinstance(ckpt, dict) else None
    if not config or "state_dict" not in ckpt:
        raise CheckpointError(f"ckpt_path={str(path)!r} is not an ncalab checkpoint (no saved run config)")
    return ckpt


# What a key meant in checkpoints written before it existed.
LEGACY_DEFAULTS = {"model.update_bias": True}


def _select(config: dict, key: str) -> Any:
    return OmegaConf.select(OmegaConf.create(config), key, default=LEGACY_DEFAULTS.get(key))


def check_compatible(ckpt: dict[str, Any], config: dict[str, Any], path: str | Path) -> None:
    """Raise :class:`CheckpointError` naming every setting where the checkpoint and this run differ."""
    saved = ckpt["hyper_parameters"]["config"]
    diffs = []
    for key in COMPATIBLE_KEYS:
        a, b = _select(saved, key), _select(config, key)
        if a != b:
            if key == "perception":
                a = f"{a.get('name')} {a}" if isinstance(a, dict) else a
                b = f"{b.get('name')} {b}" if isinstance(b, dict) else b
            diffs.append(f"  {key}: checkpoint has {a}, this run has {b}")
    if diffs:
        name = (saved.get("perception") or {}).get("name", "?")
        raise CheckpointError(
            f"ckpt_path={str(path)!r} does not match this run:\n"
            + "\n".join(diffs)
            + f"\nResume with the checkpoint's settings (e.g. perception={name}) or start a new run without ckpt_path."
        )


def load_nca(path: str | Path) -> tuple[NCA, dict[str, Any]]:
    """Rebuild the trained :class:`NCA` from a checkpoint alone; returns ``(nca, run config)``."""
    ckpt = read_checkpoint(path)
    config = ckpt["hyper_parameters"]["config"]
    perception = instantiate(config["perception"])
    state = {k.removeprefix("nca."): v for k, v in ckpt["state_dict"].items() if k.startswith("nca.")}
    model = dict(config["model"])
    # Checkpoints written before model.update_bias existed always had the bias.
    model.setdefault("update_bias", "update.2.bias" in state)
    nca = NCA(perception, **model)
    try:
        nca.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{str(path)!r}: weights do not fit the saved config ({exc})") from exc
    return nca.eval(), config
