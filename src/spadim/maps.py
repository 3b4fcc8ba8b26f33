"""Turning feature-resolution score grids into image-resolution anomaly maps."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

SIGMA = 4.0  # both papers' reference code blur the upsampled map with a Gaussian of sigma 4


def upsample_blur(grid: torch.Tensor, size: int, sigma: float = SIGMA) -> np.ndarray:
    """[N, h, w] scores -> [N, size, size] float32: bilinear upsampling, then Gaussian blur per map."""
    up = F.interpolate(grid[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    out = up.numpy().astype(np.float32)
    if sigma > 0:
        out = gaussian_filter(out, sigma=(0, sigma, sigma))
    return out
