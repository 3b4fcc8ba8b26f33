"""What every method shares: the abilities it declares, its options as one frozen config, and scoring
through its one scoring module.

A method's scoring (features -> anomaly maps [n, size, size], image scores [n]) is one ``torch.nn.Module``
defined in the method's own file and built by :meth:`Method.scorer` from the fitted tensors (no copy).
:meth:`Method.score` (evaluate, predict, serve, Ray) runs it on the CPU; ``--device cuda`` and the ONNX
export (:mod:`spadim.export.graph`) run the same module behind the backbone. Code outside ``methods/``
asks :attr:`Method.abilities` and the hooks here instead of a method's name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from spadim.errors import SpadimError
from spadim.features.extractor import FeatureSet

AUTO = "auto"  # layers chosen later, from normal images, by the caller


@dataclass(frozen=True, kw_only=True)
class Abilities:
    """What a method can do, declared on its class."""

    leave_one_out: bool  # score_left_out(train, size): each training image scored without its own data
    tiles: bool  # fits frames tiled into N x N crops (its fitted state grows no faster than the positions)
    update: bool  # update(features): grows a fitted model as a fit on all the images would
    export: bool  # its scoring module traces to ONNX
    streams_training: bool = False  # partial_fit(chunk) ... finish_fit(): the training set need not be held
    image_score_from_map: bool = False  # the image score is its map's maximum (recomputed when maps change)


def layer_option(layers) -> tuple[int, ...] | str:
    """A config's ``layers``: ``"auto"`` or a sorted tuple of layer ids 1-4."""
    if isinstance(layers, str):
        if layers.strip().lower() != AUTO:
            raise SpadimError(f"layers {layers!r}: give layer ids such as (2, 3), or {AUTO!r}")
        return AUTO
    chosen = tuple(sorted({int(layer) for layer in layers}))
    if not chosen or not set(chosen) <= {1, 2, 3, 4}:
        raise SpadimError(f"layers {tuple(layers)}: give one or more of the layer ids 1, 2, 3, 4")
    return chosen


def positive(config, *names: str) -> None:
    for name in names:
        if getattr(config, name) < 1:
            raise SpadimError(f"{type(config).__name__}.{name} must be >= 1 (got {getattr(config, name)})")


def option(name: str) -> property:
    """A read-only attribute of the method that is its config's option ``name``."""
    return property(lambda self: getattr(self.config, name), doc=f"config.{name}")


def feature_dict(fs: FeatureSet) -> dict:
    """A FeatureSet as the scoring modules take it: layer id -> [n, C, h, w], and "pool" when present."""
    return {**fs.layers, **({"pool": fs.pooled} if fs.pooled is not None else {})}


class Method:
    """Base of SPADE, PaDiM and PatchCore. ``Method(**options)`` builds the method's ``Config``;
    ``Method(config=c, **changes)`` starts from a config."""

    name: ClassVar[str]
    Config: ClassVar[type]
    abilities: ClassVar[Abilities]
    #: the layers without a caller's choice; None: the caller's run-wide layers
    default_layers: ClassVar[tuple[int, ...] | None] = None
    #: needs the backbone's pooled layer-4 vector (so the backbone runs to layer 4 whatever the layers)
    uses_pooled: ClassVar[bool] = False
    #: the fewest training images a held-out calibration of the method accepts
    min_calibration_images: ClassVar[int] = 2

    def __init__(self, *, config=None, **options):
        strategy = options.pop("search") if not isinstance(options.get("search", ""), str) else None
        if strategy is not None:
            options["search"] = strategy.name
        self.config = dataclasses.replace(config, **options) if config is not None else self.Config(**options)
        self._search = strategy
        self._scorers: dict = {}

    @classmethod
    def default_config(cls, arch: str, seed: int = 0):
        """The options without a caller's choice in a run on backbone ``arch`` seeded ``seed`` (the config's
        defaults, and ``seed`` where the method draws random numbers)."""
        return cls.Config()

    @classmethod
    def recorded_options(cls, config) -> dict:
        """The options results files record, under their names there (``k``, ``spade_fusion``, ...)."""
        return {}

    @property
    def layers(self) -> tuple[int, ...] | str:
        return self.config.layers

    def fitted_layers(self) -> tuple[int, ...]:
        if self.layers == AUTO:
            raise SpadimError(
                f"{self.name} has layers 'auto': choose them first (spadim.run.layerchoice) and pass them"
            )
        return self.layers

    def with_layers(self, layers) -> "Method":
        """A new, unfitted method with this one's options and other layers."""
        return type(self)(config=self.config, layers=layer_option(layers), **self._strategy_option())

    def _strategy_option(self) -> dict:
        return {"search": self._search} if self._search is not None else {}

    def backbone_last_layer(self) -> int:
        """The deepest backbone layer the method reads: the backbone stops there."""
        return 4 if self.uses_pooled else max(self.fitted_layers())

    # ------------------------------------------------------------------ scoring

    def scorer(self, size: int, channels: dict[int, int]) -> nn.Module:
        """A new scoring module over the fitted tensors (shared, not copied) for maps of ``size`` pixels;
        ``channels``: each layer's channel count. ``.to(device)`` moves that module only."""
        raise NotImplementedError

    def _fitted_scorer(self, fs: FeatureSet, size: int) -> nn.Module:
        channels = {layer: int(t.shape[1]) for layer, t in fs.layers.items()}
        key = (int(size), tuple(sorted(channels.items())))
        if key not in self._scorers:
            self._scorers[key] = self.scorer(size, channels)
        return self._scorers[key]

    def _refitted(self) -> None:
        """Forget the scoring modules built before a fit or an update changed the tensors."""
        self._scorers.clear()

    def score(self, fs: FeatureSet, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Anomaly maps [N, size, size] float32 and image scores [N] float64, ``batch`` images per module call."""
        module = self._fitted_scorer(fs, size)
        maps, scores = [], []
        with torch.inference_mode():
            for part in fs.batches(self.config.batch):
                part_maps, part_scores = module(feature_dict(part))
                maps.append(part_maps)
                scores.append(part_scores)
        return torch.cat(maps).numpy(), torch.cat(scores).double().numpy()

    # ------------------------------------------------------------------ hooks for callers

    def fit_to_score(self, fs: FeatureSet) -> "Method":
        """A fit used only for scoring in this process (held-out folds, layer comparisons): the method's
        cheapest exact form, which need not be savable."""
        return self.fit(fs)

    def subset_scores(self, train: FeatureSet, test: FeatureSet, combos, size: int):
        """(combo, maps, image scores) of ``test`` for every layer subset in ``combos``, each as a model of
        that subset fitted on ``train`` gives them (studies of the 15 subsets). This default fits each."""
        for combo in combos:
            yield (combo, *self.with_layers(combo).fit(train).score(test, size))

    def subset_grids(self, fit: FeatureSet, val: FeatureSet, combos, size: int, tick=None) -> dict:
        """Per key, native-resolution grids of ``val`` from models fitted on ``fit`` that
        :meth:`subset_map` turns into any layer subset's maps (``combos``: the subsets compared;
        ``tick()`` after each). This default fits every subset and keeps its maps."""
        grids = {}
        for combo in combos:
            grids[combo] = torch.from_numpy(self.with_layers(combo).fit_to_score(fit).score(val, size)[0])
            if tick:
                tick()
        return grids

    def subset_map(self, grids: dict, combo, size: int) -> np.ndarray:
        """The maps of layer subset ``combo`` from :meth:`subset_grids`' grids (all folds joined)."""
        return grids[combo].numpy()

    @classmethod
    def image_scores_of_maps(cls, maps: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """The image scores after the maps were changed (object masks): each map's maximum where the
        method scores so, else ``scores`` unchanged (a score from other features)."""
        if cls.abilities.image_score_from_map:
            return maps.reshape(len(maps), -1).max(1)
        return scores

    def state(self) -> dict:
        raise NotImplementedError

    @classmethod
    def from_state(cls, state: dict) -> "Method":
        raise NotImplementedError
