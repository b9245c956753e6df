"""ncalab: Neural Cellular Automata with swappable perception strategies, trained with Lightning and Hydra.

The names below are imported on first use, so that a module that needs none of them (``python -m ncalab.compare``,
which only reads files) does not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ncalab.nca import NCA, alive_mask, seed_state
    from ncalab.perception import (
        FixedPerception,
        MultiScalePerception,
        Perception,
        ScaledPerception,
        TrainablePerception,
    )

__all__ = [
    "NCA",
    "FixedPerception",
    "MultiScalePerception",
    "Perception",
    "ScaledPerception",
    "TrainablePerception",
    "alive_mask",
    "seed_state",
]
__version__ = "0.1.0"

_HOMES = {
    "NCA": "ncalab.nca",
    "alive_mask": "ncalab.nca",
    "seed_state": "ncalab.nca",
    "FixedPerception": "ncalab.perception",
    "MultiScalePerception": "ncalab.perception",
    "Perception": "ncalab.perception",
    "ScaledPerception": "ncalab.perception",
    "TrainablePerception": "ncalab.perception",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'ncalab' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
