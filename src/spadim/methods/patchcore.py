"""PatchCore (Roth et al., CVPR 2022): a coreset memory bank of locally aware patch features.

Computed as the reference implementation (patchcore-inspection, ``patchcore.py``,
``common.py``, ``sampler.py``) with its published settings (``-le layer2 -le layer3
--pretrain_embed_dimension 1024 --target_embed_dimension 1024 --patchsize 3
--anomaly_scorer_num_nn 1``, ``sampler -p 0.1 approx_greedy_coreset``):

1. Patch features (:mod:`.patches`): each layer's 3x3 neighbourhoods pooled to ``dim``, the coarser
   layers resized to the finest grid, all pooled to ``target_dim``. Images are embedded ``batch`` at a
   time, so memory is bounded by one chunk.
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
   blurred with a Gaussian of sigma 4 (``RescaleSegmentor``; :class:`.maps.MapStep`).
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

Layers: the paper's 2 and 3 unless given; the lowest layer sets the grid.

:class:`PatchCoreScorer` is steps 1, 3 and 4, run by every runtime: the nearest-bank search on the CPU
by the chosen strategy, traced or on a GPU as one matrix product (:mod:`.nearest`); eq. 7 batched over
the images. :meth:`PatchCore.update` continues the greedy coreset from the current bank over the new
images' patches (:func:`.coreset.greedy_coreset` started from their distances to the bank).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from spadim.errors import SpadimError
from spadim.features.extractor import FeatureSet
from .base import Abilities, Method, feature_dict, layer_option, option, positive
from .coreset import PROJECTION_DIM, STARTS, coreset_size, greedy_coreset, random_projection
from .maps import MapStep, upsample_blur
from .nearest import BoundedSearch, TorchSearch, check_search, make_search, nearest_distances
from .patches import DIM, PATCH, embed_patches, patch_kernel

PAPER_LAYERS = (2, 3)
NEIGHBOURS = 9


@dataclass(frozen=True, kw_only=True)
class PatchCoreConfig:
    layers: tuple[int, ...] | str = PAPER_LAYERS
    coreset: float = 0.1  # fraction of the training patches kept in the memory bank, in (0, 1]
    dim: int = DIM  # each layer's patch features pooled to dim
    target_dim: int = DIM  # the concatenated layers pooled to target_dim
    neighbours: int = NEIGHBOURS  # b of eq. 7; 0: the reference code's maximum patch score
    seed: int = 0  # of the random projection and the coreset's starting points
    batch: int = 8  # images embedded at a time
    starts: int = STARTS  # the approximate greedy sampler's starting points; 0: the exact sampler
    search: str = "auto"  # nearest-bank backend on the CPU: auto (pruned, probed), torch or faiss

    def __post_init__(self):
        object.__setattr__(self, "layers", layer_option(self.layers))
        check_search(self.search, "PatchCoreConfig.search")
        positive(self, "dim", "target_dim", "batch")
        if not 0 < self.coreset <= 1:
            raise SpadimError(f"PatchCore coreset ratio must be in (0, 1] (got {self.coreset})")
        if self.neighbours < 0:
            raise SpadimError(f"PatchCore neighbours must be >= 0 (got {self.neighbours})")


def bank_search(name: str = "auto"):
    """``"auto"``: the pruned exact search over the probed backend; else the named backend."""
    return BoundedSearch(make_search(name)) if name == "auto" else make_search(name)


def reweighted_scores(
    queries: torch.Tensor,
    bank: torch.Tensor,
    bank_sq: torch.Tensor,
    b: int,
    excluded: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eq. 7 for each image's most anomalous patch feature ``queries`` [n, D] -> [n]; rows ``excluded``
    (bool [n, G]) are absent from that image's bank (leave-one-out). With fewer than 2 rows in
    ``N_b(m*)``, the score is ``s*``."""
    to_bank = queries.square().sum(1, keepdim=True) - 2 * queries @ bank.T + bank_sq  # squared, [n, G]
    if excluded is not None:
        to_bank = to_bank.masked_fill(excluded, float("inf"))
    nearest = to_bank.argmin(1)
    s_star = (queries - bank[nearest]).norm(dim=1)
    b = min(b, len(bank))
    if b < 2:
        return s_star
    around = bank_sq - 2 * bank[nearest] @ bank.T  # |m* - m|^2 - |m*|^2, [n, G]
    around = around.scatter(1, nearest[:, None], float("-inf"))  # m* is its own nearest, first in N_b(m*)
    if excluded is not None:
        around = around.masked_fill(excluded, float("inf"))
    support = torch.topk(around, b, dim=1, largest=False).indices  # [n, b]
    distances = (bank[support] - queries[:, None]).norm(dim=-1)
    if excluded is None:
        return (1 - torch.softmax(distances, 1)[:, 0]) * s_star
    distances = distances.masked_fill(excluded.gather(1, support), float("-inf"))  # absent: no weight
    score = (1 - torch.softmax(distances, 1)[:, 0]) * s_star
    return torch.where((~excluded).sum(1) >= 2, score, s_star)


class PatchCoreScorer(nn.Module):
    """Features {layer: [n, C, h, w]} -> (anomaly maps [n, size, size], image scores [n])."""

    def __init__(
        self, config: PatchCoreConfig, layers, channels: dict, bank: torch.Tensor, size: int, search
    ):
        super().__init__()
        self.layers, self.dim, self.target_dim = tuple(layers), config.dim, config.target_dim
        self.neighbours, self.search, self.groups = config.neighbours, search, {}
        for layer in self.layers:  # the pooling convolutions, where the channels split evenly
            kernel = patch_kernel(channels[layer], self.dim)
            if kernel is not None:
                self.groups[layer] = kernel[0]
                self.register_buffer(f"kernel{layer}", kernel[1])
        self.register_buffer("bank", bank)
        self.register_buffer("bank_sq", bank.square().sum(1))
        self.maps = MapStep(size)

    def embed(self, features: dict) -> tuple[torch.Tensor, tuple[int, int]]:
        """[n, H * W, target_dim] patch features and the grid (H, W)."""
        kernels = {layer: (groups, getattr(self, f"kernel{layer}")) for layer, groups in self.groups.items()}
        emb, grid = embed_patches(features, self.layers, self.dim, self.target_dim, PATCH, kernels)
        return emb.reshape(features[self.layers[0]].shape[0], grid[0] * grid[1], -1), grid

    def nearest(self, emb: torch.Tensor) -> torch.Tensor:
        """[n, H * W] Euclidean distance of each patch to its nearest bank row."""
        return nearest_distances(emb, self.bank, self.search)

    def image_scores(self, emb: torch.Tensor, squared: torch.Tensor, excluded=None) -> torch.Tensor:
        """Eq. 7 of each image's patch with the largest ``squared`` [n, H * W] distance, or with
        ``neighbours = 0`` the reference code's score: that largest squared distance."""
        if self.neighbours == 0:
            return squared.amax(1)
        worst = emb[torch.arange(emb.shape[0]), squared.argmax(1)]  # [n, D]
        return reweighted_scores(worst, self.bank, self.bank_sq, self.neighbours, excluded)

    def forward(self, features: dict) -> tuple[torch.Tensor, torch.Tensor]:
        emb, (h, w) = self.embed(features)
        squared = self.nearest(emb).square()
        return self.maps(squared.reshape(-1, h, w)), self.image_scores(emb, squared)


class PatchCore(Method):
    name = "patchcore"
    Config = PatchCoreConfig
    abilities = Abilities(leave_one_out=True, tiles=True, update=True, export=True)
    default_layers = PAPER_LAYERS

    def __init__(self, *, config: PatchCoreConfig | None = None, **options):
        super().__init__(config=config, **options)
        self.search = self._search or bank_search(self.config.search)
        self.bank: torch.Tensor | None = None  # [G, target_dim]
        self.bank_image: torch.Tensor | None = None  # [G] training image of each bank row (this process)
        self.grid: tuple[int, int] = (0, 0)
        self.n_train: int | None = None

    coreset, dim, target_dim = option("coreset"), option("dim"), option("target_dim")
    neighbours, seed, batch, starts = option("neighbours"), option("seed"), option("batch"), option("starts")

    @classmethod
    def default_config(cls, arch: str, seed: int = 0) -> PatchCoreConfig:
        """The run's seed for the random projection and the coreset's starting points."""
        return PatchCoreConfig(seed=seed)

    @classmethod
    def recorded_options(cls, config: PatchCoreConfig) -> dict:
        return {"coreset": config.coreset, "search": config.search}

    def _embeddings(self, fs: FeatureSet):
        for part in fs.batches(self.batch):
            emb, self.grid = embed_patches(part, self.fitted_layers(), self.dim, self.target_dim)
            yield emb

    def fit(self, fs: FeatureSet) -> "PatchCore":
        self.bank, picked = self._new_rows(fs, None)
        self.bank_image = picked // (self.grid[0] * self.grid[1])
        self.n_train = len(fs)
        self._refitted()
        return self

    def update(self, fs: FeatureSet) -> "PatchCore":
        """Add the images ``fs``: the greedy coreset continues from the current bank over their patches
        (each new patch starts at its distance to the bank), keeping ``coreset`` of them."""
        rows, picked = self._new_rows(fs, self.bank)
        if self.bank_image is not None and self.n_train is not None:
            self.bank_image = torch.cat(
                [self.bank_image, self.n_train + picked // (self.grid[0] * self.grid[1])]
            )
        else:
            self.bank_image = None
        self.bank = torch.cat([self.bank, rows])
        self.n_train = None if self.n_train is None else self.n_train + len(fs)
        self._refitted()
        return self

    def _new_rows(self, fs: FeatureSet, bank: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows of ``fs``'s patches that join the bank ([k, D], in the order picked) and their indices
        among those patches: all of them with ``coreset = 1``, else the greedy coreset of their random
        projections, continued from ``bank``'s when there is one."""
        with torch.inference_mode():
            if self.coreset >= 1:
                rows = torch.cat(list(self._embeddings(fs)))
                return rows, torch.arange(len(rows))
            generator = torch.Generator().manual_seed(self.seed)
            projection, projected = None, []
            for emb in self._embeddings(fs):
                if projection is None and emb.shape[1] > PROJECTION_DIM:
                    projection = random_projection(emb.shape[1], generator)
                projected.append(emb @ projection if projection is not None else emb)
            projected = torch.cat(projected)
            initial = None
            if bank is not None:  # distances to the centres already chosen, in the same projection
                initial = TorchSearch().min_distances(
                    projected, bank @ projection if projection is not None else bank
                )
            count = coreset_size(len(projected), self.coreset)
            picked = greedy_coreset(projected, count, self.starts, generator, initial=initial)
            del projected
            rows = torch.empty(len(picked), self.target_dim)
            start = 0
            for emb in self._embeddings(fs):  # second pass: gather the picked rows, in the order picked
                here = (picked >= start) & (picked < start + len(emb))
                rows[here] = emb[picked[here] - start]
                start += len(emb)
        return rows, picked

    def scorer(self, size: int, channels: dict[int, int]) -> PatchCoreScorer:
        return PatchCoreScorer(self.config, self.fitted_layers(), channels, self.bank, size, self.search)

    def distance_grid(self, fs: FeatureSet, left_out: bool = False) -> tuple[torch.Tensor, np.ndarray]:
        """[N, H, W] squared distance of every test patch to its nearest bank vector, and the image scores [N].

        ``left_out``: ``fs`` is the training set the bank was built from, and each image is searched
        against the bank without the rows its own patches contributed (see :meth:`score_left_out`)."""
        if left_out and self.bank_image is None:
            raise ValueError("score_left_out needs a model fitted in this process (bank_image)")
        module = self._fitted_scorer(fs, 0)
        grids, scores = [], []
        with torch.inference_mode():
            for start in range(0, len(fs), self.batch):
                part = fs.rows(start, start + self.batch)
                emb, (h, w) = module.embed(feature_dict(part))
                distances, own = module.nearest(emb), None
                if left_out:
                    own = self.bank_image[None] == torch.arange(start, start + len(part))[:, None]  # [n, G]
                    for i in range(len(part)):
                        if own[i].any():
                            distances[i] = self._without_own(module, emb[i], distances[i], own[i])
                squared = distances.square()
                grids.append(squared.reshape(-1, h, w))
                scores.append(module.image_scores(emb, squared, own))
        return torch.cat(grids), torch.cat(scores).double().numpy()

    @staticmethod
    def _without_own(module, queries: torch.Tensor, nearest: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        """Nearest distances of one training image's patches with its own bank rows (``own``) left out:
        only the patches whose nearest row may be one of their own are searched again."""
        bank = module.bank
        to_own = torch.cdist(queries, bank[own]).amin(1)
        # generous: float32 distances near 0 carry errors of ~sqrt(eps) |q|; a redo only costs time
        slack = 2e-3 * queries.norm(dim=1) + 1e-3 * nearest
        redo = (to_own <= nearest + slack).nonzero()[:, 0]
        out = nearest.clone()
        if len(redo):
            squared = torch.addmm(module.bank_sq, queries[redo], bank.T, alpha=-2)
            squared = squared.add_(queries[redo].square().sum(1, keepdim=True))
            squared[:, own] = float("inf")
            out[redo] = squared.amin(1).clamp_min_(0).sqrt_()
        return out

    def score_left_out(self, fs: FeatureSet, size: int) -> tuple[np.ndarray, np.ndarray]:
        """The training images it was fitted on (``fs``), each scored against the bank without the rows
        its own patches contributed: the deployed coreset (built from all n images, as dense as a new
        image meets) minus one image. Refitting the coreset per fold instead thins the bank to (k-1)/k of
        the images, which inflated held-out scores of few-image classes.

        Cost: one search against the whole bank (the fitted, pruned search), then, only for the patches
        whose nearest row is one of their own image's, a search with those rows masked out."""
        grid, scores = self.distance_grid(fs, left_out=True)
        with torch.inference_mode():
            return self._fitted_scorer(fs, size).maps(grid).numpy(), scores

    def subset_grids(self, fit: FeatureSet, val: FeatureSet, combos, size: int, tick=None) -> dict:
        """The subsets share their per-layer patch features and compare without a coreset: squared
        distances to a bank sampled from the fit part (:mod:`spadim.methods.patchcore_subsets`)."""
        from .patchcore_subsets import subset_grids

        config = self.config
        return subset_grids(
            fit, val, combos, config.dim, config.target_dim, share=config.coreset, seed=config.seed, tick=tick
        )

    def subset_map(self, grids: dict, combo, size: int) -> np.ndarray:
        return upsample_blur(grids[combo], size)

    def state(self) -> dict:
        c = self.config
        return {
            "config": {
                "layers": list(self.layers),
                "coreset": c.coreset,
                "dim": c.dim,
                "target_dim": c.target_dim,
                "neighbours": c.neighbours,
                "seed": c.seed,
                "starts": c.starts,
                "grid": list(self.grid),
                "n_train": self.n_train,
            },
            "tensors": {"bank": self.bank.contiguous()},
        }

    @classmethod
    def from_state(cls, state: dict) -> "PatchCore":
        c = state["config"]
        options = ("coreset", "dim", "target_dim", "neighbours", "seed", "starts")
        m = cls(layers=tuple(c["layers"]), **{key: c[key] for key in options})
        m.bank, m.grid, m.n_train = state["tensors"]["bank"], tuple(c["grid"]), c.get("n_train")
        return m
