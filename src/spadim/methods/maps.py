"""Turning feature-resolution score grids into image-resolution anomaly maps."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

SIGMA = 4.0  # both papers' reference code blur the upsampled map with a Gaussian of sigma 4


def upsample(grid: torch.Tensor, size: int) -> np.ndarray:
    """[N, h, w] -> [N, size, size] float32, bilinear (align_corners=False, as the reference code)."""
    up = F.interpolate(grid[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    return up.numpy().astype(np.float32, copy=False)


def blur(maps: np.ndarray, sigma: float = SIGMA) -> np.ndarray:
    """Gaussian blur of each map [N, H, W] (not across maps)."""
    maps = np.asarray(maps, dtype=np.float32)
    return gaussian_filter(maps, sigma=(0, sigma, sigma)) if sigma > 0 else maps


def upsample_blur(grid: torch.Tensor, size: int, sigma: float = SIGMA) -> np.ndarray:
    """[N, h, w] scores -> [N, size, size] float32: bilinear upsampling, then Gaussian blur per map."""
    return blur(upsample(grid, size), sigma)
