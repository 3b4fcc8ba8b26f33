"""SPADE (Cohen & Hoshen 2020): kNN over deep feature pyramids.

1. Image level: Euclidean distances between the test image's pooled last-layer
   feature and every training image's; the image score is the mean distance to the
   K nearest (K=5, the default of the widely used reference implementation).
2. Pixel level: the gallery is every feature vector (all positions) of those K
   training images; each test position scores its distance to the nearest gallery
   vector (kappa = 1). Features are the chosen layers concatenated at the largest
   kept resolution (the paper describes each pixel by the features of all pyramid
   levels with equal weight). Then bilinear upsampling and Gaussian blur, sigma 4.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from .features import FeatureSet, embed
from .maps import upsample_blur


class Spade:
    name = "spade"

    def __init__(self, layers: tuple[int, ...] = (1, 2, 3), k: int = 5, chunk: int = 1024):
        self.layers, self.k, self.chunk = tuple(layers), int(k), chunk
        self.train_layers: dict[int, torch.Tensor] = {}
        self.train_pooled: torch.Tensor | None = None

    @classmethod
    def configure(cls, settings, layers: tuple[int, ...]) -> "Spade":
        return cls(layers, settings.k)

    def fit(self, fs: FeatureSet) -> "Spade":
        """Store the training features: SPADE has no other training."""
        self.train_layers = {l: fs.layers[l] for l in self.layers}
        self.train_pooled = fs.pooled
        return self

    def _train_set(self) -> FeatureSet:
        return FeatureSet([], self.train_layers, self.train_pooled, np.zeros((0,)), [])

    def neighbours(self, fs: FeatureSet) -> tuple[torch.Tensor, torch.Tensor]:
        """Distances to and indices of the K nearest training images (pooled features)."""
        d = torch.cdist(fs.pooled, self.train_pooled)
        k = min(self.k, d.shape[1])
        return torch.topk(d, k, dim=1, largest=False)

    def pixel_grid(self, fs: FeatureSet, nn_idx: torch.Tensor) -> torch.Tensor:
        """[N, h, w] nearest-neighbour distance of each test position to the K images' gallery."""
        test = embed(fs, self.layers)
        n, c, h, w = test.shape
        train = self._train_set()
        out = torch.empty(n, h * w)
        with torch.inference_mode():
            for i in tqdm(range(n), desc="SPADE nearest neighbours", unit="img", disable=None, leave=False):
                gallery = embed(train, self.layers, nn_idx[i]).permute(0, 2, 3, 1).reshape(-1, c)
                q = test[i].permute(1, 2, 0).reshape(-1, c)
                for s in range(0, q.shape[0], self.chunk):
                    out[i, s : s + self.chunk] = torch.cdist(q[s : s + self.chunk], gallery).min(dim=1).values
        return out.reshape(n, h, w)

    def score(self, fs: FeatureSet, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Anomaly maps [N, size, size] and image scores [N]."""
        dist, idx = self.neighbours(fs)
        maps = upsample_blur(self.pixel_grid(fs, idx), size)
        return maps, dist.mean(dim=1).numpy()

    def state(self) -> dict:
        return {
            "config": {"layers": list(self.layers), "k": self.k},
            "tensors": {"pooled": self.train_pooled, **{f"layer{l}": t for l, t in self.train_layers.items()}},
        }

    @classmethod
    def from_state(cls, state: dict) -> "Spade":
        m = cls(tuple(state["config"]["layers"]), state["config"]["k"])
        m.train_pooled = state["tensors"]["pooled"]
        m.train_layers = {l: state["tensors"][f"layer{l}"] for l in m.layers}
        return m
