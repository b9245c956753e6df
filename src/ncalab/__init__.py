"""ncalab: Neural Cellular Automata with swappable perception strategies, trained with Lightning and Hydra."""

from ncalab.nca import NCA, alive_mask, seed_state
from ncalab.perception import FixedPerception, Perception, ScaledPerception, TrainablePerception

__all__ = [
    "NCA",
    "FixedPerception",
    "Perception",
    "ScaledPerception",
    "TrainablePerception",
    "alive_mask",
    "seed_state",
]
__version__ = "0.1.0"
