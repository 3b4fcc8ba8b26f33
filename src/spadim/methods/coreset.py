"""Greedy k-center coreset subsampling: PatchCore's reduction of the memory bank.

The reference implementation (patchcore-inspection, ``sampler.py``) first maps the
patch features by a random linear projection to 128 dimensions (a bias-free
``torch.nn.Linear``, whose default weights are uniform in +-1/sqrt(D)), then picks
centres greedily: each step takes the point farthest (Euclidean, in the projected
space) from everything picked so far. ``int(N * ratio)`` points are kept.

Its two samplers differ only in the vector the greedy loop starts from:

* ``ApproximateGreedyCoresetSampler`` (``approx_greedy_coreset``, the one every published
  run uses): each point's mean distance to ``starts`` = 10 random points;
* ``GreedyCoresetSampler``: the L2 norm of each row of the full N x N distance matrix, so
  the first pick is the point with the largest root-sum-of-squared distances; after that it
  is the exact k-center greedy (a row norm is never below any of its entries).

Both are here (``starts > 0`` and ``starts = 0``) and neither builds an N x N matrix: the
exact start's row norms come from ``sum_j |x_i - x_j|^2 = N |x_i|^2 + sum_j |x_j|^2 - 2 x_i . sum_j x_j``.

The greedy loop picks the same points as the reference's loop (one full [N, 128] matrix-vector
product per pick), up to float rounding on near-ties, but it is lazy (:func:`greedy_coreset`):
a point's distance to the picked set is brought up to date only when it could be the farthest,
and mostly in 32 principal directions, which bound the distance from below. At N = 156,800
(200 images of 784 patches, 15,680 picks) the dense loop is memory-bound: it reads the 80 MB
matrix once per pick, about 11 ms a pick on a 2-core AMD EPYC, three minutes in all; the lazy
loop updates about 45 points a pick and took 16 s (real hazelnut features, each image in four
rotations). Memory stays linear in N. Everything is float32 and seeded by a ``torch.Generator``.
"""

from __future__ import annotations

import heapq
import math

import numpy as np
import torch

PROJECTION_DIM = 128  # the reference's dimension_to_project_features_to
STARTS = 10  # the reference's number_of_starting_points (approximate sampler)
LOWER_DIM = 32  # principal directions of the lower bound that spares most D-dim distances


def coreset_size(n: int, ratio: float) -> int:
    """``int(n * ratio)`` as the reference, at least one point."""
    return n if ratio >= 1 else max(1, int(n * ratio))


def random_projection(dim_in: int, generator: torch.Generator, dim_out: int = PROJECTION_DIM) -> torch.Tensor:
    """[dim_in, dim_out] weights uniform in +-1/sqrt(dim_in) (the distribution of nn.Linear's default init)."""
    bound = dim_in**-0.5
    return (torch.rand(dim_in, dim_out, generator=generator) * 2 - 1) * bound


def _distances_to(x: torch.Tensor, sq: torch.Tensor, centre: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Euclidean distances [N] of every row of ``x`` to ``centre`` [D], written into ``out``."""
    torch.addmv(sq, x, centre, beta=1, alpha=-2, out=out)
    return out.add_(centre.square().sum()).clamp_min_(0).sqrt_()


def starting_distances(x: torch.Tensor, starts: int, generator: torch.Generator) -> torch.Tensor:
    """The vector the greedy loop starts from (see the module docstring), [N] float32."""
    n = len(x)
    sq = x.square().sum(1)
    if starts <= 0:  # the exact sampler: row norms of the N x N distance matrix, in closed form
        squared = n * sq + sq.sum() - 2 * (x @ x.sum(0))
        return squared.clamp_min_(0).sqrt_()
    chosen = torch.randperm(n, generator=generator)[: min(starts, n)]
    total, column = torch.zeros(n), torch.empty(n)
    for i in chosen.tolist():
        total += _distances_to(x, sq, x[i], column)
    return total / len(chosen)


def _principal_basis(centred: np.ndarray, dim: int) -> np.ndarray:
    """[D, dim] orthonormal top principal directions: projecting on them never lengthens a distance."""
    _, vectors = np.linalg.eigh(centred.T.astype(np.float64) @ centred)
    return np.ascontiguousarray(vectors[:, ::-1][:, :dim], dtype=np.float32)


def _with_one(x: np.ndarray) -> np.ndarray:
    """Rows [x, 1]: one product with a centre row [c, -|c|^2 / 2] is ``x.c - |c|^2 / 2``, and
    ``|x - c|^2 = |x|^2 - 2 (that product)``."""
    return np.hstack([x, np.ones((len(x), 1), np.float32)])


def greedy_coreset(
    x: torch.Tensor, count: int, starts: int = STARTS, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Indices [count] (in the order picked) of a greedy k-center coreset of the rows of ``x`` [N, D].

    Lazy: the running distances only fall as centres are added, so a point's stale value is an upper
    bound. The top of a max-heap of bounds is brought up to date against the centres picked since its
    last update; if it is still on top it is the farthest point (the others can only be nearer). The
    update first bounds each new centre's distance from below in the ``LOWER_DIM`` top principal
    directions and computes all D dimensions only for centres that might be nearer than the bound.
    """
    generator = generator or torch.Generator().manual_seed(0)
    x = x.float().contiguous()
    count = min(count, len(x))
    with torch.inference_mode():
        start = starting_distances(x, starts, generator).double().square_().tolist()  # squared, as below
        centred = (x - x.mean(0)).numpy()  # distances do not move; rounding is smaller near the data
    points, squares = _with_one(centred), np.einsum("ij,ij->i", centred, centred).tolist()
    centres = np.zeros((count, points.shape[1]), np.float32)
    low = low_squares = low_centres = None
    if centred.shape[1] > LOWER_DIM:
        projected = centred @ _principal_basis(centred, LOWER_DIM)
        low, low_squares = _with_one(projected), np.einsum("ij,ij->i", projected, projected)
        slack = 1e-5 * (low_squares + low_squares.mean())  # float rounding of the bound, with room to spare
        low_squares, slack = low_squares.tolist(), slack.tolist()
        low_centres = np.zeros((count, low.shape[1]), np.float32)
    heap = [(-value, i) for i, value in enumerate(start)]  # ties pop the lowest index, as argmax does
    heapq.heapify(heap)
    checked = [0] * len(points)  # point i's bound folds in the centres picked before checked[i]
    picked: list[int] = []
    while len(picked) < count:
        bound, i = heap[0]
        step, first = len(picked), checked[i]
        if first == step:  # up to date and on top: the farthest point
            heapq.heappop(heap)
            picked.append(i)
            centres[step, :-1], centres[step, -1] = centred[i], -0.5 * squares[i]
            if low is not None:
                low_centres[step, :-1], low_centres[step, -1] = low[i, :-1], -0.5 * low_squares[i]
            continue
        value = -bound
        if low is None:
            nearest = float((centres[first:step] @ points[i]).max())
        else:  # a centre can be nearer than ``value`` only if its lower bound is
            floor = 0.5 * (low_squares[i] - value) - slack[i]
            maybe = np.flatnonzero(low_centres[first:step] @ low[i] > floor)
            nearest = float((centres[first + maybe] @ points[i]).max()) if len(maybe) else -math.inf
        value = min(value, max(squares[i] - 2 * nearest, 0.0))
        checked[i] = step
        heapq.heapreplace(heap, (-value, i))
    return torch.tensor(picked, dtype=torch.long)
