"""PatchCore's locally aware patch features, as the reference implementation computes them
(patchcore-inspection ``common.py``: ``PatchMaker``, ``MeanMapper``, ``Aggregator``).

Each layer's map is unfolded into 3x3 neighbourhoods (stride 1, zero padding 1); a position's C*9
values, flattened channel-major as ``nn.Unfold`` lays them out, are reduced to ``dim`` by 1-D adaptive
average pooling (``MeanMapper``). That is not a plain 3x3 mean per channel unless C*9 = k * dim: for
wide_resnet50_2's layer 3 (9216 -> 1024) each output is exactly one channel's 3x3 mean (padding
counted), for its layer 2 (4608 -> 1024) each bin spans 4.5 values, i.e. half neighbourhoods. The
coarser layers are resized to the first (finest) layer's grid, bilinearly (align_corners=False). The
per-layer vectors are concatenated layer by layer and pooled once more to ``target_dim``
(``Aggregator``); with two layers of 1024 that averages neighbouring pairs, so the result is layer 2
pooled to 512 followed by layer 3 pooled to 512.

Deviations, exact in real arithmetic (float rounding differs, ~1e-7 relative): the reference resizes
the unfolded C*9 maps and then pools; here each layer is pooled first and the ``dim`` maps are resized
(both steps are linear and act on different axes, so they commute). The pooling bins repeat with period
gcd(C*9, dim), so unfold + pooling is one grouped convolution whose weights are the bins (no unfolded
copy), and the final pooling is a batch of small matrix products; 5x faster than unfold +
``adaptive_avg_pool1d`` here. Everything here traces to ONNX.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from spadim.features.extractor import FeatureSet

DIM = 1024  # the reference's pretrain_embed_dimension and target_embed_dimension
PATCH = 3


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
