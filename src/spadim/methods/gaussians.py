"""PaDiM's per-position Gaussians: streaming sums, the two stored forms, and growing them by new images.

:class:`GaussianAccumulator` keeps per-position sums in float32 around a shift (the first batch's mean),
so memory does not grow with N and the shift keeps float32 sums accurate (tested against ``np.cov``).
It ends in one of the forms :class:`spadim.methods.padim.PadimScorer` scores with:

- **low rank** (:meth:`GaussianAccumulator.low_rank_`): eigenpairs of the covariance, exact when its rank
  (N - 1) is at most the rank kept;
- **inverse factor** (:meth:`GaussianAccumulator.inverse_factors_`): ``W = L^-1`` for the Cholesky factor
  L of cov + eps I, both computed in float64 and kept as float32 ``W^T`` cut into column panels
  (:func:`panel_bounds`); the distance is ``|W v|``, by matrix products alone, the same on every
  runtime (ONNX has no triangular solve). ``W^T`` is upper triangular, so column panel ``[a, b)``
  needs only rows ``[0, b)``: 8 panels hold 56% of the dense matrix (2.1 GB at d = 550 and 56 x 56
  positions) and one image reads that much; on a 2-core Xeon (one thread, CPU time) that took 150-160
  ms an image against 185 ms for a triangular solve with L and 255 ms for the dense ``W^T``.

:meth:`GaussianAccumulator.from_gaussians` rebuilds the sums of a fitted model from either form (the
scatter ``(N - 1) C`` around its mean), so adding new images and refactoring gives the Gaussians of all
the images without the old ones.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

PANELS = 8  # column panels of W^T: 4 to 11 measured alike; 8 keep 56% of the dense matrix
#: positions per block of the scatter: each block is factorised, then freed, so the float32 scatter
#: (3.9 GB at d = 550 and 56 x 56 positions) and the form it becomes are never both whole in memory
BLOCK = 32


def panel_bounds(d: int, panels: int = PANELS) -> list[tuple[int, int]]:
    """Column ranges [a, b) of ``W^T`` [d, d] held as panels ``W^T[:b, a:b]``."""
    edges = [round(i * d / panels) for i in range(panels + 1)]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def write_panels(panels: list[torch.Tensor], positions: slice, dense: torch.Tensor) -> None:
    """Store ``dense`` [l, d, d] (``W^T`` at ``positions``) into the panels."""
    for (a, b), panel in zip(panel_bounds(dense.shape[-1]), panels):
        panel[positions] = dense[:, :b, a:b]


def read_panels(panels: list[torch.Tensor], positions: slice, d: int) -> torch.Tensor:
    """``W^T`` [l, d, d] float32 at ``positions`` from its panels (zeros below the diagonal)."""
    dense = None
    for (a, b), panel in zip(panel_bounds(d), panels):
        part = panel[positions]
        if dense is None:
            dense = torch.zeros(len(part), d, d)
        dense[:, :b, a:b] = part
    return dense


def empty_panels(positions: int, d: int) -> list[torch.Tensor]:
    return [torch.empty(positions, b, b - a) for a, b in panel_bounds(d)]


def per_worker(work, starts) -> None:
    """Run ``work(start)`` for every start on one single-threaded torch worker per core.

    MKL's batched Cholesky and triangular solves of 550 x 550 matrices run several times
    slower on 2 threads than on 1 (measured on this 2-core machine), so the batch is split
    over threads instead. The same holds for scoring's batched products on a busy machine: one
    image's Cholesky-form panels took 144 ms split this way against 464 ms on torch's two threads,
    its low-rank form 34 against 61 ms. Inference mode is thread-local, hence entered in each worker.
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
        self.shift = self.total = None
        self.outer: list[torch.Tensor | None] | None = None  # [BLOCK, d, d] scatter blocks, in order

    @staticmethod
    def _blocks(positions: int, d: int, make=torch.zeros) -> list[torch.Tensor]:
        return [make(min(BLOCK, positions - start), d, d) for start in range(0, positions, BLOCK)]

    def add(self, x: torch.Tensor) -> None:
        if self.shift is None:
            self.shift = x.mean(0)
            _, positions, d = x.shape
            self.total = torch.zeros(positions, d, dtype=torch.float64)
            self.outer = self._blocks(positions, d)
        centred = (x - self.shift).transpose(0, 1)  # [L, n, d]
        self.total += centred.sum(1, dtype=torch.float64)
        for i, block in enumerate(self.outer):
            part = centred[i * BLOCK : (i + 1) * BLOCK]
            block.baddbmm_(part.transpose(1, 2), part)
        self.n += len(x)

    def mean(self) -> torch.Tensor:
        return (self.shift.double() + self.total / self.n).float()

    def covariance(self, positions: slice) -> torch.Tensor:
        """float64 sample covariances (divisor N - 1) at ``positions``, without the regulariser."""
        start, stop, _ = positions.indices(len(self.total))
        first, last = start // BLOCK, (stop - 1) // BLOCK
        held = self.outer[first] if first == last else torch.cat(self.outer[first : last + 1])
        m = self.total[start:stop] / self.n
        scatter = held[start - first * BLOCK : stop - first * BLOCK].double()
        cov = scatter.baddbmm_(m[:, :, None], m[:, None, :], alpha=-self.n)
        return cov.mul_(1.0 / max(self.n - 1, 1))

    def inverse_factors_(self, eps: float) -> list[torch.Tensor]:
        """The panels (:func:`panel_bounds`) of float32 ``W^T``, ``W = L^-1`` for the lower Cholesky factor L
        of cov + eps I (both in float64), block by block, each scatter block freed once factorised."""
        positions, d = self.total.shape
        identity = torch.eye(d, dtype=torch.float64)
        panels = empty_panels(positions, d)

        def factorise(start: int) -> None:
            sl = slice(start, start + BLOCK)
            cov = self.covariance(sl)
            self.outer[start // BLOCK] = None
            cov.diagonal(dim1=1, dim2=2).add_(eps)
            inverse = torch.linalg.solve_triangular(torch.linalg.cholesky(cov), identity, upper=False)
            write_panels(panels, sl, inverse.transpose(1, 2).float())

        per_worker(factorise, range(0, positions, BLOCK))
        self.outer = None
        return panels

    def low_rank_(self, eps: float, rank: int, seed: int = 0):
        """(V^T [L, rank, d], 1 / (lambda + eps) [L, rank]): ``C^-1 = I / eps + V diag(1 / (lambda + eps) - 1 / eps)
        V^T``, exact when every covariance has rank <= ``rank`` (N - 1 images): the range of a seeded
        Gaussian sketch with 8 extra columns, refined once, holds the whole range, and the eigenpairs
        within it are the covariance's."""
        positions, d = self.total.shape
        basis = torch.empty(positions, rank, d)  # rows: one image's projections read memory in order
        precisions = torch.empty(positions, rank)
        sketch = torch.randn(d, rank + 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

        def decompose(start: int) -> None:
            sl = slice(start, start + BLOCK)
            cov = self.covariance(sl)
            self.outer[start // BLOCK] = None
            range_ = torch.linalg.qr(cov @ torch.linalg.qr(cov @ sketch).Q).Q
            values, vectors = torch.linalg.eigh(range_.transpose(1, 2) @ cov @ range_)
            values, vectors = values[:, -rank:].clamp_min(0), vectors[:, :, -rank:]
            basis[sl] = (range_ @ vectors).transpose(1, 2).float()
            precisions[sl] = (1.0 / (values + eps)).float()

        per_worker(decompose, range(0, positions, BLOCK))
        self.outer = None
        return basis, precisions

    @classmethod
    def from_gaussians(
        cls, mean: torch.Tensor, n: int, eps: float, low_rank=None, panels=None
    ) -> "GaussianAccumulator":
        """The sums of ``n`` images whose Gaussians are ``mean`` [L, d] and either ``low_rank`` (basis,
        precisions) or the ``panels`` of W^T: the scatter ``(n - 1) C`` around the mean, rebuilt in float64
        per position and kept in float32 as a fit keeps it. Peak memory: one [L, d, d] float32 block."""
        acc = cls()
        positions, d = mean.shape
        acc.n, acc.shift = n, mean.clone()
        acc.total = torch.zeros(positions, d, dtype=torch.float64)
        acc.outer = cls._blocks(positions, d, torch.empty)
        identity = torch.eye(d, dtype=torch.float64)

        def rebuild(start: int) -> None:
            sl = slice(start, start + BLOCK)
            if low_rank is not None:
                basis, precisions = low_rank[0][sl].double(), low_rank[1][sl].double()
                values = (1.0 / precisions - eps).clamp_min(0) * (n - 1)
                scatter = (basis.transpose(1, 2) * values[:, None, :]) @ basis
            else:
                inverse = read_panels(panels, sl, d).double().transpose(1, 2)
                factor = torch.linalg.solve_triangular(inverse, identity, upper=False)
                scatter = factor @ factor.transpose(1, 2)
                scatter.diagonal(dim1=1, dim2=2).sub_(eps)
                scatter.mul_(n - 1)
            acc.outer[start // BLOCK] = scatter.float()

        per_worker(rebuild, range(0, positions, BLOCK))
        return acc


def grow_low_rank(
    mean: torch.Tensor,
    n: int,
    eps: float,
    low_rank: tuple[torch.Tensor, torch.Tensor],
    new: torch.Tensor,
    new_eps: float,
    chunk: int = 32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The low-rank form of ``n`` images (``mean`` [L, d], basis [L, r, d], precisions [L, r]) grown by the
    ``new`` [m, L, d] vectors: (mean, basis [L, n + m - 1, d], precisions). Exact: the new scatter
    ``S + sum (x - mu')(x - mu')^T + n (mu - mu')(mu - mu')^T`` lies in the span of the old eigenvectors, the
    new deviations and the mean's shift, so its eigenpairs come from an (n + m) x (n + m) matrix per
    position, never a d x d one (float64 throughout, stored as float32 as a fit stores them)."""
    total = n + len(new)
    rank = total - 1
    positions, d = mean.shape
    old_mean = mean.double()
    new_mean = (old_mean * n + new.double().sum(0)) / total
    basis = torch.empty(positions, rank, d)
    precisions = torch.empty(positions, rank)

    def grow(start: int) -> None:
        sl = slice(start, start + chunk)
        vectors = low_rank[0][sl].double()  # [c, r, d]
        scatter_values = (1.0 / low_rank[1][sl].double() - eps).clamp_min(0) * (n - 1)  # [c, r]
        centre = new_mean[sl]
        shift = (old_mean[sl] - centre) * n**0.5
        deviations = torch.cat([(new[:, sl].double() - centre).transpose(0, 1), shift[:, None]], 1)
        span = torch.linalg.qr(torch.cat([vectors, deviations], 1).transpose(1, 2)).Q  # [c, d, k]
        old_coords, new_coords = vectors @ span, deviations @ span  # [c, r, k], [c, m + 1, k]
        small = old_coords.transpose(1, 2) @ (scatter_values[:, :, None] * old_coords)
        small.baddbmm_(new_coords.transpose(1, 2), new_coords)
        values, eigenvectors = torch.linalg.eigh(small)
        values, eigenvectors = values[:, -rank:].clamp_min(0), eigenvectors[:, :, -rank:]
        basis[sl] = (span @ eigenvectors).transpose(1, 2).float()
        precisions[sl] = (1.0 / (values / (total - 1) + new_eps)).float()

    per_worker(grow, range(0, positions, chunk))
    return new_mean.float(), basis, precisions


def gram_inverse_factors(centred: torch.Tensor, eps: float, chunk: int = 256) -> torch.Tensor:
    """[L, N, N] float64 inverse of the lower Cholesky factor of ``Xc Xc^T + eps (N - 1) I`` per position
    (``centred`` [L, N, d]): with it ``u^T (eps (N - 1) I + Xc Xc^T)^-1 u = |G^-1 u|^2`` (the Woodbury form)."""
    positions, n, _ = centred.shape
    out = torch.empty(positions, n, n, dtype=torch.float64)
    identity = torch.eye(n, dtype=torch.float64)

    def factorise(start: int) -> None:
        sl = slice(start, start + chunk)
        xc = centred[sl]
        gram = torch.bmm(xc, xc.transpose(1, 2)).double()  # float32 products, float64 factor
        gram.diagonal(dim1=1, dim2=2).add_(eps * max(n - 1, 1))
        out[sl] = torch.linalg.solve_triangular(torch.linalg.cholesky(gram), identity, upper=False)

    per_worker(factorise, range(0, positions, chunk))
    return out
