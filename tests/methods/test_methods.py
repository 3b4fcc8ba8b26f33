"""SPADE and PaDiM against direct, independent computations on small random features."""

import cv2
import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from scipy.spatial.distance import cdist, mahalanobis

from spadim.features.extractor import FeatureSet
from spadim.methods.gaussians import read_panels
from spadim.methods.padim import (
    EPS,
    GaussianAccumulator,
    LowRankPadim,
    Padim,
    channel_subset,
    fit_padim,
    select_and_concat,
)
from spadim.methods.nearest import FaissSearch, TorchSearch
from spadim.methods.spade import Spade


def _fs(n, seed, c=(3, 4, 5, 6), hw=(8, 4, 2, 1)):
    g = torch.Generator().manual_seed(seed)
    layers = {
        layer: torch.randn(n, c[layer - 1], hw[layer - 1], hw[layer - 1], generator=g)
        for layer in (1, 2, 3, 4)
    }
    return FeatureSet([], layers, torch.randn(n, 6, generator=g), np.zeros((n, 1, 1, 3), np.uint8), [])


def _concat_np(fs, idx, layers):
    """Independent concatenation: numpy repeat of each layer up to the largest grid."""
    size = max(fs.layers[layer].shape[-1] for layer in layers)
    parts = []
    for layer in layers:
        a = fs.layers[layer][idx].numpy()
        f = size // a.shape[-1]
        parts.append(a.repeat(f, axis=-2).repeat(f, axis=-1))
    return np.concatenate(parts, axis=0)  # [C, H, W]


def _upsample_cv2(grid: np.ndarray, size: int) -> np.ndarray:
    """Independent bilinear upsampling (OpenCV's half-pixel INTER_LINEAR = torch align_corners=False)."""
    return cv2.resize(grid.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)


def _reference_nn(test, train, k):
    d_img = cdist(test.pooled.numpy(), train.pooled.numpy())
    kk = min(k, len(train.pooled))
    return d_img, np.argsort(d_img, axis=1)[:, :kk], kk


@pytest.mark.parametrize("search", [TorchSearch(chunk=5), FaissSearch()], ids=["torch", "faiss"])
@pytest.mark.parametrize("layers,k", [((1, 2, 3), 3), ((2, 4), 1), ((1, 2, 3, 4), 10)])
def test_spade_per_layer_mean_against_cdist(layers, k, search):
    """The reference computation: per layer, nearest gallery vector among the K images' same layer;
    each layer's map upsampled bilinearly, the maps averaged, then blurred with sigma 4."""
    train, test = _fs(7, 0), _fs(3, 1)
    m = Spade(layers=layers, k=k, search=search).fit(train)
    d_img, nn, kk = _reference_nn(test, train, k)
    dist, idx = m.neighbours(test)
    assert np.array_equal(np.sort(idx.numpy(), 1), np.sort(nn, 1))
    grids = m.layer_grids(test, idx)
    size = 32
    expect_maps = []
    for i in range(3):
        per_layer = []
        for layer in layers:
            q = test.layers[layer][i].numpy()
            c, h, w = q.shape
            gallery = np.concatenate([train.layers[layer][j].numpy().reshape(c, -1).T for j in nn[i]])
            expect = cdist(q.reshape(c, -1).T, gallery).min(1).reshape(h, w)
            np.testing.assert_allclose(grids[layer][i].numpy(), expect, rtol=1e-4, atol=1e-4)
            per_layer.append(_upsample_cv2(expect, size))
        expect_maps.append(gaussian_filter(np.mean(per_layer, axis=0), 4))
    maps, scores = m.score(test, size)
    np.testing.assert_allclose(maps, np.stack(expect_maps), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(scores, np.sort(d_img, 1)[:, :kk].mean(1), rtol=1e-5)


@pytest.mark.parametrize("layers", [(1, 2, 3), (2, 4)])
def test_spade_concat_fusion_against_cdist(layers):
    train, test = _fs(7, 0), _fs(3, 1)
    m = Spade(layers=layers, k=3, fusion="concat").fit(train)
    _, nn, _ = _reference_nn(test, train, 3)
    grid = m.concat_grid(test, m.neighbours(test)[1]).numpy()
    for i in range(3):
        q = _concat_np(test, i, layers)
        c, h, w = q.shape
        gallery = np.concatenate([_concat_np(train, j, layers).reshape(c, -1).T for j in nn[i]])
        np.testing.assert_allclose(
            grid[i], cdist(q.reshape(c, -1).T, gallery).min(1).reshape(h, w), rtol=1e-4, atol=1e-4
        )
    maps = m.score(test, 16)[0]
    expect = np.stack([gaussian_filter(_upsample_cv2(g, 16), 4) for g in grid])
    np.testing.assert_allclose(maps, expect, rtol=1e-4, atol=1e-4)


def test_nearest_searches_match_cdist_on_realistic_sizes():
    g = torch.Generator().manual_seed(0)
    queries, gallery = (
        torch.randn(700, 64, generator=g).relu() + 3,
        torch.randn(2500, 64, generator=g).relu() + 3,
    )
    expect = cdist(queries.numpy(), gallery.numpy()).min(1)
    for search in (TorchSearch(chunk=256), FaissSearch()):
        np.testing.assert_allclose(
            search.min_distances(queries, gallery).numpy(), expect, rtol=1e-4, atol=1e-4
        )


@pytest.mark.parametrize(
    "layers,d,n_train,form",
    [
        ((1, 2, 3), 6, 9, "cholesky"),  # 9 - 1 >= d: full rank
        ((3, 4), 100, 9, "low-rank"),  # d capped at 11 > 9 - 1
        ((1,), 2, 9, "cholesky"),
        ((1, 2, 3), 12, 6, "low-rank"),
    ],
)
def test_padim_against_numpy(layers, d, n_train, form):
    """Both forms give the reference Mahalanobis distance."""
    train, test = _fs(n_train, 2), _fs(2, 3)
    m = Padim(layers=layers, d=d, seed=5, batch=4).fit(train)
    assert m.form == form
    idx = channel_subset(sum((3, 4, 5, 6)[layer - 1] for layer in layers), d, 5).numpy()
    assert np.array_equal(m.idx.numpy(), idx)
    tr = np.stack([_concat_np(train, i, layers)[idx] for i in range(n_train)])  # [N, d, H, W]
    te = np.stack([_concat_np(test, i, layers)[idx] for i in range(2)])
    grid = m.distance_grid(test).numpy()
    h, w = tr.shape[2:]
    for y in range(h):
        for x in range(w):
            mu = tr[:, :, y, x].mean(0)
            cov = np.cov(tr[:, :, y, x], rowvar=False).reshape(len(idx), len(idx)) + 0.01 * np.eye(len(idx))
            inv = np.linalg.inv(cov)
            for i in range(2):
                assert grid[i, y, x] == pytest.approx(mahalanobis(te[i, :, y, x], mu, inv), rel=1e-4)
    maps, scores = m.score(test, 16)
    up = torch.nn.functional.interpolate(
        torch.from_numpy(grid)[:, None], size=(16, 16), mode="bilinear", align_corners=False
    )[:, 0]
    expect = np.stack([gaussian_filter(u, 4) for u in up.numpy()])
    np.testing.assert_allclose(maps, expect, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(scores, expect.reshape(2, -1).max(1), rtol=1e-4)


def test_padim_subset_seeded_and_capped():
    drawn = np.sort(np.random.default_rng(1).choice(100, size=10, replace=False))  # seeded, sorted
    assert np.array_equal(channel_subset(100, 10, 1), drawn)
    assert not np.array_equal(channel_subset(100, 10, 1), channel_subset(100, 10, 2))
    assert np.array_equal(channel_subset(8, 550, 0), np.arange(8))
    train = _fs(12, 0)
    m = Padim(layers=(3, 4), d=550).fit(train)
    assert m.form == "cholesky" and len(m.idx) == 11  # d capped by 5+6 channels, 2x2 grid; 12 - 1 >= d
    state = m.state()
    assert state["tensors"]["inverse_t_upper"].numel() == 4 * 11 * 12 // 2  # only the triangles are stored
    m2 = Padim.from_state(state)
    test = _fs(2, 9)
    assert np.array_equal(m.distance_grid(test).numpy(), m2.distance_grid(test).numpy())
    low = Padim(layers=(3, 4), d=550).fit(_fs(6, 0))  # 6 images: rank 5 < 11
    assert low.form == "low-rank" and low.state()["tensors"]["basis"].shape == (4, 5, 11)
    first_layout = low.state()
    first_layout["tensors"]["basis"] = first_layout["tensors"]["basis"].transpose(1, 2)  # [L, d, r]
    assert torch.equal(Padim.from_state(first_layout).distance_grid(test), low.distance_grid(test))
    assert np.array_equal(
        low.distance_grid(test).numpy(), Padim.from_state(low.state()).distance_grid(test).numpy()
    )


def test_padim_files_with_cholesky_factors_still_load():
    """Files written before the inverse factor hold the lower triangles of float32 Cholesky factors L (and,
    before the low-rank form, no 'form'): they load, and score the reference Mahalanobis distance."""
    train, test = _fs(12, 0), _fs(2, 9)
    layers, idx = (3, 4), channel_subset(5 + 6, 550, 0)
    tr = np.stack([_concat_np(train, i, layers)[idx.numpy()] for i in range(12)])  # [N, d, H, W]
    te = np.stack([_concat_np(test, i, layers)[idx.numpy()] for i in range(2)])
    vectors = tr.reshape(12, 11, 4).transpose(2, 0, 1)  # [L, N, d]
    covs = np.stack([np.cov(v, rowvar=False) + EPS * np.eye(11) for v in vectors])
    rows, cols = np.tril_indices(11)
    old = {
        "config": {"layers": list(layers), "d": 550, "seed": 0, "grid": [2, 2]},
        "tensors": {
            "idx": idx,
            "mean": torch.from_numpy(vectors.mean(1)).float(),
            "chol_lower": torch.from_numpy(np.linalg.cholesky(covs)[:, rows, cols]).float(),
        },
    }
    loaded = Padim.from_state(old)
    assert loaded.form == "cholesky" and loaded.inverse_panels[0].dtype == torch.float32
    grid = loaded.distance_grid(test).numpy().reshape(2, 4)
    for pos in range(4):
        for i in range(2):
            expect = mahalanobis(te[i].reshape(11, 4)[:, pos], vectors[pos].mean(0), np.linalg.inv(covs[pos]))
            assert grid[i, pos] == pytest.approx(expect, rel=1e-4)


def test_padim_low_rank_form_is_exact_for_real_sized_rank_deficiency():
    """Rank N - 1 = 20 of d = 40 (random features with a large offset): low-rank and a float64 inverse agree."""
    g = torch.Generator().manual_seed(3)
    train = _fs(21, 4, c=(40, 4, 5, 6))
    train.layers[1] = train.layers[1] * torch.linspace(0.1, 3, 40)[:, None, None] + 5
    test = _fs(3, 5, c=(40, 4, 5, 6))
    test.layers[1] = test.layers[1] + torch.randn(3, 40, 8, 8, generator=g) + 5
    m = Padim(layers=(1,), d=40, seed=0).fit(train)
    assert m.form == "low-rank"
    tr = train.layers[1].double().permute(0, 2, 3, 1).reshape(21, 64, 40).numpy()
    te = test.layers[1].double().permute(0, 2, 3, 1).reshape(3, 64, 40).numpy()
    grid = m.distance_grid(test).reshape(3, 64).numpy()
    for pos in range(0, 64, 7):
        inv = np.linalg.inv(np.cov(tr[:, pos], rowvar=False) + EPS * np.eye(40))
        diff = te[:, pos] - tr[:, pos].mean(0)
        np.testing.assert_allclose(
            grid[:, pos], np.sqrt(np.einsum("nd,de,ne->n", diff, inv, diff)), rtol=1e-4
        )


def test_streamed_covariance_matches_np_cov_with_a_large_offset():
    """float32 sums around a shift stay accurate even when the mean dwarfs the spread."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(50, 3, 20, generator=g) * torch.linspace(0.1, 2, 20) + 40.0  # [n, L, d]
    acc = GaussianAccumulator()
    for part in x.split(7):
        acc.add(part)
    np.testing.assert_allclose(acc.mean().numpy(), x.double().mean(0).numpy(), rtol=1e-6)
    covariances = acc.covariance(slice(None)).numpy()
    inverse_t = read_panels(acc.inverse_factors_(EPS), slice(None), 20).double()  # W^T, W = L^-1
    for pos in range(3):
        expect = np.cov(x[:, pos].double().numpy(), rowvar=False)
        np.testing.assert_allclose(covariances[pos], expect, rtol=1e-5, atol=1e-5 * np.abs(expect).max())
        assert torch.equal(inverse_t[pos], inverse_t[pos].triu())
        cov = np.linalg.inv((inverse_t[pos] @ inverse_t[pos].T).numpy()) - EPS * np.eye(20)
        np.testing.assert_allclose(cov, expect, rtol=1e-5, atol=1e-5 * np.abs(expect).max())


def test_padim_per_layer_selection_equals_select_after_concat():
    fs = _fs(4, 3)
    idx = channel_subset(3 + 4 + 5, 7, 0)
    full = torch.cat(
        [
            torch.nn.functional.interpolate(fs.layers[layer], size=(8, 8), mode="nearest")
            for layer in (1, 2, 3)
        ],
        1,
    )
    expect = full[:, idx].flatten(2).transpose(1, 2)
    assert torch.equal(select_and_concat(fs, (1, 2, 3), idx), expect)


def test_low_rank_padim_equals_numpy_mahalanobis_when_fewer_images_than_channels():
    """The Woodbury form used by layer selection gives the reference distances, not an approximation."""
    train, test = _fs(5, 21), _fs(2, 22)  # 5 images: covariance rank 4 < d
    layers, d = (1, 2, 3), 10
    low = fit_padim(layers, d, 3, train)
    assert isinstance(low, LowRankPadim)
    idx = channel_subset(3 + 4 + 5, d, 3).numpy()
    tr = np.stack([_concat_np(train, i, layers)[idx] for i in range(5)])
    te = np.stack([_concat_np(test, i, layers)[idx] for i in range(2)])
    grid = low.distance_grid(test).numpy()
    for y in range(tr.shape[2]):
        for x in range(tr.shape[3]):
            inv = np.linalg.inv(np.cov(tr[:, :, y, x], rowvar=False) + EPS * np.eye(d))
            for i in range(2):
                assert grid[i, y, x] == pytest.approx(
                    mahalanobis(te[i, :, y, x], tr[:, :, y, x].mean(0), inv), rel=1e-4
                )
    np.testing.assert_allclose(
        grid, Padim(layers=layers, d=d, seed=3).fit(train).distance_grid(test).numpy(), rtol=1e-4
    )
    assert not isinstance(fit_padim(layers, 3, 3, train), LowRankPadim)  # 5 - 1 >= d = 3: the d x d form


def test_padim_selection_equals_nearest_interpolation_on_uneven_grids():
    """Crops whose layer grids do not divide each other (72 px: 18, 9, 5) take the index path."""
    fs = _fs(3, 4, hw=(18, 9, 5, 3))
    idx = channel_subset(3 + 4 + 5, 9, 2)
    full = torch.cat(
        [
            torch.nn.functional.interpolate(fs.layers[layer], size=(18, 18), mode="nearest")
            for layer in (1, 2, 3)
        ],
        1,
    )
    assert torch.equal(select_and_concat(fs, (1, 2, 3), idx), full[:, idx].flatten(2).transpose(1, 2))


def test_spade_left_out_equals_a_model_fitted_without_the_image():
    """Leave-one-out by definition: image i scored by SPADE fitted on the other images."""
    train = _fs(6, 4)
    m = Spade(layers=(1, 2, 3), k=3, search=TorchSearch()).fit(train)
    maps, scores = m.score_left_out(train, 16)
    for i in range(6):
        others = [j for j in range(6) if j != i]
        part = FeatureSet(
            [],
            {layer: t[others] for layer, t in train.layers.items()},
            train.pooled[others],
            train.images[others],
            [],
        )
        alone = FeatureSet(
            [], {layer: t[[i]] for layer, t in train.layers.items()}, train.pooled[[i]], train.images[[i]], []
        )
        expect_map, expect_score = (
            Spade(layers=(1, 2, 3), k=3, search=TorchSearch()).fit(part).score(alone, 16)
        )
        np.testing.assert_allclose(maps[i], expect_map[0], rtol=1e-5, atol=1e-6)
        assert scores[i] == pytest.approx(float(expect_score[0]), rel=1e-6)


@pytest.mark.parametrize("low_rank,d", [(False, 5), (True, 5), (False, 7)])
def test_padim_left_out_equals_refitting_without_the_image(low_rank, d, monkeypatch):
    """The closed form against refitting on the other n - 1 images with the regulariser it states
    (Padim in its Cholesky form at d = 5, its low-rank form at d = 7 > n - 1; LowRankPadim)."""
    import spadim.methods.padim as padim_module

    n = 7
    train = _fs(n, 9)
    model = (LowRankPadim if low_rank else Padim)(layers=(1, 2), d=d, seed=0).fit(train)
    assert low_rank or model.form == ("cholesky" if d == 5 else "low-rank")
    maps, scores = model.score_left_out(train, 16)
    monkeypatch.setattr(padim_module, "EPS", EPS * (n - 1) / (n - 2))
    for i in range(n):
        others = [j for j in range(n) if j != i]
        part = FeatureSet(
            [], {layer: t[others] for layer, t in train.layers.items()}, None, train.images[others], []
        )
        alone = FeatureSet(
            [], {layer: t[[i]] for layer, t in train.layers.items()}, None, train.images[[i]], []
        )
        expect_map, expect_score = Padim(layers=(1, 2), d=d, seed=0).fit(part).score(alone, 16)
        # the low-rank forms' float32 products, amplified near h's bound
        tolerance = 1e-3 if low_rank or d == 7 else 1e-4
        np.testing.assert_allclose(maps[i], expect_map[0], rtol=tolerance, atol=1e-5)
        assert scores[i] == pytest.approx(float(expect_score[0]), rel=tolerance)
