"""Features to anomaly maps: the method protocol and registry, SPADE, PaDiM, PatchCore (and its coreset),
nearest-neighbour search and the shared map step (upsample and blur)."""

from .maps import upsample_blur
from .nearest import FaissSearch, NearestSearch, TorchSearch, default_search
from .padim import LowRankPadim, Padim, fit_padim
from .patchcore import PatchCore
from .registry import METHODS, AnomalyMethod, create, from_state, parse_methods
from .spade import Spade

__all__ = [
    "METHODS",
    "AnomalyMethod",
    "FaissSearch",
    "LowRankPadim",
    "NearestSearch",
    "Padim",
    "PatchCore",
    "Spade",
    "TorchSearch",
    "create",
    "default_search",
    "fit_padim",
    "from_state",
    "parse_methods",
    "upsample_blur",
]
