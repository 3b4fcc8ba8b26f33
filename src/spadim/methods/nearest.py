"""Exact nearest-neighbour distance search, as swappable strategy objects.

SPADE needs, for every query position, the Euclidean distance to the nearest gallery
vector: exact, since SPADE is exact. Both strategies expand ``||q - g||^2 =
||q||^2 + ||g||^2 - 2 q.g`` so that the work is one matrix product, take the minimum
over the gallery, add ``||q||^2`` after the minimum (it is constant per query) and take
the square root last. faiss' flat index does this with its blocked BLAS kernels and
measured faster here (layer 1 of one 224 px image against K=5 images: 87 ms vs 140 ms
for the chunked torch product on 2 cores); torch is the fallback when faiss is missing.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch


class NearestSearch(Protocol):
    name: str

    def min_distances(self, queries: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
        """[Q, C], [G, C] float32 -> [Q] distance of each query to its nearest gallery row."""


class TorchSearch:
    """Chunked float32 ``addmm`` with the gallery norms folded in as the bias."""

    name = "torch"

    def __init__(self, chunk: int = 1024):
        self.chunk = chunk

    def min_distances(self, queries: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
        gallery_sq = gallery.square().sum(1)
        out = torch.empty(len(queries))
        for start in range(0, len(queries), self.chunk):
            block = queries[start : start + self.chunk]
            partial = torch.addmm(gallery_sq, block, gallery.T, beta=1, alpha=-2).amin(1)
            out[start : start + self.chunk] = partial + block.square().sum(1)
        return out.clamp_min_(0).sqrt_()


class FaissSearch:
    """faiss' exact brute-force L2 search (``faiss.knn``; no approximate index)."""

    name = "faiss"

    def __init__(self):
        import faiss

        self._faiss = faiss

    def min_distances(self, queries: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
        q = np.ascontiguousarray(queries.numpy(), dtype=np.float32)
        g = np.ascontiguousarray(gallery.numpy(), dtype=np.float32)
        squared, _ = self._faiss.knn(q, g, 1)
        return torch.from_numpy(squared[:, 0]).clamp_min_(0).sqrt_()


def default_search() -> NearestSearch:
    try:
        return FaissSearch()
    except ImportError:
        return TorchSearch()
