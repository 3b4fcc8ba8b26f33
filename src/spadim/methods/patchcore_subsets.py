"""PatchCore's distance grids for many layer subsets at once: the comparison behind ``--layers auto``.

Fitting PatchCore once per subset (15 coresets, each embedding the training patches twice) was most of
a fit's time. The comparison here shares what the subsets have in common and leaves out the coreset:

1. Per layer, the locally aware patch features (:func:`.patchcore.patch_features`, pooled to ``dim``)
   are computed once, at the layer's own grid. A subset's embedding is :func:`.patchcore.embed_patches`'s:
   its layers' maps resized to the first layer's grid (bilinear) and pooled together to ``target_dim``.
   When no pooling bin spans two layers (subsets of 1, 2 or 4 layers at the default 1024), each layer's
   share of that last pooling is taken at its own grid, before resizing (both steps are linear and act
   on different axes, so they commute; float rounding differs by about 1e-7 relative).
2. No coreset: the memory bank is a seeded random sample of the fit part's patch embeddings, as many
   as the coreset would keep (``share`` of them) and at most ``cap``, so that the search grows linearly
   with the images; only the sampled rows are embedded. The greedy coreset covers the patches more
   evenly than a random sample, so the sample's distances are somewhat higher, for every subset alike.
3. Candidates, then exact distances. Bank rows are reduced to the subset's top ``dims`` principal
   directions plus their remaining length (a query's remaining length is the same for every row, so
   it does not change the ranking); an inverted file (faiss ``IndexIVFFlat``, about sqrt(rows) k-means
   lists, ``probes`` scanned per query) or, for a small bank, a flat scan returns each query's
   ``rerank`` best rows in that space, and the query keeps its exact distance, in all ``target_dim``
   dimensions, to the nearest of them. A query's distance is therefore an exact distance to a bank
   row: its nearest, unless the candidates missed it.

The returned grids hold squared distances, as :meth:`.patchcore.PatchCore.distance_grid` does.
docs/masks-and-layers.md gives the measured choices against fitting PatchCore per subset.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from spadim.features.extractor import FeatureSet
from .patches import DIM, PATCH, patch_features, pool_last

SHARE = 0.1  # bank rows per fit-part patch: PatchCore's coreset ratio
CAP = 12_544  # at most this many bank rows (10% of 40 images at 56 x 56): the search grows linearly
DIMS = 31  # principal directions of the candidate search (with the remaining length: 32 wide)
RERANK = 4  # candidates per query compared in all dimensions
PROBES = 4  # inverted lists scanned per query
SCAN_BELOW = 4096  # banks smaller than this are scanned whole
BATCH = 8  # validation images embedded and searched together
CHUNK = 2048  # queries whose candidates are compared in all dimensions together
KMEANS_ROUNDS = 6  # Lloyd's rounds that place the inverted lists


def layer_features(fs: FeatureSet, layers, dim: int = DIM, patch: int = PATCH) -> dict[int, torch.Tensor]:
    """Per layer, [n, h, w, dim] pooled patch features at the layer's own grid (computed once)."""
    with torch.inference_mode():
        return {layer: patch_features(fs.layers[layer], dim, patch).contiguous() for layer in layers}


def _layer_shares(pooled: dict[int, torch.Tensor], combo: tuple[int, ...], target_dim: int, kept=None):
    """Per layer of ``combo``, its block of the last pooling (``[n, h, w, dim / k]``, at its own grid)
    when each pooling bin averages ``k`` values of one layer; None when some bin spans two layers.
    ``kept`` (a dict) keeps the blocks of one ``k`` for the next subsets of the same size."""
    dim = pooled[combo[0]].shape[-1]
    length = len(combo) * dim
    if length % target_dim or dim % (length // target_dim):
        return None
    k = length // target_dim
    if k == 1:
        return [pooled[layer] for layer in combo]
    kept = {} if kept is None else kept
    if any(key[1] != k for key in kept):
        kept.clear()
    for layer in combo:
        if (layer, k) not in kept:
            kept[layer, k] = pooled[layer].unflatten(-1, (-1, k)).mean(-1)
    return [kept[layer, k] for layer in combo]


def subset_embeddings(
    pooled: dict[int, torch.Tensor],
    combo: tuple[int, ...],
    target_dim: int = DIM,
    batch: int = BATCH,
    kept=None,
) -> Iterator[list[torch.Tensor]]:
    """The embeddings of ``batch`` images at a time, as :func:`.patchcore.embed_patches` computes them from
    the same layer maps (rows image by image, then row-major positions), as column blocks
    ``[b * H * W, width]`` that join to ``target_dim`` (one block per layer, or one in all)."""
    grid = tuple(pooled[combo[0]].shape[1:3])
    shares = _layer_shares(pooled, combo, target_dim, kept)
    parts = shares if shares is not None else [pooled[layer] for layer in combo]
    for start in range(0, len(parts[0]), batch):
        blocks = []
        for f in parts:
            f = f[start : start + batch]
            if tuple(f.shape[1:3]) != grid:
                f = F.interpolate(f.permute(0, 3, 1, 2), size=grid, mode="bilinear", align_corners=False)
                f = f.permute(0, 2, 3, 1)
            blocks.append(f.reshape(-1, f.shape[-1]))
        yield blocks if shares is not None else [pool_last(torch.cat(blocks, 1), target_dim)]


def bank_rows(total: int, share: float, cap: int, seed: int) -> torch.Tensor:
    """Sorted seeded sample of ``min(int(share * total), cap)`` (at least one) of ``range(total)``."""
    size = max(1, min(int(share * total), cap))
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(total, generator=generator)[:size].sort().values


def _bilinear_axis(size_in: int, size_out: int, positions: torch.Tensor):
    """Source indices and weight along one axis, as ``F.interpolate(mode="bilinear", align_corners=False)``."""
    source = ((positions.double() + 0.5) * (size_in / size_out) - 0.5).clamp_min(0)
    low = source.floor().long().clamp_max(size_in - 1)
    return low, (low + 1).clamp_max(size_in - 1), (source - low).float()[:, None]


def bank_embeddings(
    pooled: dict[int, torch.Tensor],
    combo: tuple[int, ...],
    rows: torch.Tensor,
    target_dim: int = DIM,
    kept=None,
) -> torch.Tensor:
    """The embedding rows ``rows`` (image by image, then row-major positions of the first layer's grid) of
    :func:`subset_embeddings`, computed at those positions alone: each coarser layer is interpolated
    bilinearly at them (equal to resizing the whole map, up to float rounding)."""
    height, width = pooled[combo[0]].shape[1:3]
    image, y, x = rows // (height * width), rows % (height * width) // width, rows % width
    shares = _layer_shares(pooled, combo, target_dim, kept)
    per_layer = []
    for f in shares if shares is not None else [pooled[layer] for layer in combo]:
        h, w = f.shape[1:3]
        if (h, w) == (height, width):
            per_layer.append(f[image, y, x])
            continue
        y0, y1, wy = _bilinear_axis(h, height, y)
        x0, x1, wx = _bilinear_axis(w, width, x)
        top = (1 - wx) * f[image, y0, x0] + wx * f[image, y0, x1]
        bottom = (1 - wx) * f[image, y1, x0] + wx * f[image, y1, x1]
        per_layer.append((1 - wy) * top + wy * bottom)
    joined = torch.cat(per_layer, 1)
    return joined if shares is not None else pool_last(joined, target_dim)


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


def kmeans(points: torch.Tensor, count: int, seed: int = 0, rounds: int = KMEANS_ROUNDS) -> torch.Tensor:
    """[count, D] centres after Lloyd's rounds from ``count`` seeded distinct points (an empty cluster
    keeps its centre)."""
    generator = torch.Generator().manual_seed(seed)
    centres = points[torch.randperm(len(points), generator=generator)[:count]].clone()
    squared = points.square().sum(1, keepdim=True)
    for _ in range(rounds):
        nearest = torch.addmm(squared, points, centres.T, alpha=-2).add_(centres.square().sum(1)).argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, nearest, points)
        sizes = torch.bincount(nearest, minlength=count)
        filled = sizes > 0
        centres[filled] = sums[filled] / sizes[filled, None]
    return centres


class RerankedSearch:
    """Nearest bank row of each query: candidates in principal directions, exact distances among them
    (see the module docstring, step 3)."""

    def __init__(
        self,
        bank: torch.Tensor,
        dims: int = DIMS,
        rerank: int = RERANK,
        seed: int = 0,
        probes: int = PROBES,
        scan_below: int = SCAN_BELOW,
    ):
        import faiss

        self.bank, self.rerank = bank, min(rerank, len(bank))
        self.bank_sq = bank.square().sum(1)
        mean = bank.mean(0)
        centred = bank - mean
        self.basis = principal_directions(centred, dims, seed)
        self.offset = mean @ self.basis  # a query's coordinates are q @ basis - offset
        projected = centred @ self.basis
        rest = (centred.square().sum(1) - projected.square().sum(1)).clamp_min_(0)
        reduced = torch.cat([projected, rest.sqrt()[:, None]], 1).contiguous()
        width = reduced.shape[1]
        if len(bank) < scan_below:
            self.index = faiss.IndexFlatL2(width)
        else:  # lists from a few k-means rounds in torch; faiss scans them
            self.coarse = faiss.IndexFlatL2(width)  # the inverted file keeps a reference to it
            self.coarse.add(kmeans(reduced, round(len(bank) ** 0.5), seed).numpy())
            self.index = faiss.IndexIVFFlat(self.coarse, width, self.coarse.ntotal)
            self.index.nprobe = probes
        self.index.add(reduced.numpy())

    def squared(self, blocks: list[torch.Tensor]) -> torch.Tensor:
        """[Q] squared distance of each query to its re-ranked nearest bank row; the queries are given as
        column blocks that join to the bank's width (:func:`subset_embeddings`), never joined here."""
        edges = torch.tensor([0] + [b.shape[1] for b in blocks]).cumsum(0).tolist()
        columns = [slice(a, b) for a, b in zip(edges, edges[1:])]
        reduced = torch.zeros(len(blocks[0]), self.basis.shape[1] + 1)
        projected = sum(block @ self.basis[cols] for block, cols in zip(blocks, columns)) - self.offset
        reduced[:, :-1] = projected
        _, found = self.index.search(reduced.numpy(), self.rerank)
        found = torch.from_numpy(found)
        found = torch.where(found < 0, found[:, :1], found)  # fewer than ``rerank`` rows in the lists probed
        out = torch.empty(len(found))
        for start in range(0, len(found), CHUNK):
            rows, stop = found[start : start + CHUNK], start + CHUNK
            candidates = self.bank[rows]  # [chunk, rerank, width]
            squared = self.bank_sq[rows]
            for block, cols in zip(blocks, columns):
                q = block[start:stop]
                squared = squared - 2 * torch.bmm(candidates[:, :, cols], q[:, :, None])[:, :, 0]
                squared += q.square().sum(1, keepdim=True)
            out[start:stop] = squared.amin(1).clamp_min_(0)
        return out


def sampled_banks(
    fit: FeatureSet,
    combos,
    dim: int = DIM,
    target_dim: int = DIM,
    share: float = SHARE,
    cap: int = CAP,
    seed: int = 0,
    batch: int = BATCH,
) -> dict[tuple[int, ...], torch.Tensor]:
    """Per subset, its bank: the embeddings of :func:`bank_rows` of the fit part's patches, gathered while
    the fit part's patch features are computed ``batch`` images at a time (never all at once)."""
    used = sorted({layer for combo in combos for layer in combo})
    wanted, parts = {}, {combo: [] for combo in combos}
    for start in range(0, len(fit), batch):
        pooled, kept = layer_features(fit.rows(start, start + batch), used, dim), {}
        for combo in sorted(combos, key=len):  # the subsets of one size share their layers' blocks
            height, width = pooled[combo[0]].shape[1:3]
            per_image = height * width
            if combo not in wanted:
                wanted[combo] = bank_rows(len(fit) * per_image, share, cap, seed)
            rows = wanted[combo]
            here = (
                rows[(rows >= start * per_image) & (rows < (start + batch) * per_image)] - start * per_image
            )
            parts[combo].append(bank_embeddings(pooled, combo, here, target_dim, kept))
    return {combo: torch.cat(chunks) for combo, chunks in parts.items()}


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
    probes: int = PROBES,
    seed: int = 0,
    tick: Callable[[], None] | None = None,
) -> dict[tuple[int, ...], torch.Tensor]:
    """Per subset, [len(val), H, W] squared distances of the validation patches to a bank sampled from
    the fit part (see the module docstring); ``tick()`` after each subset."""
    used = sorted({layer for combo in combos for layer in combo})
    grids = {}
    with torch.inference_mode():
        banks = sampled_banks(fit, combos, dim, target_dim, share, cap, seed)
        pooled_val, kept = layer_features(val, used, dim), {}
        for combo in sorted(combos, key=len):  # the subsets of one size share their layers' blocks
            search = RerankedSearch(banks.pop(combo), dims, rerank, seed, probes)
            embeddings = subset_embeddings(pooled_val, combo, target_dim, kept=kept)
            distances = [search.squared(emb) for emb in embeddings]
            grids[combo] = torch.cat(distances).reshape(len(val), *pooled_val[combo[0]].shape[1:3])
            if tick:
                tick()
    return {combo: grids[combo] for combo in combos}
