"""PatchCore's distance grids for many layer subsets at once: the comparison behind ``--layers auto``.

Fitting PatchCore once per subset (15 coresets, each embedding the training patches twice) was most of
a fit's time. The comparison here shares what the subsets have in common and leaves out the coreset:

1. Per layer, the locally aware patch features (:func:`.patchcore.patch_features`, pooled to ``dim``)
   are computed once, at the layer's own grid. A subset's embedding is then exactly
   :func:`.patchcore.embed_patches`: its layers' pooled maps resized to the first layer's grid
   (bilinear) and pooled together to ``target_dim``; only resizing and the last pooling run per
   subset, a few images at a time.
2. No coreset: the memory bank is a seeded random sample of the fit part's patch embeddings, as many
   as the coreset would keep (``share`` of them), at most ``cap`` rows so that the search grows
   linearly with the images. The greedy coreset covers the patches more evenly than a random sample,
   so the sample's distances are higher, but for every subset alike.
3. The search runs in the subset's top ``dims`` principal directions (of the bank), with each bank
   row's remaining length as one more coordinate (distances are never under-estimated by more than the
   dropped cross term), keeps each query's ``rerank`` nearest candidates and re-ranks them by their
   exact distances in all ``target_dim`` dimensions. A query's distance is therefore an exact distance
   to a bank row: its nearest, unless the true nearest row ranked below ``rerank`` candidates.

The returned grids hold squared distances, as :meth:`.patchcore.PatchCore.distance_grid` does.
docs/masks-and-layers.md gives the measured choices against fitting PatchCore per subset.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from spadim.features.extractor import FeatureSet
from .patchcore import DIM, PATCH, patch_features, pool_last

SHARE = 0.1  # bank rows per fit-part patch: PatchCore's coreset ratio
CAP = 12_544  # at most this many bank rows (10% of 40 images at 56 x 56): the search grows linearly
DIMS = 64  # principal directions of the candidate search
RERANK = 8  # candidates per query re-ranked by their exact distance
BLOCK_ELEMENTS = 1 << 22  # one [queries, bank] block of candidate distances: 16 MB


def layer_features(fs: FeatureSet, layers, dim: int = DIM, patch: int = PATCH) -> dict[int, torch.Tensor]:
    """Per layer, [n, h, w, dim] pooled patch features at the layer's own grid (computed once)."""
    with torch.inference_mode():
        return {layer: patch_features(fs.layers[layer], dim, patch).contiguous() for layer in layers}


def subset_embeddings(
    pooled: dict[int, torch.Tensor], combo: tuple[int, ...], target_dim: int = DIM, batch: int = 4
) -> Iterator[torch.Tensor]:
    """[b * H * W, target_dim] embeddings of ``batch`` images at a time, as :func:`.patchcore.embed_patches`
    computes them from the same layer maps (rows image by image, then row-major positions)."""
    grid = tuple(pooled[combo[0]].shape[1:3])
    for start in range(0, len(pooled[combo[0]]), batch):
        maps = []
        for layer in combo:
            f = pooled[layer][start : start + batch]
            if tuple(f.shape[1:3]) != grid:
                f = F.interpolate(f.permute(0, 3, 1, 2), size=grid, mode="bilinear", align_corners=False)
                f = f.permute(0, 2, 3, 1)
            maps.append(f)
        stacked = torch.stack(maps, dim=3)
        yield pool_last(stacked.reshape(-1, len(combo) * stacked.shape[-1]), target_dim)


def bank_rows(total: int, share: float, cap: int, seed: int) -> torch.Tensor:
    """Sorted seeded sample of ``min(int(share * total), cap)`` (at least one) of ``range(total)``."""
    size = max(1, min(int(share * total), cap))
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(total, generator=generator)[:size].sort().values


def sampled_bank(pooled, combo, rows: torch.Tensor, target_dim: int = DIM) -> torch.Tensor:
    """The embedding rows ``rows`` (sorted) of the fit part, gathered batch by batch."""
    parts, start = [], 0
    for emb in subset_embeddings(pooled, combo, target_dim):
        here = rows[(rows >= start) & (rows < start + len(emb))] - start
        parts.append(emb[here])
        start += len(emb)
    return torch.cat(parts)


def principal_directions(centred: torch.Tensor, dims: int, seed: int = 0, rows: int = 4096) -> torch.Tensor:
    """[D, dims] orthonormal, close to the top principal directions of ``centred`` [N, D]: a seeded
    randomized range finder with two power iterations on at most ``rows`` evenly spaced rows (a candidate
    search needs a good subspace, not the exact one; the exact eigendecomposition of 1024 x 1024 cost
    more than a subset's whole search)."""
    sample = centred[:: max(1, len(centred) // rows)]
    dims = min(dims, *sample.shape)
    generator = torch.Generator().manual_seed(seed)
    span = torch.randn(sample.shape[1], min(dims + 8, sample.shape[1]), generator=generator)
    for _ in range(2):
        span = torch.linalg.qr(sample.T @ (sample @ span)).Q
    _, _, right = torch.linalg.svd(sample @ span, full_matrices=False)
    return (span @ right[:dims].T).contiguous()


class RerankedSearch:
    """Nearest bank row of each query: candidates by principal directions, exact distance among them."""

    def __init__(self, bank: torch.Tensor, dims: int = DIMS, rerank: int = RERANK, seed: int = 0):
        self.bank, self.rerank = bank, min(rerank, len(bank))
        self.mean = bank.mean(0)
        centred = bank - self.mean
        self.basis = principal_directions(centred, dims, seed)
        projected = centred @ self.basis
        rest = (centred.square().sum(1) - projected.square().sum(1)).clamp_min_(0)
        self.reduced = torch.cat([projected, rest.sqrt()[:, None]], 1)  # [|P b|, |b - P b|]
        self.reduced_sq = self.reduced.square().sum(1)

    def squared(self, queries: torch.Tensor) -> torch.Tensor:
        """[Q] squared distance of each query (rows of ``target_dim``) to its re-ranked nearest bank row."""
        centred = queries - self.mean
        reduced = torch.cat([centred @ self.basis, torch.zeros(len(queries), 1)], 1)
        out = torch.empty(len(queries))
        chunk = max(64, min(1024, BLOCK_ELEMENTS // len(self.bank)))
        for start in range(0, len(queries), chunk):
            block = reduced[start : start + chunk]
            approx = torch.addmm(self.reduced_sq, block, self.reduced.T, alpha=-2)
            candidates = torch.topk(approx, self.rerank, dim=1, largest=False).indices  # [q, m]
            exact = (queries[start : start + chunk, None, :] - self.bank[candidates]).square().sum(2)
            out[start : start + chunk] = exact.amin(1)
        return out


def subset_grids(
    fit: FeatureSet,
    val: FeatureSet,
    combos,
    dim: int = DIM,
    target_dim: int = DIM,
    share: float = SHARE,
    cap: int = CAP,
    dims: int = DIMS,
    rerank: int = RERANK,
    seed: int = 0,
    tick: Callable[[], None] | None = None,
) -> dict[tuple[int, ...], torch.Tensor]:
    """Per subset, [len(val), H, W] squared distances of the validation patches to a bank sampled from
    the fit part (see the module docstring); ``tick()`` after each subset."""
    used = sorted({layer for combo in combos for layer in combo})
    pooled_fit, pooled_val = layer_features(fit, used, dim), layer_features(val, used, dim)
    grids = {}
    with torch.inference_mode():
        for combo in combos:
            grid = tuple(pooled_fit[combo[0]].shape[1:3])
            rows = bank_rows(len(fit) * grid[0] * grid[1], share, cap, seed)
            search = RerankedSearch(sampled_bank(pooled_fit, combo, rows, target_dim), dims, rerank, seed)
            distances = [search.squared(emb) for emb in subset_embeddings(pooled_val, combo, target_dim)]
            grids[combo] = torch.cat(distances).reshape(len(val), *grid)
            if tick:
                tick()
    return grids
