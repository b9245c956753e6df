"""Pretrained models shipped with ncalab, one folder each, exported for the browser demo.

Each folder holds ``model.json`` + ``model.bin`` (float32 weights, the format of ``python -m ncalab.demo export``),
``target.png``, ``evaluation.json`` and ``MODEL_CARD.md`` (config, training, evaluation). No ``.ckpt`` is shipped:
checkpoints hold the whole sample pool. Each model is trained by ``python train.py experiment=pretrained_<name>``
and shipped by ``python -m ncalab.pretrained <run dir> <name>``. ``python -m ncalab.demo serve`` offers them all.
"""

from __future__ import annotations

from importlib import resources


def names() -> list[str]:
    """The shipped models (folders with a ``model.json``)."""
    root = resources.files(__name__)
    return sorted(
        p.name
        for p in root.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / "model.json").is_file()
    )
