"""PaDiM (Defard et al. 2020): a Gaussian per feature position, Mahalanobis distance.

The reference concatenates the chosen layers at the largest kept resolution (nearest
upsampling, ``embedding_concat``) and keeps a random subset of ``d`` channels (seeded;
d=100 for resnet18 and 550 for the 50-layer nets by default, capped by the number of
channels). Here the subset is drawn over the same concatenated channel index, but each
layer's chosen channels are taken *before* upsampling, which gives the same vectors
without ever building the full ``[N, sum C, H, W]`` embedding.

Per position: mean and sample covariance (divisor N-1, as ``np.cov``) + 0.01 I; the
score is the Mahalanobis distance, upsampled bilinearly and blurred (sigma 4); the image
score is the map's maximum.

Fitting streams over the training images in batches, accumulating per-position sums
and outer-product sums in float32 around a shift (the first batch's mean), so memory
does not grow with N and the shift keeps float32 sums accurate (tested against
``np.cov``). Each Gaussian is then kept in one of two exact forms, both giving the
reference's (x - mu)^T C^-1 (x - mu) without an inverse:

- **low rank** (N - 1 <= ``MAX_RANK``, 64): the sample covariance has rank r <= N - 1, so
  with its eigenpairs (V [d, r], lambda) ``C^-1 = I / eps + V diag(1 / (lambda + eps) - 1 / eps) V^T``.
  A position costs d x r numbers instead of d x d: 0.34 GB instead of 1.9 GB at N = 50,
  d = 550, 56 x 56 positions, and one image reads 9x less memory. The eigenpairs come from
  a seeded randomized range finder on the covariance, exact because its rank is at most r.
- **Cholesky** (more images): the float32 lower factor L of a float64 factorisation, and
  ||L^-1 (x - mu)|| by a triangular solve. Files keep only the lower triangles: 1.9 GB at
  d = 550. Measured alternatives, not used: float16 factors halve that (3e-4 relative change
  of the distances on real hazelnut, AUPR unchanged) but the leave-one-out calibration
  amplifies the rounding to 4e-3; truncating the eigenpairs (rank 64 plus an isotropic rest,
  as probabilistic PCA) cost 0.18 pixel AUPR on hazelnut with 400 (augmented) images.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from spadim.features.extractor import FeatureSet
from .maps import upsample_blur

DEFAULT_D = {"resnet18": 100, "resnet50": 550, "resnet50_caffe": 550, "wide_resnet50_2": 550}
EPS = 0.01
MAX_RANK = 64  # largest low-rank form: 3136 x 550 x 64 float32 = 0.44 GB, under the 0.5 GB model target


def channel_subset(n_channels: int, d: int, seed: int) -> torch.Tensor:
    """Sorted random subset of min(d, n_channels) channel ids, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.sort(rng.choice(n_channels, size=min(d, n_channels), replace=False)))


def select_and_concat(fs: FeatureSet, layers: tuple[int, ...], idx: torch.Tensor) -> torch.Tensor:
    """[N, L, d] vectors of the concatenated-channel ids ``idx``, selected per layer before upsampling.

    Works in channels-last order ([N, h, w, C] views), so selecting channels, the nearest upsampling
    (``floor(dst * h / size)``, as ``F.interpolate(mode="nearest")``) and the concatenation write
    each position's vector contiguously, with no transpose of the result.
    """
    n, size = len(fs), max(fs.layers[layer].shape[-1] for layer in layers)
    out = torch.empty(n, size, size, len(idx), dtype=fs.layers[layers[0]].dtype)
    offset, filled = 0, 0
    for layer in layers:
        c, h = fs.layers[layer].shape[1], fs.layers[layer].shape[-1]
        local = idx[(idx >= offset) & (idx < offset + c)] - offset
        offset += c
        if not len(local):
            continue
        chosen = fs.layers[layer].permute(0, 2, 3, 1)[..., local]  # [N, h, w, c_sel]
        cols = slice(filled, filled + len(local))
        filled += len(local)
        if size % h == 0:  # each cell repeated f x f times, written by broadcasting: one copy
            f = size // h
            out.view(n, h, f, h, f, -1)[..., cols] = chosen[:, :, None, :, None, :]
        else:
            rows = torch.arange(size) * h // size
            out[..., cols] = chosen[:, rows][:, :, rows]
    return out.reshape(n, size * size, -1)


def per_worker(work, starts) -> None:
    """Run ``work(start)`` for every start on one single-threaded torch worker per core.

    MKL's batched Cholesky and triangular solves of 550 x 550 matrices run several times
    slower on 2 threads than on 1 (measured on this 2-core machine), so the batch is split
    over threads instead. Inference mode is thread-local, hence entered in each worker.
    """
    threads = torch.get_num_threads()

    def run(start):
        with torch.inference_mode():
            work(start)

    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(run, starts))
    finally:
        torch.set_num_threads(threads)


class GaussianAccumulator:
    """Streaming per-position mean and covariance of [n, L, d] batches (float32 around a shift)."""

    def __init__(self):
        self.n = 0
        self.shift = self.total = self.outer = None

    def add(self, x: torch.Tensor) -> None:
        if self.shift is None:
            self.shift = x.mean(0)
            _, positions, d = x.shape
            self.total = torch.zeros(positions, d, dtype=torch.float64)
            self.outer = torch.zeros(positions, d, d)
        centred = (x - self.shift).transpose(0, 1)  # [L, n, d]
        self.total += centred.sum(1, dtype=torch.float64)
        self.outer.baddbmm_(centred.transpose(1, 2), centred)
        self.n += len(x)

    def mean(self) -> torch.Tensor:
        return (self.shift.double() + self.total / self.n).float()

    def cholesky_(self, eps: float, chunk: int = 32) -> torch.Tensor:
        """Lower Cholesky factors of cov + eps I, computed in float64 chunks into ``outer``'s memory."""

        def factorise(start: int) -> None:
            sl = slice(start, start + chunk)
            cov = self.covariance(sl)
            cov.diagonal(dim1=1, dim2=2).add_(eps)
            self.outer[sl] = torch.linalg.cholesky(cov).float()

        per_worker(factorise, range(0, len(self.total), chunk))
        factors, self.outer = self.outer, None
        return factors

    def covariance(self, positions: slice) -> torch.Tensor:
        """float64 sample covariances (divisor N - 1) at ``positions``, without the regulariser."""
        m = self.total[positions] / self.n
        cov = self.outer[positions].double().baddbmm_(m[:, :, None], m[:, None, :], alpha=-self.n)
        return cov.mul_(1.0 / max(self.n - 1, 1))

    def low_rank_(self, eps: float, rank: int, seed: int = 0, chunk: int = 32):
        """(V^T [L, rank, d], 1 / (lambda + eps) [L, rank]): ``C^-1 = I / eps + V diag(1 / (lambda + eps) - 1 / eps)
        V^T``, exact when every covariance
        has rank <= ``rank`` (N - 1 images): the range of a seeded Gaussian sketch with 8 extra columns,
        refined once, holds the whole range, and the eigenpairs within it are the covariance's."""
        positions, d = self.total.shape
        basis = torch.empty(positions, rank, d)  # rows: one image's projections read memory in order
        precisions = torch.empty(positions, rank)
        sketch = torch.randn(d, rank + 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

        def decompose(start: int) -> None:
            sl = slice(start, start + chunk)
            cov = self.covariance(sl)
            range_ = torch.linalg.qr(cov @ torch.linalg.qr(cov @ sketch).Q).Q
            values, vectors = torch.linalg.eigh(range_.transpose(1, 2) @ cov @ range_)
            values, vectors = values[:, -rank:].clamp_min(0), vectors[:, :, -rank:]
            basis[sl] = (range_ @ vectors).transpose(1, 2).float()
            precisions[sl] = (1.0 / (values + eps)).float()

        per_worker(decompose, range(0, positions, chunk))
        self.outer = None
        return basis, precisions


def _maps_and_maxima(grid: torch.Tensor, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Distance grids -> anomaly maps [N, size, size] and image scores (each map's maximum) [N]."""
    maps = upsample_blur(grid, size)
    return maps, maps.reshape(len(maps), -1).max(axis=1)


class Padim:
    name = "padim"
    #: leave-one-out downdates the Gaussians to the other n - 1 images, whose covariance needs n - 1 >= 2
    min_calibration_images = 3

    def __init__(
        self,
        layers: tuple[int, ...] = (1, 2, 3),
        d: int = 550,
        seed: int = 0,
        batch: int = 32,
        chunk: int = 256,
    ):
        self.layers, self.d, self.seed, self.batch, self.chunk = (
            tuple(layers),
            int(d),
            int(seed),
            batch,
            chunk,
        )
        self.idx: torch.Tensor | None = None
        self.mean: torch.Tensor | None = None  # [L, d]
        self.chol: torch.Tensor | None = None  # [L, d, d] lower Cholesky factors of the covariances
        self.basis: torch.Tensor | None = None  # or the low-rank form: [L, r, d] eigenvectors (rows) ...
        self.precisions: torch.Tensor | None = None  # ... [L, r]: 1 / (lambda + eps) along each of them
        self.max_rank = MAX_RANK
        self.grid: tuple[int, int] = (0, 0)

    #: fit can consume training images chunk by chunk (``partial_fit`` then ``finish_fit``), so a
    #: pipeline need not hold the training set's features.
    streams_training = True

    @classmethod
    def configure(cls, settings, layers: tuple[int, ...]) -> "Padim":
        return cls(layers, settings.padim_d, settings.seed)

    def _vectors(self, fs: FeatureSet) -> torch.Tensor:
        """[N, L, d] selected features per position."""
        if self.idx is None:
            self.idx = channel_subset(
                sum(fs.layers[layer].shape[1] for layer in self.layers), self.d, self.seed
            )
        size = max(fs.layers[layer].shape[-1] for layer in self.layers)
        self.grid = (size, size)
        return select_and_concat(fs, self.layers, self.idx)

    def partial_fit(self, fs: FeatureSet) -> None:
        """Add a chunk of training images to the per-position sums."""
        if not hasattr(self, "_acc"):
            self._acc = GaussianAccumulator()
        with torch.inference_mode():
            for part in fs.batches(self.batch):
                self._acc.add(self._vectors(part))

    def finish_fit(self) -> "Padim":
        acc = self.__dict__.pop("_acc")
        rank = min(acc.n - 1, len(acc.shift[0]))
        with torch.inference_mode():
            self.mean = acc.mean()
            if 1 <= rank <= self.max_rank and rank < len(acc.shift[0]):
                self.basis, self.precisions = acc.low_rank_(EPS, rank, self.seed)
            else:
                self.chol = acc.cholesky_(EPS)
        self.n_train = acc.n
        return self

    @property
    def form(self) -> str:
        return "cholesky" if self.chol is not None else "low-rank"

    def fit(self, fs: FeatureSet) -> "Padim":
        self.partial_fit(fs)
        return self.finish_fit()

    distance_dtype = torch.float32  # of the squared distances per chunk

    def distance_grid(self, fs: FeatureSet, training: bool = False) -> torch.Tensor:
        """[N, h, w] Mahalanobis distance of every position to its Gaussian. ``training``: ``fs`` holds the
        images the Gaussians were fitted on (see :meth:`_squared_distances`)."""
        grids = []
        with torch.inference_mode():
            for part in fs.batches(self.batch):
                x = self._vectors(part)
                n, positions, _ = x.shape
                out = torch.empty(positions, n, dtype=self.distance_dtype)

                def solve(start: int, x=x, out=out) -> None:
                    sl = slice(start, start + self.chunk)
                    out[sl] = self._squared_distances(
                        sl, (x[:, sl] - self.mean[sl]).permute(1, 2, 0), training
                    )

                per_worker(solve, range(0, positions, self.chunk))
                grids.append(out.clamp_min(0).sqrt().float().T.reshape(n, *self.grid))
        return torch.cat(grids)

    def _squared_distances(self, sl: slice, diff: torch.Tensor, training: bool = False) -> torch.Tensor:
        """[l, n] squared distances of ``diff`` [l, d, n] (centred queries) at positions ``sl``.

        Low rank: ``(|v|^2 - |p|^2) / eps + sum p^2 / (lambda + eps)`` with ``p = V^T v``. A new image lies
        well outside the training images' span, so subtracting the norms costs ~1e-5 relative (measured
        against the Cholesky form). A training image lies inside it: its outside part is ~0 and the
        norms' float32 difference is all error, which the leave-one-out formula then amplifies by up to
        1 / (1 - n h / (n - 1)^2). For those (``training``) the outside part is taken as a vector,
        ``v - V p``, at the cost of a second product."""
        if self.chol is None:
            basis, precisions = self.basis[sl], self.precisions[sl, :, None]
            projected = torch.bmm(basis, diff)  # [l, r, n]
            inside = (projected.square() * precisions).sum(1)
            if training:
                outside = diff - torch.bmm(basis.transpose(1, 2), projected)
                return outside.square().sum(1) / EPS + inside
            return (diff.square().sum(1) - projected.square().sum(1)) / EPS + inside
        return torch.linalg.solve_triangular(self.chol[sl], diff, upper=False).square().sum(1)

    def score(self, fs: FeatureSet, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Anomaly maps [N, size, size] and image scores (max of each map) [N]."""
        return _maps_and_maxima(self.distance_grid(fs), size)

    def score_left_out(self, fs: FeatureSet, size: int) -> tuple[np.ndarray, np.ndarray]:
        """The n training images it was fitted on (``fs``), each scored by the Gaussians of the other n - 1,
        in closed form from its distance h to the full fit (Sherman-Morrison on the rank-one downdate):
        ``d^2 = (n / (n - 1))^2 ((n - 2) / (n - 1)) h / (1 - n h / (n - 1)^2)``, one scoring pass instead of
        refitting. It is exact for the Gaussians of the other images with the regulariser ``eps (n - 1) /
        (n - 2)`` instead of ``eps`` (0.0104 instead of 0.01 at n = 25; the test refits them)."""
        n = getattr(self, "n_train", None)
        if n is None or len(fs) != n or n < 3:
            raise ValueError(
                "score_left_out takes the training set (n >= 3) the model was fitted on in this process"
            )
        squared = self.distance_grid(fs, training=True).double().square()
        ratio = n / (n - 1)
        left_out = (
            ratio**2 * ((n - 2) / (n - 1)) * squared / (1 - squared * n / (n - 1) ** 2).clamp_min(1e-12)
        )
        return _maps_and_maxima(left_out.sqrt().float(), size)

    def state(self) -> dict:
        config = {"layers": list(self.layers), "d": self.d, "seed": self.seed, "grid": list(self.grid)}
        tensors = {"idx": self.idx, "mean": self.mean}
        if self.chol is None:
            tensors.update(basis=self.basis, precisions=self.precisions)
        else:  # the lower triangles only
            rows, cols = torch.tril_indices(self.chol.shape[1], self.chol.shape[1])
            tensors["chol_lower"] = self.chol[:, rows, cols].contiguous()
        return {"config": {**config, "form": self.form}, "tensors": tensors}

    @classmethod
    def from_state(cls, state: dict) -> "Padim":
        """Either form; a state without ``form`` holds the Cholesky factors."""
        c, t = state["config"], state["tensors"]
        m = cls(tuple(c["layers"]), c["d"], c["seed"])
        m.idx, m.mean, m.grid = t["idx"], t["mean"], tuple(c["grid"])
        if "basis" in t:
            m.basis = t["basis"].float()
            # a state may hold "weights" = 1 / (lambda + eps) - 1 / eps instead of the precisions
            m.precisions = t["precisions"].float() if "precisions" in t else t["weights"].float() + 1.0 / EPS
            if m.basis.shape[1] == len(m.idx):  # a basis stored [L, d, r] is read as [L, r, d]
                m.basis = m.basis.transpose(1, 2).contiguous()
            return m
        d = len(m.idx)
        rows, cols = torch.tril_indices(d, d)
        m.chol = torch.zeros(len(m.mean), d, d)
        m.chol[:, rows, cols] = t["chol_lower"].float()
        return m


class LowRankPadim(Padim):
    """PaDiM with the same Gaussians, scored through the Woodbury identity when N - 1 < d.

    With N training vectors per position the sample covariance has rank <= N - 1, so
    ``C = Xc^T Xc / (N - 1) + eps I`` with centred rows ``Xc`` [N, d] gives exactly
    ``(x - mu)^T C^-1 (x - mu) = (|v|^2 - u^T (eps (N - 1) I + Xc Xc^T)^-1 u) / eps`` with
    ``v = x - mu`` and ``u = Xc v``: an N x N factorisation per position instead of d x d.
    Layer selection fits 15 subsets on a fraction of the training images, so this makes each
    fit cheap without changing a single score (tested against :class:`Padim`). It keeps the
    centred training vectors (memory grows with N), so it is used only when N - 1 < d.
    """

    streams_training = False  # needs all training vectors at once (no partial_fit)
    distance_dtype = torch.float64  # the Woodbury form subtracts two large terms

    def fit(self, fs: FeatureSet) -> "Padim":
        with torch.inference_mode():
            x = self._vectors(fs)  # [N, L, d]
            n, positions, _ = x.shape
            self.n_train = n
            self.mean = x.mean(0)
            self.centred = (x - self.mean).transpose(0, 1).contiguous()  # [L, N, d]
            del x
            self.gram_chol = torch.empty(positions, n, n, dtype=torch.float64)

            def factorise(start: int) -> None:
                sl = slice(start, start + self.chunk)
                xc = self.centred[sl]
                gram = torch.bmm(xc, xc.transpose(1, 2)).double()  # float32 products, float64 factor
                gram.diagonal(dim1=1, dim2=2).add_(EPS * max(n - 1, 1))
                self.gram_chol[sl] = torch.linalg.cholesky(gram)

            per_worker(factorise, range(0, positions, self.chunk))
        return self

    def _squared_distances(self, sl: slice, diff: torch.Tensor, training: bool = False) -> torch.Tensor:
        proj = torch.bmm(self.centred[sl], diff).double()  # [l, N, n]: float32 products
        within = torch.linalg.solve_triangular(self.gram_chol[sl], proj, upper=False)
        return (diff.double().square().sum(1) - within.square().sum(1)) / EPS

    def state(self) -> dict:
        raise NotImplementedError("LowRankPadim is for layer selection only; save a Padim")


def fit_padim(layers: tuple[int, ...], d: int, seed: int, fs: FeatureSet) -> Padim:
    """The cheaper exact form for ``fs``: low rank when it has fewer images than channels + 1."""
    model = LowRankPadim(layers, d, seed) if len(fs) - 1 < d else Padim(layers, d, seed)
    return model.fit(fs)
