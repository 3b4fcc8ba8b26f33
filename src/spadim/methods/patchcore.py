"""PatchCore (Roth et al., CVPR 2022): a coreset memory bank of locally aware patch features.

Computed as the reference implementation (patchcore-inspection, ``patchcore.py``,
``common.py``, ``sampler.py``) with its published settings (``-le layer2 -le layer3
--pretrain_embed_dimension 1024 --target_embed_dimension 1024 --patchsize 3
--anomaly_scorer_num_nn 1``, ``sampler -p 0.1 approx_greedy_coreset``):

1. Patch features. Each layer's map is unfolded into 3x3 neighbourhoods (stride 1, zero
   padding 1); a position's C*9 values, flattened channel-major as ``nn.Unfold`` lays them
   out, are reduced to ``dim`` by 1-D adaptive average pooling (``MeanMapper``). That is not
   a plain 3x3 mean per channel unless C*9 = k * dim: for wide_resnet50_2's layer 3
   (9216 -> 1024) each output is exactly one channel's 3x3 mean (padding counted), for its
   layer 2 (4608 -> 1024) each bin spans 4.5 values, i.e. half neighbourhoods. The coarser
   layers are resized to the first (finest) layer's grid, bilinearly (align_corners=False).
   The per-layer vectors are concatenated layer by layer and pooled once more to
   ``target_dim`` (``Aggregator``); with two layers of 1024 that averages neighbouring pairs,
   so the result is layer 2 pooled to 512 followed by layer 3 pooled to 512.
   Deviations, exact in real arithmetic (float rounding differs, ~1e-7 relative): the reference
   resizes the unfolded C*9 maps and then pools; here each layer is pooled first and the
   ``dim`` maps are resized (both steps are linear and act on different axes, so they
   commute). The pooling bins repeat with period gcd(C*9, dim), so unfold + pooling is one
   grouped convolution whose weights are the bins (no unfolded copy), and the final pooling
   is a batch of small matrix products; 5x faster than unfold + ``adaptive_avg_pool1d`` here.
   Images are embedded ``batch`` at a time, so memory is bounded by one chunk.
2. Memory bank: the greedy k-center coreset (:mod:`.coreset`) of all training patches, the
   reference's default ``ApproximateGreedyCoresetSampler`` (random projection to 128 dims,
   starting vector = mean distance to 10 random points), seeded; ``coreset = 0.1`` keeps
   ``int(0.1 N)`` patches, ``coreset = 1`` all of them. The published runs use this sampler;
   its exact sibling needs the N x N matrix in the reference (here ``starts=0`` gives it
   without). Fitting embeds the training set twice (project, then gather the picked rows)
   so the full [N, 1024] embedding never exists at once.
3. Pixel scores: squared Euclidean distance of each test patch to its nearest bank vector,
   as the reference computes it (faiss ``IndexFlatL2`` returns squared L2; with
   ``anomaly_scorer_num_nn = 1`` that is the score), upsampled bilinearly to the image and
   blurred with a Gaussian of sigma 4 (``RescaleSegmentor``; :func:`.maps.upsample_blur`).
   The search is exact, as the reference's flat index; with ``--search auto`` it is
   :class:`.nearest.BoundedSearch` (a principal-direction lower bound prunes the bank, 3.5-4x
   faster on real patch features, timed against brute force on the first test queries).
4. Image score: the paper's reweighted maximum (eq. 7), which the reference code does not
   implement (its image score is the plain maximum patch score). For the test patch
   ``m_test`` with the largest nearest distance ``s* = |m_test - m*|`` (Euclidean, as the
   paper writes it), ``N_b(m*)`` is ``m*`` and its ``b - 1`` nearest other bank vectors, and
   ``s = (1 - softmax_{m in N_b(m*)}(|m_test - m|)[m*]) * s*``. The paper gives no b; b = 9
   (``neighbours``) is the value anomalib's implementation uses. ``neighbours = 0`` gives the
   reference code's score instead: the maximum of the squared patch distances.

Layers: the paper's 2 and 3. ``configure`` maps the run default ``--layers 1,2,3`` (SPADE's
and PaDiM's) to (2, 3) and uses any other subset as given; the lowest layer sets the grid.
Settings ``coreset`` and ``patchcore_dim`` (both ``dim`` and ``target_dim``) configure the rest.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from spadim.features.extractor import FeatureSet
from .coreset import PROJECTION_DIM, STARTS, coreset_size, greedy_coreset, random_projection
from .maps import upsample_blur
from .nearest import BoundedSearch, NearestSearch, make_search

PAPER_LAYERS = (2, 3)
DIM = 1024  # the reference's pretrain_embed_dimension and target_embed_dimension
PATCH = 3
NEIGHBOURS = 9


def pooling_pattern(length: int, size: int) -> tuple[int, torch.Tensor]:
    """1-D adaptive average pooling of ``length`` values to ``size`` (bin i spans floor(i L/s) to
    ceil((i+1) L/s)) repeats every L/g inputs and s/g outputs, g = gcd(L, s): -> (g, [L/g, s/g] weights)."""
    g = math.gcd(length, size)
    inputs, outputs = length // g, size // g
    weights = np.zeros((inputs, outputs), np.float32)  # numpy: a constant, also inside a traced graph
    for i in range(outputs):
        start, stop = i * inputs // outputs, -(-(i + 1) * inputs // outputs)
        weights[start:stop, i] = 1.0 / (stop - start)
    return g, torch.from_numpy(weights)


def pool_last(x: torch.Tensor, size: int) -> torch.Tensor:
    """Adaptive average pooling of the last axis of [P, L] to [P, size], as g small matrix products."""
    g, pattern = pooling_pattern(x.shape[-1], size)
    return (x.reshape(-1, g, len(pattern)) @ pattern).reshape(*x.shape[:-1], size)


def patch_kernel(channels: int, dim: int, patch: int = PATCH) -> tuple[int, torch.Tensor] | None:
    """(groups, weights) of the grouped convolution that is unfold + pooling to ``dim`` for a layer of
    ``channels``, when the pooling's period covers whole channels (always for power-of-two ``dim``)."""
    g, pattern = pooling_pattern(channels * patch * patch, dim)
    if channels % g:
        return None
    return g, pattern.T.reshape(dim // g, channels // g, patch, patch).repeat(g, 1, 1, 1).contiguous()


def patch_features(feature_map: torch.Tensor, dim: int, patch: int = PATCH, kernel=None) -> torch.Tensor:
    """[n, C, h, w] -> [n, h, w, dim]: each position's zero-padded ``patch`` x ``patch`` neighbourhood,
    flattened channel-major (C, row, column), adaptive-average-pooled to ``dim``.

    A grouped convolution (:func:`patch_kernel`, or the precomputed ``kernel``) where it applies;
    otherwise the neighbourhoods are unfolded.
    """
    n, c, h, w = feature_map.shape
    pad = (patch - 1) // 2
    kernel = kernel if kernel is not None else patch_kernel(c, dim, patch)
    if kernel is not None:
        groups, weight = kernel
        return F.conv2d(feature_map, weight, padding=pad, groups=groups).permute(0, 2, 3, 1)
    padded = F.pad(feature_map, (pad, pad, pad, pad))
    windows = padded.unfold(2, patch, 1).unfold(3, patch, 1)  # [n, C, h, w, p, p] view
    flat = windows.permute(0, 2, 3, 1, 4, 5).reshape(n * h * w, c * patch * patch)
    return pool_last(flat, dim).reshape(n, h, w, dim)


def embed_patches(
    fs: FeatureSet | dict,
    layers: tuple[int, ...],
    dim: int = DIM,
    target_dim: int = DIM,
    patch: int = PATCH,
    kernels: dict | None = None,
) -> tuple[torch.Tensor, tuple[int, int]]:
    """[n * H * W, target_dim] locally aware patch features (rows image by image, then row-major
    positions) and the grid (H, W) of the first layer. ``fs``: a FeatureSet or its dict of layer maps;
    ``kernels``: precomputed :func:`patch_kernel` per layer (the export's constants)."""
    layer_maps = getattr(fs, "layers", fs)
    per_layer, grid = [], None
    for layer in layers:
        f = patch_features(layer_maps[layer], dim, patch, (kernels or {}).get(layer))
        if grid is None:
            grid = tuple(f.shape[1:3])
        elif tuple(f.shape[1:3]) != grid:
            f = F.interpolate(f.permute(0, 3, 1, 2), size=grid, mode="bilinear", align_corners=False).permute(
                0, 2, 3, 1
            )
        per_layer.append(f)
    stacked = torch.stack(per_layer, dim=3)  # [n, H, W, L, dim]
    return pool_last(stacked.reshape(-1, len(layers) * dim), target_dim), grid


def _masked_nearest(
    queries: torch.Tensor, bank: torch.Tensor, bank_sq: torch.Tensor, excluded: torch.Tensor
) -> torch.Tensor:
    """Euclidean distance of each query to its nearest bank row outside ``excluded`` (bool [G])."""
    squared = torch.addmm(bank_sq, queries, bank.T, alpha=-2).add_(queries.square().sum(1, keepdim=True))
    squared[:, excluded] = float("inf")
    return squared.amin(1).clamp_min_(0).sqrt_()


def reweighted_score(
    query: torch.Tensor,
    bank: torch.Tensor,
    bank_sq: torch.Tensor,
    b: int,
    excluded: torch.Tensor | None = None,
) -> float:
    """Eq. 7 for one test patch feature ``query`` [D] (the image's most anomalous patch); rows in
    ``excluded`` (bool [G]) are treated as absent from the bank (leave-one-out)."""
    to_bank = torch.addmv(bank_sq, bank, query, alpha=-2).add_(query.square().sum())  # squared, [G]
    if excluded is not None:
        to_bank[excluded] = float("inf")
        b = min(b, int((~excluded).sum()))
    nearest = int(torch.argmin(to_bank))
    s_star = float((query - bank[nearest]).norm())
    b = min(b, len(bank))
    if b < 2:
        return s_star
    around = torch.addmv(bank_sq, bank, bank[nearest], alpha=-2)  # |m* - m|^2 - |m*|^2, [G]
    if excluded is not None:
        around[excluded] = float("inf")
    around[nearest] = -float("inf")  # m* is its own nearest neighbour, first in N_b(m*)
    support = torch.topk(around, b, largest=False).indices
    distances = (bank[support] - query).norm(dim=1)
    return float((1 - torch.softmax(distances, 0)[0]) * s_star)


class PatchCore:
    name = "patchcore"
    default_layers = PAPER_LAYERS  # used when the user gives no --layers
    #: leave-one-out searches each training image against the bank rows of the others
    min_calibration_images = 2
    #: the coreset needs every training patch at once
    streams_training = False

    def __init__(
        self,
        layers: tuple[int, ...] = PAPER_LAYERS,
        coreset: float = 0.1,
        dim: int = DIM,
        target_dim: int = DIM,
        neighbours: int = NEIGHBOURS,
        seed: int = 0,
        batch: int = 8,
        starts: int = STARTS,
        search: NearestSearch | None = None,
    ):
        if not 0 < coreset <= 1:
            raise ValueError(f"coreset ratio must be in (0, 1], got {coreset}")
        self.layers, self.coreset, self.dim, self.target_dim = (
            tuple(layers),
            float(coreset),
            int(dim),
            int(target_dim),
        )
        self.neighbours, self.seed, self.batch, self.starts = (
            int(neighbours),
            int(seed),
            int(batch),
            int(starts),
        )
        self.search = search or BoundedSearch()  # exact; pruned where the bank's structure allows
        self.bank: torch.Tensor | None = None  # [G, target_dim]
        self.bank_image: torch.Tensor | None = None  # [G] training image each bank row came from (at fit)
        self.grid: tuple[int, int] = (0, 0)
        self._bank_sq: torch.Tensor | None = None

    @classmethod
    def configure(cls, settings, layers: tuple[int, ...]) -> "PatchCore":
        """``layers`` as given (the first layer's grid is the patch grid); without ``--layers`` the run
        passes :attr:`default_layers`, the paper's 2,3 (``Settings.method_layers``)."""
        layers = tuple(layers)
        dim = getattr(settings, "patchcore_dim", DIM)
        name = getattr(settings, "search", "auto")
        search = BoundedSearch(make_search(name)) if name == "auto" else make_search(name)
        return cls(layers, getattr(settings, "coreset", 0.1), dim, dim, seed=settings.seed, search=search)

    def _embeddings(self, fs: FeatureSet):
        for part in fs.batches(self.batch):
            emb, self.grid = embed_patches(part, self.layers, self.dim, self.target_dim)
            yield emb

    def fit(self, fs: FeatureSet) -> "PatchCore":
        with torch.inference_mode():
            if self.coreset >= 1:
                self.bank = torch.cat(list(self._embeddings(fs)))
                picked = torch.arange(len(self.bank))
            else:
                self.bank, picked = self._coreset_bank(fs)
        self.bank_image = picked // (self.grid[0] * self.grid[1])
        self._bank_sq = None
        return self

    def _coreset_bank(self, fs: FeatureSet) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed)
        projection, projected = None, []
        for emb in self._embeddings(fs):
            if projection is None and emb.shape[1] > PROJECTION_DIM:
                projection = random_projection(emb.shape[1], generator)
            projected.append(emb @ projection if projection is not None else emb)
        projected = torch.cat(projected)
        picked = greedy_coreset(projected, coreset_size(len(projected), self.coreset), self.starts, generator)
        del projected
        bank = torch.empty(len(picked), self.target_dim)
        start = 0
        for emb in self._embeddings(fs):  # second pass: gather the picked rows, in the order picked
            here = (picked >= start) & (picked < start + len(emb))
            bank[here] = emb[picked[here] - start]
            start += len(emb)
        return bank, picked

    def distance_grid(self, fs: FeatureSet, left_out: bool = False) -> tuple[torch.Tensor, np.ndarray]:
        """[N, H, W] squared distance of every test patch to its nearest bank vector, and the image scores [N].

        ``left_out``: ``fs`` is the training set the bank was built from, and each image is searched
        against the bank without the rows its own patches contributed (see :meth:`score_left_out`)."""
        if left_out and self.bank_image is None:
            raise ValueError("score_left_out needs a model fitted in this process (bank_image)")
        if self._bank_sq is None:
            self._bank_sq = self.bank.square().sum(1)
        per_image = self.grid[0] * self.grid[1]
        grids, scores, start = [], [], 0
        with torch.inference_mode():
            for emb in self._embeddings(fs):
                d = self.search.min_distances(emb, self.bank).reshape(-1, per_image)  # Euclidean
                own = [self.bank_image == start + i if left_out else None for i in range(len(d))]
                for i, excluded in enumerate(own):
                    if excluded is not None and excluded.any():
                        d[i] = self._without_own(emb[i * per_image : (i + 1) * per_image], d[i], excluded)
                d = d.square_().reshape(-1, *self.grid)
                grids.append(d)
                worst = d.flatten(1).argmax(1)
                for i, j in enumerate(worst.tolist()):
                    if self.neighbours:
                        query = emb[i * per_image + j]
                        scores.append(
                            reweighted_score(query, self.bank, self._bank_sq, self.neighbours, own[i])
                        )
                    else:
                        scores.append(float(d[i].flatten()[j]))
                start += len(d)
        return torch.cat(grids), np.asarray(scores, dtype=np.float64)

    def _without_own(self, queries: torch.Tensor, nearest: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        """Nearest distances of one training image's patches with its own bank rows (``own``) left out:
        only the patches whose nearest row may be one of their own are searched again."""
        to_own = torch.cdist(queries, self.bank[own]).amin(1)
        # generous: float32 distances near 0 carry errors of ~sqrt(eps) |q|; a redo only costs time
        slack = 2e-3 * queries.norm(dim=1) + 1e-3 * nearest
        redo = (to_own <= nearest + slack).nonzero()[:, 0]
        out = nearest.clone()
        if len(redo):
            out[redo] = _masked_nearest(queries[redo], self.bank, self._bank_sq, own)
        return out

    def score_left_out(self, fs: FeatureSet, size: int) -> tuple[np.ndarray, np.ndarray]:
        """The training images it was fitted on (``fs``), each scored against the bank without the rows
        its own patches contributed: the deployed coreset (built from all n images, as dense as a new
        image meets) minus one image. Refitting the coreset per fold would thin the bank to (k-1)/k of the
        images and inflate the held-out scores of few-image classes (docs/inspection.md).

        Cost: one search against the whole bank (the fitted, pruned search), then, only for the patches
        whose nearest row is one of their own image's, a search with those rows masked out."""
        grid, scores = self.distance_grid(fs, left_out=True)
        return upsample_blur(grid, size), scores

    def score(self, fs: FeatureSet, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Anomaly maps [N, size, size] and image scores (eq. 7, or the maximum with ``neighbours=0``) [N]."""
        grid, scores = self.distance_grid(fs)
        return upsample_blur(grid, size), scores

    def state(self) -> dict:
        return {
            "config": {
                "layers": list(self.layers),
                "coreset": self.coreset,
                "dim": self.dim,
                "target_dim": self.target_dim,
                "neighbours": self.neighbours,
                "seed": self.seed,
                "starts": self.starts,
                "grid": list(self.grid),
            },
            "tensors": {"bank": self.bank.contiguous()},
        }

    @classmethod
    def from_state(cls, state: dict) -> "PatchCore":
        c = state["config"]
        m = cls(
            tuple(c["layers"]),
            c["coreset"],
            c["dim"],
            c["target_dim"],
            c["neighbours"],
            c["seed"],
            starts=c["starts"],
        )
        m.bank, m.grid = state["tensors"]["bank"], tuple(c["grid"])
        return m
