"""Exact nearest-neighbour distance search, as swappable strategy objects.

SPADE needs, for every query position, the Euclidean distance to the nearest gallery
vector: exact, since SPADE is exact. Both strategies expand ``||q - g||^2 =
||q||^2 + ||g||^2 - 2 q.g`` so that the work is one matrix product, take the minimum
over the gallery, add ``||q||^2`` after the minimum (it is constant per query) and take
the square root last. faiss' flat index does this with its blocked BLAS kernels; torch uses
its own BLAS (MKL on Intel). Which is faster depends on the CPU: faiss won on one 2-core machine
(87 ms vs 140 ms for layer 1 of one 224 px image against K=5 images), torch won 4-5x on a Xeon with
AVX-512 and AMX. So :func:`default_search` times both on a SPADE-shaped search once per machine
(remembered in ``~/.cache/spadim/search-probe.json``, keyed by CPU, threads and library versions)
and keeps the faster; ``--search torch|faiss`` (:func:`make_search`) or ``$SPADIM_SEARCH`` forces one.
Both are exact: maps agree to float rounding (1e-4) whichever is picked.

The scoring modules call :func:`nearest_distances` and :func:`nearest_in_images`: on the CPU they run the
strategy; while a graph is traced (the ONNX export) or on an accelerator they run the same distance as
one batched matrix product, ``|q|^2 - 2 q.g + |g|^2``, minimum, clamped at 0, square root (the form
faiss computes), which every runtime has.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from spadim.errors import SpadimError


class NearestSearch(Protocol):
    name: str

    def min_distances(self, queries: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
        """[Q, C], [G, C] float32 -> [Q] distance of each query to its nearest gallery row."""


def traceable(tensor: torch.Tensor) -> bool:
    """True while a graph is traced or when ``tensor`` lives on an accelerator: the batched matrix form
    runs instead of a CPU strategy (whose loops and libraries neither trace nor run on a GPU)."""
    return torch.jit.is_tracing() or tensor.device.type != "cpu"


def matmul_min_distances(queries: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """[n, q, C] queries, [n or 1, g, C] galleries -> [n, q] Euclidean distance to the nearest gallery row."""
    products = torch.matmul(queries, gallery.transpose(-1, -2))
    squared = queries.square().sum(-1, keepdim=True) - 2 * products + gallery.square().sum(-1)[..., None, :]
    return squared.amin(-1).clamp_min(0).sqrt()


def nearest_distances(queries: torch.Tensor, gallery: torch.Tensor, search=None) -> torch.Tensor:
    """[n, q, C] queries against one shared [g, C] gallery (PatchCore's bank) -> [n, q] nearest distances."""
    if search is None or traceable(queries):
        return matmul_min_distances(queries, gallery[None])
    n, q, channels = queries.shape
    return search.min_distances(queries.reshape(n * q, channels), gallery).reshape(n, q)


def nearest_in_images(queries: torch.Tensor, gallery_of, chosen: torch.Tensor, search=None) -> torch.Tensor:
    """[n, q, C] queries, each image against its own gallery ``gallery_of(chosen[i:i+1])`` [1, g, C] (SPADE:
    the rows of the K training images ``chosen`` [n, K] retrieved for it) -> [n, q] nearest distances.
    On the CPU one image's gallery exists at a time; traced, all of them, gathered in one step."""
    if search is None or traceable(queries):
        return matmul_min_distances(queries, gallery_of(chosen))
    return torch.stack(
        [search.min_distances(queries[i], gallery_of(chosen[i : i + 1])[0]) for i in range(len(queries))]
    )


BLOCK_ELEMENTS = 1 << 22  # one [queries, gallery] block of distances: 16 MB of float32


class TorchSearch:
    """Chunked float32 ``addmm`` with the gallery norms folded in as the bias.

    The default chunk keeps each block of distances near 16 MB (``BLOCK_ELEMENTS``), so it is
    written and reduced while still in cache: for SPADE's layer 1 (3136 x 15,680 x 256) 256-query
    blocks took 80-90 ms against 128 ms for 1024-query (64 MB) blocks on a 2-core Xeon.
    """

    name = "torch"

    def __init__(self, chunk: int | None = None):
        self.chunk = chunk

    def min_distances(self, queries: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
        gallery_sq = gallery.square().sum(1)
        out = torch.empty(len(queries))
        chunk = self.chunk or max(64, min(1024, BLOCK_ELEMENTS // max(1, len(gallery))))
        for start in range(0, len(queries), chunk):
            block = queries[start : start + chunk]
            partial = torch.addmm(gallery_sq, block, gallery.T, beta=1, alpha=-2).amin(1)
            out[start : start + chunk] = partial + block.square().sum(1)
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


class BoundedSearch:
    """Exact search against one fixed gallery (PatchCore's memory bank), pruned by a lower bound.

    With the gallery centred and P its ``dims`` top principal directions, ``|q - g|^2 >=
    |P(q - g)|^2 + (|r_q| - |r_g|)^2`` (r: the part outside P), which is ``|q|^2 + |g|^2 - 2 [Pq, |r_q|] .
    [Pg, |r_g|]``: one matrix product in ``dims + 1`` instead of D dimensions. Per block of queries the
    gallery row with the smallest bound gives an upper bound U (its exact distance); only rows whose
    bound is below U for some query of the block can be nearest, and the exact distances are computed
    for that union alone. Nothing nearer is ever skipped (the bound carries a float-rounding margin), so
    the result is the brute-force minimum. Patch features are strongly correlated: at 15,680 x 1024
    (real hazelnut and transistor features, 200 images) about 640-850 of the 15,680 rows survive per
    block of 64 queries, and one image's 784 queries took 32-37 ms against about 130 ms for torch's
    brute force on a 2-core Xeon. On isotropic data nothing is pruned, so the first call times both on the first
    ``block * 4`` queries and keeps the faster for this gallery (``timings``, ``choice``).
    """

    name = "bounded"

    def __init__(self, fallback: NearestSearch | None = None, dims: int = 127, block: int = 64):
        self.fallback = fallback or default_search()
        self.dims, self.block = dims, block
        self.choice: str | None = None  # "bounded" or the fallback's name, once measured
        self.timings: dict[str, float] = {}
        self.kept_rows = 0.0  # mean gallery rows searched exactly per block, in the last pruned search
        self._gallery: torch.Tensor | None = None

    def _build(self, gallery: torch.Tensor) -> None:
        self._gallery, self.choice, self.timings = gallery, None, {}
        self._mean = gallery.mean(0)
        centred = gallery - self._mean
        _, vectors = torch.linalg.eigh(centred.T.double() @ centred.double())
        self._basis = vectors[:, -self.dims :].flip(1).float().contiguous()
        projected = centred @ self._basis
        self._sq = centred.square().sum(1)
        outside = (self._sq - projected.square().sum(1)).clamp_min_(0).sqrt_()
        self._bound_rows = torch.cat([projected, outside[:, None]], 1).contiguous()
        self._centred = centred
        self._slack = 1e-5 * float(self._sq.max())  # float32 rounding of the bound, with room to spare

    def _bounded(self, queries: torch.Tensor) -> torch.Tensor:
        centred = queries - self._mean
        projected = centred @ self._basis
        sq = centred.square().sum(1)
        outside = (sq - projected.square().sum(1)).clamp_min_(0).sqrt_()
        bound_queries = torch.cat([projected, outside[:, None]], 1)
        out = torch.empty(len(queries))
        bound = torch.empty(min(self.block, len(queries)), len(self._centred))
        kept = 0
        for start in range(0, len(queries), self.block):
            stop = start + self.block
            block, block_sq = centred[start:stop], sq[start:stop]
            part = bound[: len(block)]  # bound^2 - |q|^2
            torch.addmm(self._sq, bound_queries[start:stop], self._bound_rows.T, alpha=-2, out=part)
            first = self._centred[part.argmin(1)]
            upper = (block - first).square().sum(1) - block_sq  # exact^2 - |q|^2 of the best-bounded row
            part.sub_((upper + self._slack + 1e-5 * block_sq)[:, None])
            keep = (part.amin(0) < 0).nonzero()[:, 0]
            kept += len(keep)
            rows = self._centred.index_select(0, keep)
            out[start:stop] = torch.addmm(self._sq[keep], block, rows.T, alpha=-2).amin(1)
        self.kept_rows = kept / math.ceil(len(queries) / self.block)
        return out.add_(sq).clamp_min_(0).sqrt_()

    def min_distances(self, queries: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
        if gallery.shape[1] <= self.dims + 1 or len(gallery) < 4 * self.block:
            return self.fallback.min_distances(queries, gallery)  # nothing to gain
        if gallery is not self._gallery:
            self._build(gallery)
        if self.choice is None:
            head = queries[: 4 * self.block]
            self.timings = {
                "bounded": _time(self, head, gallery, 1, self._bounded),
                self.fallback.name: _time(self.fallback, head, gallery, 1),
            }
            self.choice = min(self.timings, key=self.timings.get)
        if self.choice == "bounded":
            return self._bounded(queries)
        return self.fallback.min_distances(queries, gallery)


SEARCHES = {"torch": TorchSearch, "faiss": FaissSearch}
_probed: dict[str, object] = {}


def _time(
    search: NearestSearch, queries: torch.Tensor, gallery: torch.Tensor, repeats: int = 3, call=None
) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        call(queries) if call else search.min_distances(queries, gallery)
        best = min(best, time.perf_counter() - started)
    return best


def probe(queries: int = 392, gallery: int = 15680, channels: int = 256) -> dict[str, float]:
    """Seconds per backend for one [queries x channels] by [gallery x channels] search: SPADE's layer 1
    (K = 5 images of 56 x 56 positions) at 1/8 of the query positions, about 0.1-0.3 s in all.

    The full gallery matters: with a gallery of 1,960 rows faiss won here (27 vs 31 ms) while on the
    real 15,680 rows torch was 3.3x faster (383 vs 1249 ms), so a smaller probe picked the wrong one."""
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


def _cache_file() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "spadim" / "search-probe.json"


def _machine_key() -> str:
    """What the winner depends on: CPU, thread count and the two libraries' versions."""
    try:
        import faiss

        faiss_version = faiss.__version__
    except ImportError:
        faiss_version = "none"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            model = next(
                (line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), model
            )
    except OSError:
        pass
    return f"{model}|threads={torch.get_num_threads()}|torch={torch.__version__}|faiss={faiss_version}"


def _timings() -> dict[str, float]:
    """The probe's timings: measured once per machine and remembered in the user's cache folder."""
    if "timings" in _probed:
        return _probed["timings"]
    key, path = _machine_key(), _cache_file()
    try:
        remembered = json.loads(path.read_text())
    except (OSError, ValueError):
        remembered = {}
    timings = remembered.get(key)
    if not isinstance(timings, dict) or not timings or not set(timings) <= set(SEARCHES):
        timings = probe()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({**remembered, key: timings}, indent=1))
        except OSError:
            pass  # a read-only home only costs the probe again next time
    _probed["timings"] = timings
    return timings


def default_search() -> NearestSearch:
    """The backend forced by ``$SPADIM_SEARCH``, else the one the probe found faster on this CPU."""
    forced = os.environ.get("SPADIM_SEARCH", "").strip().lower()
    if forced:
        if forced not in SEARCHES:
            raise SpadimError(
                f"SPADIM_SEARCH={forced!r} is not a search backend: use one of {', '.join(SEARCHES)}"
            )
        return SEARCHES[forced]()
    timings = _timings()
    return SEARCHES[min(timings, key=timings.get)]()


def check_search(name: str, owner: str) -> None:
    """A config's ``search``: auto, a backend of :data:`SEARCHES`, or the name of a strategy object the
    method was given (``owner`` names the option)."""
    if name not in ("auto", *SEARCHES, BoundedSearch.name):
        raise SpadimError(f"search {name!r} ({owner}): choose auto or one of {', '.join(SEARCHES)}")


def make_search(name: str = "auto") -> NearestSearch:
    """``"auto"``: :func:`default_search`; else the named backend (the CLI's ``--search``)."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return default_search()
    if name not in SEARCHES:
        raise SpadimError(f"search {name!r}: choose auto or one of {', '.join(SEARCHES)}")
    return SEARCHES[name]()


def probe_report() -> dict:
    """What the probe measured and picked on this machine (for benchmarks and run metadata)."""
    timings = _timings()
    return {
        "seconds": timings,
        "picked": min(timings, key=timings.get),
        "forced": os.environ.get("SPADIM_SEARCH") or None,
        "remembered_in": str(_cache_file()),
    }
