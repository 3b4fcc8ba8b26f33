"""PaDiM (Defard et al. 2020): a Gaussian per feature position, Mahalanobis distance.

The chosen layers are concatenated at the largest kept resolution (nearest
upsampling, as the reference ``embedding_concat``); a random subset of ``d``
channels is kept (seeded; d=100 for resnet18 and 550 for wide_resnet50_2 by default,
capped by the number of channels). Per position: mean and sample covariance
(divisor N-1, as ``np.cov``) + 0.01 I; the score is the Mahalanobis distance,
upsampled bilinearly and blurred with a Gaussian of sigma 4; the image score is the
map's maximum. Covariances are accumulated and factorised (Cholesky) in float64, as
NumPy computes them in the reference code; the stored Cholesky factors are float32
and the distance is ||L^-1 (x - mu)|| by a triangular solve, which equals the
reference's (x - mu)^T C^-1 (x - mu) without forming the inverse.
"""

from __future__ import annotations

import numpy as np
import torch

from .features import FeatureSet, embed
from .maps import upsample_blur

DEFAULT_D = {"resnet18": 100, "resnet50": 550, "resnet50_caffe": 550, "wide_resnet50_2": 550}
EPS = 0.01


def channel_subset(n_channels: int, d: int, seed: int) -> torch.Tensor:
    """Sorted random subset of min(d, n_channels) channel ids, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.sort(rng.choice(n_channels, size=min(d, n_channels), replace=False)))


class Padim:
    name = "padim"

    def __init__(self, layers: tuple[int, ...] = (1, 2, 3), d: int = 550, seed: int = 0, chunk: int = 256):
        self.layers, self.d, self.seed, self.chunk = tuple(layers), int(d), int(seed), chunk
        self.idx: torch.Tensor | None = None
        self.mean: torch.Tensor | None = None  # [L, d]
        self.chol: torch.Tensor | None = None  # [L, d, d] lower Cholesky factors of the covariances
        self.grid: tuple[int, int] = (0, 0)

    @classmethod
    def configure(cls, settings, layers: tuple[int, ...]) -> "Padim":
        return cls(layers, settings.padim_d, settings.seed)

    def _vectors(self, fs: FeatureSet) -> torch.Tensor:
        """[N, L, d] selected features per position."""
        emb = embed(fs, self.layers)
        if self.idx is None:
            self.idx = channel_subset(emb.shape[1], self.d, self.seed)
        self.grid = (emb.shape[2], emb.shape[3])
        return emb[:, self.idx].flatten(2).permute(0, 2, 1).contiguous()

    def fit(self, fs: FeatureSet) -> "Padim":
        x = self._vectors(fs)
        n, L, d = x.shape
        self.mean = x.mean(0)
        self.chol = torch.empty(L, d, d)
        eye = torch.eye(d, dtype=torch.float64)
        with torch.inference_mode():
            for s in range(0, L, self.chunk):
                xc = (x[:, s : s + self.chunk] - self.mean[s : s + self.chunk]).double().permute(1, 0, 2)
                cov = xc.transpose(1, 2) @ xc / max(n - 1, 1) + EPS * eye
                self.chol[s : s + self.chunk] = torch.linalg.cholesky(cov).float()
        return self

    def distance_grid(self, fs: FeatureSet) -> torch.Tensor:
        """[N, h, w] Mahalanobis distance of every position to its Gaussian."""
        x = self._vectors(fs)
        n, L, _ = x.shape
        out = torch.empty(L, n)
        with torch.inference_mode():
            for s in range(0, L, self.chunk):
                diff = (x[:, s : s + self.chunk] - self.mean[s : s + self.chunk]).permute(1, 2, 0)
                z = torch.linalg.solve_triangular(self.chol[s : s + self.chunk], diff, upper=False)
                out[s : s + self.chunk] = z.square().sum(1)
        return out.sqrt().T.reshape(n, *self.grid)

    def score(self, fs: FeatureSet, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Anomaly maps [N, size, size] and image scores (max of each map) [N]."""
        maps = upsample_blur(self.distance_grid(fs), size)
        return maps, maps.reshape(len(maps), -1).max(axis=1)

    def state(self) -> dict:
        return {
            "config": {"layers": list(self.layers), "d": self.d, "seed": self.seed, "grid": list(self.grid)},
            "tensors": {"idx": self.idx, "mean": self.mean, "chol": self.chol},
        }

    @classmethod
    def from_state(cls, state: dict) -> "Padim":
        c = state["config"]
        m = cls(tuple(c["layers"]), c["d"], c["seed"])
        m.idx, m.mean, m.chol = (state["tensors"][k] for k in ("idx", "mean", "chol"))
        m.grid = tuple(c["grid"])
        return m
