"""Pretrained models shipped with ncalab, one folder each, exported for the browser demo.

Each folder holds ``model.json`` + ``model.bin`` (float32 weights, the format of ``python -m ncalab.demo export``),
``target.png`` and ``MODEL_CARD.md`` (config, training steps, final metrics). No ``.ckpt`` is shipped: checkpoints
hold the whole sample pool. ``python -m ncalab.demo serve`` runs the ``flower`` model.
"""

from __future__ import annotations

from importlib import resources


def names() -> list[str]:
    """The shipped models (folders with a ``model.json``)."""
    root = resources.files(__name__)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "model.json").is_file())
