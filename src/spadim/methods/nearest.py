"""Exact nearest-neighbour distance search, as swappable strategy objects.

SPADE needs, for every query position, the Euclidean distance to the nearest gallery
vector: exact, since SPADE is exact. Both strategies expand ``||q - g||^2 =
||q||^2 + ||g||^2 - 2 q.g`` so that the work is one matrix product, take the minimum
over the gallery, add ``||q||^2`` after the minimum (it is constant per query) and take
the square root last. faiss' flat index does this with its blocked BLAS kernels; torch uses
its own BLAS (MKL on Intel). Which is faster depends on the CPU: faiss won on one 2-core machine
(87 ms vs 140 ms for layer 1 of one 224 px image against K=5 images), torch won 4-5x on a Xeon with
AVX-512 and AMX. So :func:`default_search` times both on a small SPADE-shaped product, once per
process, and keeps the faster; ``$SPADIM_SEARCH=torch|faiss`` forces one. Both are exact.
"""

from __future__ import annotations

import os
import time
from typing import Protocol

import numpy as np
import torch

from spadim.errors import SpadimError


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


SEARCHES = {"torch": TorchSearch, "faiss": FaissSearch}
_probed: dict[str, object] = {}


def _time(search: NearestSearch, queries: torch.Tensor, gallery: torch.Tensor, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        search.min_distances(queries, gallery)
        best = min(best, time.perf_counter() - started)
    return best


def probe(queries: int = 392, gallery: int = 1960, channels: int = 256) -> dict[str, float]:
    """Seconds per backend for one [queries x channels] by [gallery x channels] search (the shape of
    SPADE's layer 1 at 1/8 of the positions and 1/8 of the gallery); tens of ms. Missing backends are left out."""
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(queries, channels, generator=generator)
    rows = torch.randn(gallery, channels, generator=generator)
    timings = {}
    for name, kind in SEARCHES.items():
        try:
            search = kind()
        except ImportError:
            continue
        search.min_distances(query[:8], rows[:8])  # warm-up: thread pools, first-call allocations
        timings[name] = _time(search, query, rows, repeats=2)
    return timings


def default_search() -> NearestSearch:
    """The backend forced by ``$SPADIM_SEARCH``, else the one the probe found faster on this CPU."""
    forced = os.environ.get("SPADIM_SEARCH", "").strip().lower()
    if forced:
        if forced not in SEARCHES:
            raise SpadimError(f"SPADIM_SEARCH={forced!r} is not a search backend: use one of {', '.join(SEARCHES)}")
        return SEARCHES[forced]()
    if "timings" not in _probed:
        _probed["timings"] = probe()
    timings = _probed["timings"]
    return SEARCHES[min(timings, key=timings.get)]()


def probe_report() -> dict:
    """What the probe measured and picked in this process (for benchmarks and run metadata)."""
    if "timings" not in _probed:
        _probed["timings"] = probe()
    timings = _probed["timings"]
    return {"seconds": timings, "picked": min(timings, key=timings.get),
            "forced": os.environ.get("SPADIM_SEARCH") or None}
