"""The map step against an independent computation: torch's bilinear upsampling, then scipy's blur."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from spadim.methods.maps import MapStep


@pytest.mark.parametrize("grid,size", [((7, 7), 64), ((56, 56), 224), ((5, 9), 72), ((18, 18), 72)])
def test_map_step_is_bilinear_upsampling_then_scipys_gaussian_filter(grid, size):
    g = torch.rand(3, *grid, generator=torch.Generator().manual_seed(0)) * 5
    up = F.interpolate(g[:, None].double(), size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    expect = gaussian_filter(up.numpy(), sigma=(0, 4, 4), mode="reflect", truncate=4.0)
    np.testing.assert_allclose(MapStep(size)(g).numpy(), expect, rtol=1e-5, atol=1e-6 * np.abs(expect).max())


def test_map_step_mean_is_the_blur_of_the_mean_of_upsampled_grids():
    """SPADE's fusion: upsample each layer's grid, average, then blur."""
    grids = [torch.rand(2, h, h, generator=torch.Generator().manual_seed(h)) for h in (16, 8, 4)]
    up = [
        F.interpolate(g[:, None].double(), size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
        for g in grids
    ]
    expect = gaussian_filter(torch.stack(up).mean(0).numpy(), sigma=(0, 4, 4))
    np.testing.assert_allclose(MapStep(64).mean(grids).numpy(), expect, rtol=1e-5, atol=1e-6)
