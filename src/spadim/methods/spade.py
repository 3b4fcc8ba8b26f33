"""SPADE (Cohen & Hoshen 2020): kNN over deep feature pyramids.

1. Image level: Euclidean distances between the test image's pooled last-layer
   feature and every training image's; the image score is the mean distance to the
   K nearest (K=5, the default of the widely used reference implementation).
2. Pixel level, ``fusion="mean"`` (the default, as the reference implementation
   computes it): for each layer separately, the gallery is every position of that
   layer's map in the K retrieved images; each test position scores its distance to
   the nearest gallery vector (kappa = 1). Each layer's distance map is upsampled
   bilinearly to the image size, the maps are averaged, then blurred (sigma 4).
   ``fusion="concat"`` instead concatenates the layers at the largest kept resolution
   (nearest upsampling) and searches once; layer 3's 1024 channels then dominate the
   distance, and it costs about 6x the arithmetic.

Per-layer distance grids are kept at native resolution, so any layer subset's map is
an average of grids computed once (the layer sweep relies on this).

:class:`SpadeScorer` is the whole scoring, run by every runtime: the K nearest images by the matrix
form of the pooled distances, then per layer each test image searched against the rows of its own K
images (on the CPU by the probed search strategy, traced or on a GPU as one batched matrix product;
:mod:`.nearest`), then the map step (:class:`.maps.MapStep`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from spadim.errors import SpadimError
from spadim.features.extractor import FeatureSet
from .base import Abilities, Method, feature_dict, layer_option, option, positive
from .maps import MapStep
from .nearest import check_search, make_search, nearest_in_images

FUSIONS = ("mean", "concat")


@dataclass(frozen=True, kw_only=True)
class SpadeConfig:
    layers: tuple[int, ...] | str = (1, 2, 3)
    k: int = 5  # training images retrieved by the pooled layer-4 feature (the reference's default)
    fusion: str = "mean"  # "mean" of per-layer maps (reference) or "concat" (one search over all layers)
    search: str = "auto"  # nearest-neighbour backend on the CPU: auto (probed), torch or faiss
    batch: int = 8  # test images per call of the scoring module

    def __post_init__(self):
        object.__setattr__(self, "layers", layer_option(self.layers))
        check_search(self.search, "SpadeConfig.search")
        positive(self, "k", "batch")
        if self.fusion not in FUSIONS:
            raise SpadimError(f"SPADE fusion {self.fusion!r}: choose {' or '.join(FUSIONS)}")


def _nearest_index(size: int, grid: int) -> torch.Tensor:
    """Rows of a ``grid``-sized axis that nearest upsampling to ``size`` reads (as ``F.interpolate``)."""
    return torch.from_numpy(np.arange(size) * grid // size)


def _rows_of(feature_map: torch.Tensor) -> torch.Tensor:
    """[n, C, h, w] -> [n, h, w, C] (a view for channels-last storage)."""
    return feature_map.permute(0, 2, 3, 1)


def _compact(rows: torch.Tensor) -> torch.Tensor:
    """``rows`` alone in its storage (torch.save writes a view's whole storage), copied only if shared."""
    whole = rows.is_contiguous() and rows.untyped_storage().nbytes() == rows.numel() * rows.element_size()
    return rows if whole else rows.clone(memory_format=torch.contiguous_format)


def _concat_rows(rows: list[torch.Tensor], size: int) -> torch.Tensor:
    """Per-layer [m, ..., h, w, C] -> [m, ..., size, size, sum C]: each layer upsampled (nearest), concatenated."""
    parts = []
    for r in rows:
        if int(r.shape[-2]) != size:  # grid sizes are fixed per model: constants in a traced graph
            index = _nearest_index(size, int(r.shape[-2])).to(r.device)
            r = r.index_select(-3, index).index_select(-2, index)
        parts.append(r)
    return torch.cat(parts, -1)


class SpadeScorer(nn.Module):
    """Features {layer: [n, C, h, w], "pool": [n, C4]} -> (anomaly maps [n, size, size], image scores [n]).

    ``pooled`` [N, C4] and ``rows`` {layer: [N, h, w, C]} are the training images' features."""

    def __init__(self, pooled: torch.Tensor, rows: dict, k: int, fusion: str, size: int, search=None):
        super().__init__()
        self.layers, self.fusion, self.search = tuple(rows), fusion, search
        self.k = min(k, len(pooled)) if pooled is not None else k
        self.register_buffer("pooled", pooled)
        for layer, layer_rows in rows.items():
            self.register_buffer(f"rows{layer}", layer_rows)
        self.maps = MapStep(size)

    def training_rows(self, layer: int) -> torch.Tensor:
        return getattr(self, f"rows{layer}")

    def neighbours(self, pooled: torch.Tensor, leave_out: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Distances to and indices of the K nearest training images, [n, K] each. ``leave_out``: ``pooled``
        are the training images themselves, each kept out of its own K (K - 1 where only K images exist)."""
        train = self.pooled
        squared = pooled.square().sum(1, keepdim=True) - 2 * pooled @ train.T + train.square().sum(1)
        distances = squared.clamp_min(0).sqrt()
        k = self.k
        if leave_out:
            distances = distances.fill_diagonal_(float("inf"))
            k = min(k, len(train) - 1)
        return torch.topk(distances, k, dim=1, largest=False)

    def layer_grid(self, layer: int, test: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        """[n, h, w] distance of each test position to the nearest position of the layer in its K images."""
        n, channels, h, w = test.shape
        rows = self.training_rows(layer)
        queries = _rows_of(test).reshape(n, h * w, channels)
        gallery = nearest_in_images(
            queries, lambda picked: rows[picked].reshape(picked.shape[0], -1, channels), chosen, self.search
        )
        return gallery.reshape(n, h, w)

    def concat_grid(self, features: dict, chosen: torch.Tensor) -> torch.Tensor:
        """[n, H, W] distance over the concatenated layers (``fusion="concat"``)."""
        size = max(int(features[layer].shape[-1]) for layer in self.layers)
        test = _concat_rows([_rows_of(features[layer]) for layer in self.layers], size)
        n, channels = test.shape[0], test.shape[-1]
        queries = test.reshape(n, size * size, channels)

        def gallery_of(picked: torch.Tensor) -> torch.Tensor:
            rows = _concat_rows([self.training_rows(layer)[picked] for layer in self.layers], size)
            return rows.reshape(picked.shape[0], -1, channels)

        return nearest_in_images(queries, gallery_of, chosen, self.search).reshape(n, size, size)

    def maps_of(self, features: dict, chosen: torch.Tensor) -> torch.Tensor:
        if self.fusion == "concat":
            return self.maps(self.concat_grid(features, chosen))
        return self.maps.mean([self.layer_grid(layer, features[layer], chosen) for layer in self.layers])

    def forward(self, features: dict) -> tuple[torch.Tensor, torch.Tensor]:
        distances, chosen = self.neighbours(features["pool"])
        return self.maps_of(features, chosen), distances.mean(1)


class Spade(Method):
    name = "spade"
    Config = SpadeConfig
    abilities = Abilities(leave_one_out=True, tiles=True, update=True, export=True)
    uses_pooled = True

    def __init__(self, *, config: SpadeConfig | None = None, **options):
        super().__init__(config=config, **options)
        self.search = self._search or make_search(self.config.search)
        self.rows: dict[int, torch.Tensor] = {}  # layer -> [N, h, w, C] training features
        self.train_pooled: torch.Tensor | None = None

    k, fusion = option("k"), option("fusion")

    @classmethod
    def recorded_options(cls, config: SpadeConfig) -> dict:
        return {"k": config.k, "spade_fusion": config.fusion, "search": config.search}

    def fit(self, fs: FeatureSet) -> "Spade":
        """Store the training features: SPADE has no other training."""
        self.rows = {layer: _rows_of(fs.layers[layer]).contiguous() for layer in self.fitted_layers()}
        self.train_pooled = fs.pooled
        self._refitted()
        return self

    def update(self, fs: FeatureSet) -> "Spade":
        """Add images to the gallery: the same model as a fit on all of them."""
        for layer in self.rows:
            self.rows[layer] = torch.cat([self.rows[layer], _rows_of(fs.layers[layer])])
        self.train_pooled = torch.cat([self.train_pooled, fs.pooled])
        self._refitted()
        return self

    def scorer(self, size: int, channels: dict | None = None) -> SpadeScorer:
        return SpadeScorer(self.train_pooled, self.rows, self.k, self.fusion, size, self.search)

    def neighbours(self, fs: FeatureSet) -> tuple[torch.Tensor, torch.Tensor]:
        """Distances to and indices of the K nearest training images (pooled features)."""
        with torch.inference_mode():
            return self.scorer(0).neighbours(fs.pooled)

    def layer_grids(self, fs: FeatureSet, nn_idx: torch.Tensor, layers=None) -> dict[int, torch.Tensor]:
        """Per layer, [N, h, w] distance of each test position to that layer's K-image gallery."""
        module = self.scorer(0)
        with torch.inference_mode():
            return {
                layer: module.layer_grid(layer, fs.layers[layer], nn_idx) for layer in layers or self.layers
            }

    def concat_grid(self, fs: FeatureSet, nn_idx: torch.Tensor) -> torch.Tensor:
        """[N, H, W] distance over the concatenated layers (``fusion="concat"``)."""
        with torch.inference_mode():
            return self.scorer(0).concat_grid(fs.layers, nn_idx)

    @staticmethod
    def fuse(grids: list[torch.Tensor], size: int) -> np.ndarray:
        """Reference fusion: upsample each layer's grid to ``size``, average, blur."""
        with torch.inference_mode():
            return MapStep(size).mean(grids).numpy()

    def score_left_out(self, fs: FeatureSet, size: int) -> tuple[np.ndarray, np.ndarray]:
        """The training images it was fitted on (``fs``), each scored as a new image against the gallery of
        the others: its own pooled feature never ranks among the K nearest, so its own patches never
        enter its search (leave-one-out, the deployed model minus one image, at the cost of one scoring)."""
        if self.train_pooled is None or len(fs) != len(self.train_pooled):
            raise ValueError("score_left_out takes the training set the model was fitted on")
        module = self._fitted_scorer(fs, size)
        with torch.inference_mode():
            distances, chosen = module.neighbours(fs.pooled, leave_out=True)
            maps = torch.cat(
                [
                    module.maps_of(feature_dict(fs.rows(start, start + self.config.batch)), part)
                    for start, part in zip(
                        range(0, len(fs), self.config.batch), chosen.split(self.config.batch)
                    )
                ]
            )
        return maps.numpy(), distances.mean(1).double().numpy()

    def subset_scores(self, train: FeatureSet, test: FeatureSet, combos, size: int):
        """Mean fusion: each layer's nearest-neighbour grid once; a subset's map is the reference fusion of
        its layers' grids, identical to scoring that subset alone (the image score uses no layer subset)."""
        if self.fusion != "mean":
            yield from super().subset_scores(train, test, combos, size)
            return
        model = self.with_layers(sorted({layer for combo in combos for layer in combo})).fit(train)
        distances, chosen = model.neighbours(test)
        grids = model.layer_grids(test, chosen)
        scores = distances.mean(1).double().numpy()
        for combo in combos:
            yield combo, self.fuse([grids[layer] for layer in combo], size), scores

    def subset_grids(self, fit: FeatureSet, val: FeatureSet, combos, size: int, tick=None) -> dict:
        """Mean fusion: each layer's grids once (K nearest by the pooled feature, whatever the layers);
        every subset's map is their fusion (:meth:`subset_map`)."""
        if self.fusion != "mean":
            return super().subset_grids(fit, val, combos, size, tick)
        model = self.with_layers(sorted({layer for combo in combos for layer in combo})).fit(fit)
        grids = model.layer_grids(val, model.neighbours(val)[1])
        for _ in combos if tick else ():
            tick()
        return grids

    def subset_map(self, grids: dict, combo, size: int) -> np.ndarray:
        if self.fusion != "mean":
            return super().subset_map(grids, combo, size)
        return self.fuse([grids[layer] for layer in combo], size)

    def state(self) -> dict:
        return {
            "config": {"layers": list(self.layers), "k": self.k, "fusion": self.fusion},
            "tensors": {
                "pooled": self.train_pooled,
                # [N, C, h, w] views of the [N, h, w, C] rows: saved with their strides, so neither saving
                # nor loading transposes the gallery (files of NCHW tensors load as before)
                **{f"layer{layer}": _compact(rows).permute(0, 3, 1, 2) for layer, rows in self.rows.items()},
            },
        }

    @classmethod
    def from_state(cls, state: dict) -> "Spade":
        c = state["config"]
        m = cls(layers=tuple(c["layers"]), k=c["k"], fusion=c.get("fusion", "mean"))
        m.train_pooled = state["tensors"]["pooled"]
        m.rows = {layer: _rows_of(state["tensors"][f"layer{layer}"]).contiguous() for layer in m.layers}
        return m
