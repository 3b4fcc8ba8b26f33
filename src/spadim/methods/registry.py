"""One protocol for anomaly-detection methods and the one registry that pipeline, model files and CLI use.

A method is fitted on the training images' :class:`~spadim.features.extractor.FeatureSet` and scores
a test FeatureSet into per-pixel maps and image scores. ``state``/``from_state`` hold
everything inference needs (random channel indices included), so a model file
reproduces the fitted method exactly. A new method is one small module plus one line here.
"""

from __future__ import annotations

from typing import ClassVar, Protocol, runtime_checkable

import numpy as np

from spadim.features.extractor import FeatureSet
from spadim.lists import parse_list
from .padim import Padim
from .patchcore import PatchCore
from .spade import Spade


@runtime_checkable
class AnomalyMethod(Protocol):
    name: ClassVar[str]
    #: the fewest training images a held-out calibration of the method accepts
    min_calibration_images: ClassVar[int]
    layers: tuple[int, ...]

    @classmethod
    def configure(cls, settings, layers: tuple[int, ...]) -> "AnomalyMethod":
        """A new, unfitted instance from run settings (``pipeline.Settings``)."""

    def fit(self, train: FeatureSet) -> "AnomalyMethod": ...

    def score(self, test: FeatureSet, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Anomaly maps [N, size, size] float32 and image scores [N]."""

    def state(self) -> dict: ...

    @classmethod
    def from_state(cls, state: dict) -> "AnomalyMethod": ...


METHODS: dict[str, type] = {cls.name: cls for cls in (Spade, Padim, PatchCore)}


def parse_methods(text: str, flag: str = "--methods") -> list[str]:
    """'spade,padim' -> ['spade', 'padim']; unknown or repeated names raise SpadimError."""
    return parse_list(text.lower(), "method", flag, tuple(METHODS), example="spade,padim")


def create(name: str, settings, layers: tuple[int, ...] | None = None) -> AnomalyMethod:
    (name,) = parse_methods(name, "--method")
    if not layers:  # the run's layers, or the method's own default when the user gave none
        layers = settings.method_layers(name) if hasattr(settings, "method_layers") else settings.layers
    return METHODS[name].configure(settings, tuple(layers))


def from_state(name: str, state: dict) -> AnomalyMethod:
    return METHODS[name].from_state(state)
