"""One protocol for anomaly-detection methods and the one registry that pipeline, model files and CLI use.

A method (:class:`.base.Method`) is fitted on the training images'
:class:`~spadim.features.extractor.FeatureSet` and scores a test FeatureSet into per-pixel maps and
image scores through its scoring module. ``state``/``from_state`` hold everything inference needs
(random channel indices included), so a model file reproduces the fitted method exactly. A new method
is one small module plus one line here.
"""

from __future__ import annotations

from spadim.lists import parse_list
from .base import Method
from .padim import Padim
from .patchcore import PatchCore
from .spade import Spade


AnomalyMethod = Method  # the protocol every method follows (:class:`.base.Method`)


METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (Spade, Padim, PatchCore)}


def parse_methods(text: str, name: str = "methods") -> list[str]:
    """'spade,padim' -> ['spade', 'padim']; unknown or repeated names raise SpadimError."""
    return parse_list(text.lower(), "method", name, tuple(METHODS), example="spade,padim")


def from_state(name: str, state: dict) -> AnomalyMethod:
    return METHODS[name].from_state(state)
