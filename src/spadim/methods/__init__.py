"""Features to anomaly maps: the method base (abilities, configs, one scoring module per method) and
registry, SPADE, PaDiM, PatchCore (and its coreset), nearest-neighbour search and the shared map step."""

from .base import Abilities, Method
from .maps import MapStep, upsample_blur
from .nearest import FaissSearch, NearestSearch, TorchSearch, default_search
from .padim import LowRankPadim, Padim, PadimConfig, PadimScorer, fit_padim
from .patchcore import PatchCore, PatchCoreConfig, PatchCoreScorer
from .registry import METHODS, AnomalyMethod, from_state, parse_methods
from .spade import Spade, SpadeConfig, SpadeScorer

__all__ = [
    "METHODS",
    "Abilities",
    "AnomalyMethod",
    "FaissSearch",
    "LowRankPadim",
    "MapStep",
    "Method",
    "NearestSearch",
    "Padim",
    "PadimConfig",
    "PadimScorer",
    "PatchCore",
    "PatchCoreConfig",
    "PatchCoreScorer",
    "Spade",
    "SpadeConfig",
    "SpadeScorer",
    "TorchSearch",
    "default_search",
    "fit_padim",
    "from_state",
    "parse_methods",
    "upsample_blur",
]
