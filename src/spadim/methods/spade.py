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
"""

from __future__ import annotations

import numpy as np
import torch

from spadim.features.extractor import FeatureSet, embed
from .maps import blur, upsample, upsample_blur
from .nearest import NearestSearch, default_search, make_search

FUSIONS = ("mean", "concat")


def _positions(feature_map: torch.Tensor) -> torch.Tensor:
    """[..., C, h, w] -> [(... h w), C] (a view for channels-last storage)."""
    return feature_map.movedim(-3, -1).reshape(-1, feature_map.shape[-3])


class Spade:
    name = "spade"
    #: leave-one-out scores each training image against the gallery of the others
    min_calibration_images = 2

    def __init__(
        self,
        layers: tuple[int, ...] = (1, 2, 3),
        k: int = 5,
        fusion: str = "mean",
        search: NearestSearch | None = None,
    ):
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}")
        self.layers, self.k, self.fusion = tuple(layers), int(k), fusion
        self.search = search or default_search()
        self.train_layers: dict[int, torch.Tensor] = {}
        self.train_pooled: torch.Tensor | None = None

    @classmethod
    def configure(cls, settings, layers: tuple[int, ...]) -> "Spade":
        return cls(
            layers,
            settings.k,
            getattr(settings, "spade_fusion", "mean"),
            search=make_search(getattr(settings, "search", "auto")),
        )

    def fit(self, fs: FeatureSet) -> "Spade":
        """Store the training features: SPADE has no other training."""
        self.train_layers = {layer: fs.layers[layer] for layer in self.layers}
        self.train_pooled = fs.pooled
        return self

    def neighbours(self, fs: FeatureSet) -> tuple[torch.Tensor, torch.Tensor]:
        """Distances to and indices of the K nearest training images (pooled features)."""
        d = torch.cdist(fs.pooled, self.train_pooled)
        return torch.topk(d, min(self.k, d.shape[1]), dim=1, largest=False)

    def layer_grids(self, fs: FeatureSet, nn_idx: torch.Tensor, layers=None) -> dict[int, torch.Tensor]:
        """Per layer, [N, h, w] distance of each test position to that layer's K-image gallery."""
        out = {}
        with torch.inference_mode():
            for layer in layers or self.layers:
                test, train = fs.layers[layer], self.train_layers[layer]
                n, _, h, w = test.shape
                out[layer] = torch.stack(
                    [
                        self.search.min_distances(_positions(test[i]), _positions(train[nn_idx[i]]))
                        for i in range(n)
                    ]
                ).reshape(n, h, w)
        return out

    def concat_grid(self, fs: FeatureSet, nn_idx: torch.Tensor) -> torch.Tensor:
        """[N, H, W] distance over the concatenated layers (``fusion="concat"``)."""
        test = embed(fs, self.layers)
        n, _, h, w = test.shape
        train = FeatureSet([], self.train_layers, None, np.zeros((0,)), [])
        with torch.inference_mode():
            grids = [
                self.search.min_distances(
                    _positions(test[i]), _positions(embed(train, self.layers, nn_idx[i]))
                )
                for i in range(n)
            ]
        return torch.stack(grids).reshape(n, h, w)

    @staticmethod
    def fuse(grids: list[torch.Tensor], size: int) -> np.ndarray:
        """Reference fusion: upsample each layer's grid to ``size``, average, blur."""
        return blur(np.mean([upsample(g, size) for g in grids], axis=0))

    def score(self, fs: FeatureSet, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Anomaly maps [N, size, size] and image scores [N]."""
        return self._score(fs, size, *self.neighbours(fs))

    def score_left_out(self, fs: FeatureSet, size: int) -> tuple[np.ndarray, np.ndarray]:
        """The training images it was fitted on (``fs``), each scored as a new image against the gallery of
        the others: its own pooled feature never ranks among the K nearest, so its own patches never
        enter its search (leave-one-out, the deployed model minus one image, at the cost of one scoring)."""
        if self.train_pooled is None or len(fs) != len(self.train_pooled):
            raise ValueError("score_left_out takes the training set the model was fitted on")
        distances = torch.cdist(fs.pooled, self.train_pooled)
        distances.fill_diagonal_(float("inf"))
        dist, idx = torch.topk(distances, min(self.k, len(fs) - 1), dim=1, largest=False)
        return self._score(fs, size, dist, idx)

    def _score(self, fs: FeatureSet, size: int, dist: torch.Tensor, idx: torch.Tensor):
        if self.fusion == "concat":
            maps = upsample_blur(self.concat_grid(fs, idx), size)
        else:
            maps = self.fuse(list(self.layer_grids(fs, idx).values()), size)
        return maps, dist.mean(dim=1).numpy()

    def state(self) -> dict:
        return {
            "config": {"layers": list(self.layers), "k": self.k, "fusion": self.fusion},
            "tensors": {
                "pooled": self.train_pooled,
                **{f"layer{layer}": t.contiguous() for layer, t in self.train_layers.items()},
            },
        }

    @classmethod
    def from_state(cls, state: dict) -> "Spade":
        m = cls(tuple(state["config"]["layers"]), state["config"]["k"], state["config"].get("fusion", "mean"))
        m.train_pooled = state["tensors"]["pooled"]
        m.train_layers = {layer: state["tensors"][f"layer{layer}"] for layer in m.layers}
        return m
