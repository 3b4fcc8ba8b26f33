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
loop keeps one running distance vector [N] and updates it by one matrix-vector product per
picked centre, and the exact start's row norms come from ``sum_j |x_i - x_j|^2 =
N |x_i|^2 + sum_j |x_j|^2 - 2 x_i . sum_j x_j``. A picked point's running distance is set
to 0 (its true distance to itself), so float rounding can never pick it twice. Everything
is float32 and seeded by a ``torch.Generator``.

The loop runs on one torch thread: each step is a few passes over [N] vectors plus one
memory-bound [N, 128] matrix-vector product, too small to amortise a thread team's fork and
join. On the 2-core development machine (under load) a step at N = 39,200 took 1.9 ms on one
thread and 6-21 ms on two; splitting the rows over single-threaded workers gained nothing there.
"""

from __future__ import annotations

import torch

PROJECTION_DIM = 128  # the reference's dimension_to_project_features_to
STARTS = 10  # the reference's number_of_starting_points (approximate sampler)


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


def greedy_coreset(
    x: torch.Tensor, count: int, starts: int = STARTS, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Indices [count] (in the order picked) of a greedy k-center coreset of the rows of ``x`` [N, D]."""
    generator = generator or torch.Generator().manual_seed(0)
    x = x.float().contiguous()
    sq = x.square().sum(1)
    nearest = starting_distances(x, starts, generator)
    column = torch.empty(len(x))
    picked = torch.empty(min(count, len(x)), dtype=torch.long)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see the module docstring: small memory-bound steps
    try:
        for step in range(len(picked)):
            i = int(torch.argmax(nearest))
            picked[step] = i
            torch.minimum(nearest, _distances_to(x, sq, x[i], column), out=nearest)
            nearest[i] = 0
    finally:
        torch.set_num_threads(threads)
    return picked
