"""SPADE and PaDiM against direct, independent computations on small random features."""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from scipy.spatial.distance import cdist, mahalanobis

from spadim.features import FeatureSet
from spadim.padim import Padim, channel_subset
from spadim.spade import Spade


def _fs(n, seed, c=(3, 4, 5, 6), hw=(8, 4, 2, 1)):
    g = torch.Generator().manual_seed(seed)
    layers = {l: torch.randn(n, c[l - 1], hw[l - 1], hw[l - 1], generator=g) for l in (1, 2, 3, 4)}
    return FeatureSet([], layers, torch.randn(n, 6, generator=g), np.zeros((n, 1, 1, 3), np.uint8), [])


def _concat_np(fs, idx, layers):
    """Independent concatenation: numpy repeat of each layer up to the largest grid."""
    size = max(fs.layers[l].shape[-1] for l in layers)
    parts = []
    for l in layers:
        a = fs.layers[l][idx].numpy()
        f = size // a.shape[-1]
        parts.append(a.repeat(f, axis=-2).repeat(f, axis=-1))
    return np.concatenate(parts, axis=0)  # [C, H, W]


@pytest.mark.parametrize("layers,k", [((1, 2, 3), 3), ((2, 4), 1), ((1, 2, 3, 4), 10)])
def test_spade_against_cdist(layers, k):
    train, test = _fs(7, 0), _fs(3, 1)
    m = Spade(layers, k, chunk=5).fit(train)
    d_img = cdist(test.pooled.numpy(), train.pooled.numpy())
    kk = min(k, 7)
    nn = np.argsort(d_img, axis=1)[:, :kk]
    dist, idx = m.neighbours(test)
    assert np.array_equal(np.sort(idx.numpy(), 1), np.sort(nn, 1))
    np.testing.assert_allclose(dist.mean(1).numpy(), np.sort(d_img, 1)[:, :kk].mean(1), rtol=1e-5)
    grid = m.pixel_grid(test, idx).numpy()
    for i in range(3):
        q = _concat_np(test, i, layers)
        c, h, w = q.shape
        gallery = np.concatenate([_concat_np(train, j, layers).reshape(c, -1).T for j in nn[i]])
        expect = cdist(q.reshape(c, -1).T, gallery).min(1).reshape(h, w)
        np.testing.assert_allclose(grid[i], expect, rtol=1e-4, atol=1e-4)
    maps, scores = m.score(test, 32)
    assert maps.shape == (3, 32, 32)
    np.testing.assert_allclose(scores, np.sort(d_img, 1)[:, :kk].mean(1), rtol=1e-5)


def test_spade_state_round_trip():
    train, test = _fs(5, 0), _fs(2, 1)
    m = Spade((1, 3), 2).fit(train)
    m2 = Spade.from_state(m.state())
    assert np.array_equal(m.score(test, 16)[0], m2.score(test, 16)[0])


@pytest.mark.parametrize("layers,d", [((1, 2, 3), 6), ((3, 4), 100), ((1,), 2)])
def test_padim_against_numpy(layers, d):
    train, test = _fs(9, 2), _fs(2, 3)
    m = Padim(layers, d, seed=5, chunk=7).fit(train)
    idx = channel_subset(sum((3, 4, 5, 6)[l - 1] for l in layers), d, 5).numpy()
    assert np.array_equal(m.idx.numpy(), idx)
    tr = np.stack([_concat_np(train, i, layers)[idx] for i in range(9)])  # [N, d, H, W]
    te = np.stack([_concat_np(test, i, layers)[idx] for i in range(2)])
    grid = m.distance_grid(test).numpy()
    h, w = tr.shape[2:]
    for y in range(h):
        for x in range(w):
            mu = tr[:, :, y, x].mean(0)
            cov = np.cov(tr[:, :, y, x], rowvar=False).reshape(len(idx), len(idx)) + 0.01 * np.eye(len(idx))
            inv = np.linalg.inv(cov)
            for i in range(2):
                assert grid[i, y, x] == pytest.approx(mahalanobis(te[i, :, y, x], mu, inv), rel=1e-3)
    maps, scores = m.score(test, 16)
    up = torch.nn.functional.interpolate(torch.from_numpy(grid)[:, None], size=(16, 16), mode="bilinear", align_corners=False)[:, 0]
    expect = np.stack([gaussian_filter(u, 4) for u in up.numpy()])
    np.testing.assert_allclose(maps, expect, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(scores, expect.reshape(2, -1).max(1), rtol=1e-4)


def test_padim_subset_seeded_and_capped():
    assert np.array_equal(channel_subset(100, 10, 1), channel_subset(100, 10, 1))
    assert not np.array_equal(channel_subset(100, 10, 1), channel_subset(100, 10, 2))
    assert np.array_equal(channel_subset(8, 550, 0), np.arange(8))
    train = _fs(6, 0)
    m = Padim((3, 4), 550).fit(train)
    assert m.chol.shape == (4, 11, 11)  # d capped by 5+6 channels, 2x2 grid
    m2 = Padim.from_state(m.state())
    test = _fs(2, 9)
    assert np.array_equal(m.distance_grid(test).numpy(), m2.distance_grid(test).numpy())
