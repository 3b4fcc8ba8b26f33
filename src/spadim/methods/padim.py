"""PaDiM (Defard et al. 2020): a Gaussian per feature position, Mahalanobis distance.

The reference concatenates the chosen layers at the largest kept resolution (nearest
upsampling, ``embedding_concat``) and keeps a random subset of ``d`` channels (seeded;
d=100 for resnet18 and 550 for the 50-layer nets by default, capped by the number of
channels). Here the subset is drawn over the same concatenated channel index, but each
layer's chosen channels are taken *before* upsampling (:class:`ChannelSelection`), which gives
the same vectors without ever building the full ``[N, sum C, H, W]`` embedding.

Per position: mean and sample covariance (divisor N-1, as ``np.cov``) + 0.01 I; the
score is the Mahalanobis distance, upsampled bilinearly and blurred (sigma 4); the image
score is the map's maximum.

Fitting streams over the training images in batches (:mod:`.gaussians`), so memory does not
grow with N. Each Gaussian is then kept in one of two exact forms, both giving the reference's
(x - mu)^T C^-1 (x - mu) by matrix products alone, which :class:`PadimScorer` computes on every
runtime (CPU, GPU, ONNX):

- **low rank** (N - 1 <= ``max_rank``, 64): the sample covariance has rank r <= N - 1, so
  with its eigenpairs (V [d, r], lambda) ``C^-1 = I / eps + V diag(1 / (lambda + eps) - 1 / eps) V^T``.
  A position costs d x r numbers instead of d x d: 0.34 GB instead of 1.9 GB at N = 50,
  d = 550, 56 x 56 positions, and one image reads 9x less memory. The eigenpairs come from
  a seeded randomized range finder on the covariance, exact because its rank is at most r.
- **Cholesky** (more images): the inverse ``W = L^-1`` of the lower Cholesky factor L, both computed
  in float64 and ``W^T`` kept in float32 as column panels that skip most of its zero triangle
  (:func:`.gaussians.panel_bounds`: 2.1 GB at d = 550); the distance is ``|W (x - mu)|``, a few
  matrix products, faster on a CPU than the triangular solve with L it replaces (measured in
  :mod:`.gaussians`). Files keep only the triangle: 1.9 GB at d = 550. Measured alternatives,
  not used: float16 factors halve the file (3e-4 relative change of the distances on real hazelnut,
  AUPR unchanged) but the leave-one-out calibration amplifies the rounding to 4e-3; truncating the
  eigenpairs (rank 64 plus an isotropic rest, as probabilistic PCA) cost 0.18 pixel AUPR on
  hazelnut with 400 (augmented) images.

:meth:`Padim.update` adds images exactly. A low-rank form that stays low-rank grows in the span of its
eigenvectors and the new images' deviations (:func:`.gaussians.grow_low_rank`): an (N + m)-square
eigenproblem per position, nothing d x d. Otherwise the scatter is rebuilt from the stored form, the
new images' sums added and the Gaussians refactored (:meth:`.gaussians.GaussianAccumulator.from_gaussians`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from spadim.errors import SpadimError
from spadim.features.extractor import FeatureSet
from .base import Abilities, Method, feature_dict, layer_option, option, positive
from .gaussians import (
    GaussianAccumulator,
    empty_panels,
    gram_inverse_factors,
    grow_low_rank,
    per_worker,
    read_panels,
    write_panels,
)
from .maps import MapStep, upsample_blur
from .nearest import traceable

DEFAULT_D = {"resnet18": 100, "resnet50": 550, "resnet50_caffe": 550, "wide_resnet50_2": 550}
EPS = 0.01
MAX_RANK = 64  # largest low-rank form: 3136 x 550 x 64 float32 = 0.44 GB, under the 0.5 GB model target
POSITIONS = 256  # positions per single-threaded worker's step on the CPU


@dataclass(frozen=True, kw_only=True)
class PadimConfig:
    layers: tuple[int, ...] | str = (1, 2, 3)
    d: int = 550  # channels kept (the reference's for the 50-layer nets; DEFAULT_D per backbone)
    seed: int = 0  # of the channel subset and of the low-rank form's sketch
    batch: int = 32  # images per step of fitting and per call of the scoring module
    max_rank: int = MAX_RANK  # up to N - 1 = max_rank the low-rank form, else the Cholesky form

    def __post_init__(self):
        object.__setattr__(self, "layers", layer_option(self.layers))
        positive(self, "d", "batch")


def channel_subset(n_channels: int, d: int, seed: int) -> torch.Tensor:
    """Sorted random subset of min(d, n_channels) channel ids, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.sort(rng.choice(n_channels, size=min(d, n_channels), replace=False)))


class ChannelSelection(nn.Module):
    """Features {layer: [n, C, h, w]} -> [n, L, d]: the concatenated-channel ids ``idx``, each layer's taken
    before nearest upsampling (``floor(dst * h / size)``, as ``F.interpolate(mode="nearest")``) to the
    largest grid, in channels-last order so each position's vector is contiguous."""

    def __init__(self, layers: tuple[int, ...], idx: torch.Tensor, channels: dict[int, int]):
        super().__init__()
        self.layers, self.chosen = tuple(layers), []
        offset = 0
        for layer in self.layers:
            local = idx[(idx >= offset) & (idx < offset + channels[layer])] - offset
            offset += channels[layer]
            if len(local):
                self.chosen.append(layer)
                self.register_buffer(f"channels{layer}", local.long())

    def forward(self, features: dict) -> torch.Tensor:
        size = max(int(features[layer].shape[-1]) for layer in self.layers)  # fixed per model: constants
        parts = []
        for layer in self.chosen:
            part = features[layer].permute(0, 2, 3, 1).index_select(3, getattr(self, f"channels{layer}"))
            if int(part.shape[1]) != size:
                rows = torch.from_numpy(np.arange(size) * int(part.shape[1]) // size).to(part.device)
                part = part.index_select(1, rows).index_select(2, rows)
            parts.append(part)
        x = torch.cat(parts, 3)
        return x.reshape(x.shape[0], size * size, x.shape[-1])


def select_and_concat(fs: FeatureSet, layers: tuple[int, ...], idx: torch.Tensor) -> torch.Tensor:
    """[N, L, d] vectors of the concatenated-channel ids ``idx`` (:class:`ChannelSelection`)."""
    channels = {layer: fs.layers[layer].shape[1] for layer in layers}
    with torch.inference_mode():
        return ChannelSelection(layers, idx, channels)(fs.layers)


class PadimScorer(nn.Module):
    """Features -> (anomaly maps [n, size, size], image scores [n]: each map's maximum).

    ``form``: "low-rank" (buffers ``basis`` [L, r, d], ``precisions`` [L, r]), "cholesky" (``panel0``, ...:
    the column panels ``W^T[:, :b, a:b]`` of the inverse factor) or "woodbury" (``centred`` [L, N, d],
    ``gram_inverse`` [L, N, N] float64: the in-process form of :class:`LowRankPadim`, not exported)."""

    def __init__(self, selection, mean, form: str, tensors: dict, eps: float, grid: int, size: int):
        super().__init__()
        self.selection, self.form, self.eps, self.grid = selection, form, float(eps), int(grid)
        self.register_buffer("mean", mean)  # [L, d]
        for name, tensor in tensors.items():
            self.register_buffer(name, tensor)
        self.panels = sum(name.startswith("panel") for name in tensors)
        self.maps = MapStep(size)

    def squared_distances(self, diff: torch.Tensor, at=slice(None), training: bool = False) -> torch.Tensor:
        """[l, n] squared distances of ``diff`` [l, n, d] (centred queries at positions ``at``).

        Low rank: ``(|v|^2 - |p|^2) / eps + sum p^2 / (lambda + eps)`` with ``p = V^T v``. A new image lies
        well outside the training images' span, so subtracting the norms costs ~1e-5 relative (measured
        against the Cholesky form). A training image lies inside it: its outside part is ~0 and the
        norms' float32 difference is all error, which the leave-one-out formula then amplifies by up to
        1 / (1 - n h / (n - 1)^2). For those (``training``) the outside part is taken as a vector,
        ``v - V p``, at the cost of a second product."""
        if self.form == "low-rank":
            basis = self.basis[at]
            projected = torch.matmul(diff, basis.transpose(1, 2))  # [l, n, r]
            inside = (projected.square() * self.precisions[at, None, :]).sum(-1)
            if training:
                outside = diff - torch.matmul(projected, basis)
                return outside.square().sum(-1) / self.eps + inside
            return (diff.square().sum(-1) - projected.square().sum(-1)) / self.eps + inside
        if self.form == "cholesky":  # |W v|^2, panel by panel: W^T[:b, a:b] reads v[:b] only
            panels = [getattr(self, f"panel{i}")[at] for i in range(self.panels)]
            return sum(torch.matmul(diff[..., : p.shape[1]], p).square().sum(-1) for p in panels)
        within = torch.matmul(
            torch.matmul(diff, self.centred[at].transpose(1, 2)).double(), self.gram_inverse[at].mT
        )
        return (diff.double().square().sum(-1) - within.square().sum(-1)) / self.eps

    def squared_grid(self, features: dict, training: bool = False) -> torch.Tensor:
        """[n, h, w] squared Mahalanobis distance of every position to its Gaussian."""
        diff = self.selection(features).transpose(0, 1) - self.mean[:, None, :]  # [L, n, d]
        if traceable(diff):
            squared = self.squared_distances(diff, training=training)
        else:  # the same distances, positions split over single-threaded workers (see per_worker)
            squared = torch.empty(
                diff.shape[:2], dtype=torch.float64 if self.form == "woodbury" else diff.dtype
            )

            def work(start: int) -> None:
                at = slice(start, start + POSITIONS)
                squared[at] = self.squared_distances(diff[at], at, training)

            per_worker(work, range(0, len(diff), POSITIONS))
        return squared.T.reshape(-1, self.grid, self.grid)

    def maps_and_scores(self, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Distance grids [n, h, w] -> maps and image scores (each map's maximum)."""
        maps = self.maps(grid)
        return maps, maps.flatten(1).amax(1)

    def forward(self, features: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return self.maps_and_scores(self.squared_grid(features).clamp_min(0).sqrt().float())


class Padim(Method):
    name = "padim"
    Config = PadimConfig
    #: leave-one-out downdates the Gaussians to the other n - 1 images, whose covariance needs n - 1 >= 2
    min_calibration_images = 3
    abilities = Abilities(
        leave_one_out=True,
        tiles=False,  # tiling multiplies the per-position d x d sums fitting holds (3.8 GB a tile at d = 550)
        update=True,
        export=True,
        streams_training=True,
        image_score_from_map=True,
    )

    def __init__(self, *, config: PadimConfig | None = None, **options):
        super().__init__(config=config, **options)
        self.idx: torch.Tensor | None = None  # the concatenated-channel ids kept
        self.mean: torch.Tensor | None = None  # [L, d]
        self.inverse_panels: list | None = None  # W^T's column panels, W = L^-1 (Cholesky form) ...
        self.basis: torch.Tensor | None = None  # ... or the low-rank form: [L, r, d] eigenvectors (rows) ...
        self.precisions: torch.Tensor | None = None  # ... [L, r]: 1 / (lambda + eps) along each of them
        self.grid: tuple[int, int] = (0, 0)
        self.n_train: int | None = None  # images the Gaussians hold (None: a file from before it was kept)
        self.eps = EPS
        self._sums: GaussianAccumulator | None = None

    d, seed = option("d"), option("seed")

    @classmethod
    def default_config(cls, arch: str, seed: int = 0) -> PadimConfig:
        """The reference's d for the backbone (100 for resnet18, 550 for the 50-layer nets) and the run's
        seed for the channel subset."""
        return PadimConfig(d=DEFAULT_D.get(arch, PadimConfig.d), seed=seed)

    @classmethod
    def recorded_options(cls, config: PadimConfig) -> dict:
        return {"d": config.d}

    def _selection(self, fs: FeatureSet) -> ChannelSelection:
        layers = self.fitted_layers()
        channels = {layer: fs.layers[layer].shape[1] for layer in layers}
        if self.idx is None:
            self.idx = channel_subset(sum(channels.values()), self.d, self.seed)
        size = max(fs.layers[layer].shape[-1] for layer in layers)
        self.grid = (size, size)
        return ChannelSelection(layers, self.idx, channels)

    def _add(self, sums: GaussianAccumulator, fs: FeatureSet) -> None:
        selection = self._selection(fs)
        with torch.inference_mode():
            for part in fs.batches(self.config.batch):
                sums.add(selection(part.layers))

    def partial_fit(self, fs: FeatureSet) -> None:
        """Add a chunk of training images to the per-position sums."""
        if self._sums is None:
            self._sums = GaussianAccumulator()
        self._add(self._sums, fs)

    def finish_fit(self) -> "Padim":
        sums, self._sums = self._sums, None
        return self._factor(sums)

    def fit(self, fs: FeatureSet) -> "Padim":
        self.partial_fit(fs)
        return self.finish_fit()

    def update(self, fs: FeatureSet) -> "Padim":
        """Add the images ``fs`` exactly: the Gaussians become those of a fit on the old and new images
        together. A low-rank form that stays low-rank grows within the span of its eigenvectors and the new
        images (:func:`.gaussians.grow_low_rank`); otherwise the scatter is rebuilt from the stored form,
        the new sums added and the Gaussians refactored, as a fit of that size would."""
        if self.n_train is None:
            raise SpadimError(
                "this PaDiM model does not record how many images it holds (written by an older spadim): "
                "fit it again to update it"
            )
        low_rank = (self.basis, self.precisions) if self.form == "low-rank" else None
        rank_after = min(self.n_train + len(fs) - 1, len(self.idx))
        if low_rank is not None and rank_after <= self.config.max_rank and rank_after < len(self.idx):
            selection = self._selection(fs)
            with torch.inference_mode():
                new = torch.cat([selection(part.layers) for part in fs.batches(self.config.batch)])
                self.mean, self.basis, self.precisions = grow_low_rank(
                    self.mean, self.n_train, self.eps, low_rank, new, EPS
                )
            self.eps, self.n_train = EPS, self.n_train + len(fs)
            self._refitted()
            return self
        with torch.inference_mode():
            sums = GaussianAccumulator.from_gaussians(
                self.mean, self.n_train, self.eps, low_rank, self.inverse_panels
            )
        self._add(sums, fs)
        return self._factor(sums)

    def _factor(self, sums: GaussianAccumulator) -> "Padim":
        rank = min(sums.n - 1, sums.shift.shape[1])
        self.eps = EPS
        with torch.inference_mode():
            self.mean = sums.mean()
            self.basis = self.precisions = self.inverse_panels = None
            if 1 <= rank <= self.config.max_rank and rank < sums.shift.shape[1]:
                self.basis, self.precisions = sums.low_rank_(self.eps, rank, self.seed)
            else:
                self.inverse_panels = sums.inverse_factors_(self.eps)
        self.n_train = sums.n
        self._refitted()
        return self

    @property
    def form(self) -> str:
        return "cholesky" if self.inverse_panels is not None else "low-rank"

    def _form_tensors(self) -> dict:
        if self.form == "cholesky":
            return {f"panel{i}": panel for i, panel in enumerate(self.inverse_panels)}
        return {"basis": self.basis, "precisions": self.precisions}

    def scorer(self, size: int, channels: dict[int, int]) -> PadimScorer:
        selection = ChannelSelection(self.fitted_layers(), self.idx, channels)
        return PadimScorer(
            selection, self.mean, self.form, self._form_tensors(), self.eps, self.grid[0], size
        )

    def _squared(self, fs: FeatureSet, training: bool) -> torch.Tensor:
        module = self._fitted_scorer(fs, 0)
        with torch.inference_mode():
            return torch.cat(
                [module.squared_grid(feature_dict(part), training) for part in fs.batches(self.config.batch)]
            )

    def distance_grid(self, fs: FeatureSet, training: bool = False) -> torch.Tensor:
        """[N, h, w] Mahalanobis distance of every position to its Gaussian. ``training``: ``fs`` holds the
        images the Gaussians were fitted on (see :meth:`PadimScorer.squared_distances`)."""
        return self._squared(fs, training).clamp_min(0).sqrt().float()

    def score_left_out(self, fs: FeatureSet, size: int) -> tuple[np.ndarray, np.ndarray]:
        """The n training images it was fitted on (``fs``), each scored by the Gaussians of the other n - 1,
        in closed form from its distance h to the full fit (Sherman-Morrison on the rank-one downdate):
        ``d^2 = (n / (n - 1))^2 ((n - 2) / (n - 1)) h / (1 - n h / (n - 1)^2)``, one scoring pass instead of
        refitting. It is exact for the Gaussians of the other images with the regulariser ``eps (n - 1) /
        (n - 2)`` instead of ``eps`` (0.0104 instead of 0.01 at n = 25; the test refits them)."""
        n = self.n_train
        if n is None or len(fs) != n or n < 3:
            raise ValueError(
                "score_left_out takes the training set (n >= 3) the model was fitted on in this process"
            )
        squared = self._squared(fs, training=True).double().clamp_min(0)
        ratio = n / (n - 1)
        left_out = (
            ratio**2 * ((n - 2) / (n - 1)) * squared / (1 - squared * n / (n - 1) ** 2).clamp_min(1e-12)
        )
        with torch.inference_mode():
            maps, scores = self._fitted_scorer(fs, size).maps_and_scores(left_out.sqrt().float())
        return maps.numpy(), scores.double().numpy()

    def fit_to_score(self, fs: FeatureSet) -> "Padim":
        """The cheaper exact form for ``fs``: :class:`LowRankPadim` when it has fewer images than channels + 1."""
        return LowRankPadim(config=self.config).fit(fs) if len(fs) - 1 < self.d else self.fit(fs)

    def subset_grids(self, fit: FeatureSet, val: FeatureSet, combos, size: int, tick=None) -> dict:
        """Each subset's distance grids; its maps are upsampled once, from all folds together."""
        grids = {}
        for combo in combos:
            grids[combo] = self.with_layers(combo).fit_to_score(fit).distance_grid(val)
            if tick:
                tick()
        return grids

    def subset_map(self, grids: dict, combo, size: int) -> np.ndarray:
        return upsample_blur(grids[combo], size)

    def state(self) -> dict:
        config = {"layers": list(self.layers), "d": self.d, "seed": self.seed, "grid": list(self.grid)}
        config.update(form=self.form, n_train=self.n_train, eps=self.eps)
        tensors = {"idx": self.idx, "mean": self.mean}
        if self.form == "low-rank":
            tensors.update(basis=self.basis, precisions=self.precisions)
        else:  # W^T is upper triangular: its upper triangle only
            d, positions = len(self.idx), len(self.mean)
            rows, cols = torch.triu_indices(d, d)
            upper = torch.empty(positions, len(rows))
            for start in range(0, positions, 64):
                upper[start : start + 64] = read_panels(self.inverse_panels, slice(start, start + 64), d)[
                    :, rows, cols
                ]
            tensors["inverse_t_upper"] = upper
        return {"config": config, "tensors": tensors}

    @classmethod
    def from_state(cls, state: dict) -> "Padim":
        """Either form, and every earlier layout: the Cholesky form stored as the lower triangles of L
        (its inverse factor is computed once here, in float64) and the low-rank form's first version."""
        c, t = state["config"], state["tensors"]
        m = cls(layers=tuple(c["layers"]), d=c["d"], seed=c["seed"])
        m.idx, m.mean, m.grid = t["idx"], t["mean"], tuple(c["grid"])
        m.n_train, m.eps = c.get("n_train"), c.get("eps", EPS)
        if "basis" in t:
            m.basis = t["basis"].float()
            # this form's first version stored 1 / (lambda + eps) - 1 / eps as "weights"
            m.precisions = t["precisions"].float() if "precisions" in t else t["weights"].float() + 1.0 / EPS
            if m.basis.shape[1] == len(m.idx):  # written [L, d, r] by this form's first version
                m.basis = m.basis.transpose(1, 2).contiguous()
            return m
        d, positions = len(m.idx), len(m.mean)
        m.inverse_panels = empty_panels(positions, d)
        stored = "inverse_t_upper" if "inverse_t_upper" in t else "chol_lower"  # L itself, written before
        rows, cols = torch.triu_indices(d, d) if stored == "inverse_t_upper" else torch.tril_indices(d, d)
        identity = torch.eye(d, dtype=torch.float64)
        for start in range(0, positions, 64):
            sl = slice(start, start + 64)
            dense = torch.zeros(len(t[stored][sl]), d, d)
            dense[:, rows, cols] = t[stored][sl].float()
            if stored == "chol_lower":  # W^T from L, in float64 (once, at load)
                dense = (
                    torch.linalg.solve_triangular(dense.double(), identity, upper=False)
                    .transpose(1, 2)
                    .float()
                )
            write_panels(m.inverse_panels, sl, dense)
        return m


class LowRankPadim(Padim):
    """PaDiM with the same Gaussians, scored through the Woodbury identity when N - 1 < d.

    With N training vectors per position the sample covariance has rank <= N - 1, so
    ``C = Xc^T Xc / (N - 1) + eps I`` with centred rows ``Xc`` [N, d] gives exactly
    ``(x - mu)^T C^-1 (x - mu) = (|v|^2 - u^T (eps (N - 1) I + Xc Xc^T)^-1 u) / eps`` with
    ``v = x - mu`` and ``u = Xc v``: an N x N factorisation per position instead of d x d.
    Layer selection fits 15 subsets on a fraction of the training images, so this makes each
    fit cheap without changing a single score (tested against :class:`Padim`). It keeps the
    centred training vectors (memory grows with N), so it is used only when N - 1 < d, and only
    in this process (:meth:`Padim.fit_to_score`): it is neither saved, updated nor exported.
    """

    abilities = Abilities(
        leave_one_out=True, tiles=False, update=False, export=False, image_score_from_map=True
    )

    def fit(self, fs: FeatureSet) -> "Padim":
        selection = self._selection(fs)
        self.eps = EPS
        with torch.inference_mode():
            x = selection(fs.layers)  # [N, L, d]
            self.n_train = len(x)
            self.mean = x.mean(0)
            self.centred = (x - self.mean).transpose(0, 1).contiguous()  # [L, N, d]
            del x
            self.gram_inverse = gram_inverse_factors(self.centred, self.eps)
        self._refitted()
        return self

    @property
    def form(self) -> str:
        return "woodbury"

    def _form_tensors(self) -> dict:
        return {"centred": self.centred, "gram_inverse": self.gram_inverse}

    def state(self) -> dict:
        raise NotImplementedError("LowRankPadim is for layer selection only; save a Padim")


def fit_padim(layers: tuple[int, ...], d: int, seed: int, fs: FeatureSet) -> Padim:
    """The cheaper exact form for ``fs``: low rank when it has fewer images than channels + 1."""
    return Padim(layers=layers, d=d, seed=seed).fit_to_score(fs)
