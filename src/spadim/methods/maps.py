"""Turning feature-resolution score grids into image-resolution anomaly maps: one module, every runtime.

Both papers' reference code upsample a grid bilinearly (``align_corners=False``) and blur it with
``scipy.ndimage.gaussian_filter(sigma=4)`` (``truncate=4``, ``mode="reflect"``: the edge sample
repeated). Both steps are linear and act on rows and columns separately, so the whole step is
``A_h @ grid @ A_w^T`` with ``A = K U``: ``U`` [size, h] the bilinear upsampling and ``K`` [size, size]
the blur with its border, each the operator's own matrix (scipy's filter and torch's interpolation
applied to the identity, in float64). Two small matrix products per map: exact in real arithmetic,
about 1e-6 relative in float32, traceable to ONNX, and on a CPU faster than the blur alone as a
convolution. :class:`MapStep` is what every method's scoring module runs.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter1d
from torch import nn

SIGMA = 4.0  # both papers' reference code blur the upsampled map with a Gaussian of sigma 4
TRUNCATE = 4.0  # scipy's default: the kernel reaches 4 sigma (radius 16)


def map_operator(grid: int, size: int, sigma: float = SIGMA) -> np.ndarray:
    """[size, grid] float64: bilinear upsampling from ``grid`` to ``size`` samples, then the Gaussian blur."""
    identity = torch.eye(grid, dtype=torch.float64)[:, None]  # each row one unit impulse of the grid
    up = F.interpolate(identity, size=size, mode="linear", align_corners=False)[:, 0].numpy().T
    if sigma <= 0:
        return up
    return gaussian_filter1d(up, sigma, axis=0, mode="reflect", truncate=TRUNCATE)


@contextmanager
def one_thread():
    """torch's intra-op threads at 1 for the duration: for products of a fraction of a millisecond. On a
    busy 2-core machine waking a second thread cost 8-12 ms per product, the products themselves about
    0.06 ms (one 56 x 56 grid to 224 x 224) on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class MapStep(nn.Module):
    """[n, h, w] grid -> [n, size, size] map: bilinear upsampling (align_corners=False), then
    ``scipy.ndimage.gaussian_filter(sigma, truncate=4, mode="reflect")`` per map, as two matrix products."""

    def __init__(self, size: int, sigma: float = SIGMA):
        super().__init__()
        self.size, self.sigma = int(size), float(sigma)
        self._operators: dict = {}  # (grid, device) -> [size, grid] float32, built on first use

    def operator(self, grid: int, device: torch.device) -> torch.Tensor:
        if (grid, device) not in self._operators:  # built with numpy: a constant inside a traced graph
            matrix = map_operator(grid, self.size, self.sigma).astype(np.float32)
            self._operators[grid, device] = torch.from_numpy(matrix).to(device)
        return self._operators[grid, device]

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        rows = self.operator(int(grid.shape[-2]), grid.device)  # grid sizes are fixed per model
        cols = self.operator(int(grid.shape[-1]), grid.device)
        small = grid.device.type == "cpu" and not torch.jit.is_tracing()
        with one_thread() if small else nullcontext():
            return torch.matmul(torch.matmul(rows, grid.float()), cols.T)

    def mean(self, grids: list[torch.Tensor]) -> torch.Tensor:
        """The blur of the mean of the upsampled grids (SPADE's fusion), by linearity the mean of their maps."""
        return torch.stack([self(grid) for grid in grids]).mean(0)


def upsample_blur(grid: torch.Tensor, size: int, sigma: float = SIGMA) -> np.ndarray:
    """[N, h, w] scores -> [N, size, size] float32 numpy: :class:`MapStep` outside a scoring module."""
    with torch.inference_mode():
        return MapStep(size, sigma)(grid).cpu().numpy()
