"""PatchCore's shared-work layer-subset comparison (``--layers auto``) against direct computations."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from spadim.methods.maps import upsample_blur
import torch
from scipy.spatial.distance import cdist
from sklearn.metrics import average_precision_score

import spadim.methods.coreset
import spadim.methods.patchcore
from spadim.features.extractor import ALL_COMBOS, FeatureSet, combo_name
from spadim.methods import patchcore_subsets
from spadim.methods.patchcore import PatchCore, embed_patches
from spadim.methods.patchcore_subsets import (
    RerankedSearch,
    bank_embeddings,
    layer_features,
    subset_embeddings,
)
from spadim.run import layerchoice
from spadim.features.config import BackboneConfig
from spadim.methods import PatchCoreConfig
from spadim.run.pipeline import AUTO, Settings, make_extractor

CROP = 64


def _fs(n, seed, c=(6, 8, 12, 10), hw=(8, 4, 2, 1)):
    g = torch.Generator().manual_seed(seed)
    layers = {
        layer: torch.randn(n, c[layer - 1], hw[layer - 1], hw[layer - 1], generator=g)
        for layer in (1, 2, 3, 4)
    }
    return FeatureSet([], layers, None, np.zeros((n, 1, 1, 3), np.uint8), [])


@pytest.mark.parametrize("dim", [16, 9])  # 16: per-layer shares of the last pooling; 9: bins span layers
def test_subset_embeddings_are_patchcores_own_embeddings(dim):
    fs = _fs(5, 0)
    pooled = layer_features(fs, (1, 2, 3, 4), dim)
    for combo in ALL_COMBOS:
        shared = torch.cat(
            [torch.cat(blocks, 1) for blocks in subset_embeddings(pooled, combo, dim, batch=2)]
        )
        own, _ = embed_patches(fs, combo, dim, dim)
        torch.testing.assert_close(shared, own, rtol=1e-6, atol=1e-6, msg=str(combo))
        rows = torch.tensor([0, 5, 63, 64, 200, len(own) - 1]).remainder(len(own)).unique()
        torch.testing.assert_close(bank_embeddings(pooled, combo, rows, dim), own[rows], rtol=1e-6, atol=1e-6)


def test_reranked_search_is_exact_when_every_row_is_a_candidate_and_never_below_the_nearest():
    g = torch.Generator().manual_seed(3)
    spread = torch.logspace(1, -2, 40)  # a few strong directions, as patch features have
    bank = torch.randn(300, 40, generator=g) * spread
    queries = torch.randn(500, 40, generator=g) * spread
    nearest = cdist(queries.double().numpy(), bank.double().numpy(), "sqeuclidean").min(1)
    exact = RerankedSearch(bank, dims=4, rerank=len(bank)).squared([queries]).double().numpy()
    np.testing.assert_allclose(exact, nearest, rtol=1e-5)
    split = RerankedSearch(bank, dims=4, rerank=len(bank)).squared([queries[:, :15], queries[:, 15:]])
    np.testing.assert_allclose(split.double().numpy(), nearest, rtol=1e-5)  # queries as column blocks
    lists = round(len(bank) ** 0.5)  # the inverted file, every list probed, every row a candidate
    probed = RerankedSearch(bank, dims=4, rerank=len(bank), probes=lists, scan_below=64).squared([queries])
    np.testing.assert_allclose(probed.double().numpy(), nearest, rtol=1e-5)
    few = RerankedSearch(bank, dims=6, rerank=4).squared([queries]).double().numpy()
    assert np.all(few >= nearest * (1 - 1e-5))  # a distance to some bank row: never below the nearest
    assert np.mean(np.isclose(few, nearest, rtol=1e-5)) > 0.8  # and mostly the nearest itself


# ---------------------------------------------------------------- subset AUPRs on random resnet18 features
def _independent_auprs(folds, s: Settings) -> dict[str, float]:
    """Per subset: PatchCore's embedding of the fit and validation images, the seeded 10% sample of the
    fit patches as the bank, brute-force float64 nearest distances, the map step, sklearn's average
    precision."""
    fit, val = folds.fold(0)
    masks = folds.masks[0]
    out = {}
    for combo in ALL_COMBOS:
        config = s.config("patchcore")
        fit_emb, grid = embed_patches(fit, combo, config.dim, config.target_dim)
        val_emb, _ = embed_patches(val, combo, config.dim, config.target_dim)
        rows = torch.randperm(len(fit_emb), generator=torch.Generator().manual_seed(s.seed))
        bank = fit_emb[rows[: int(config.coreset * len(fit_emb))]]
        squared = cdist(val_emb.double().numpy(), bank.double().numpy(), "sqeuclidean").min(1)
        grids = torch.from_numpy(squared.reshape(len(val), *grid)).float()
        # the map step as PatchCore runs it (tested against interpolate + scipy's blur in test_maps.py):
        # near-flat maps (layer 4 alone is 2 x 2 here) reorder their pixels under 1e-7 differences
        maps = upsample_blur(grids, CROP)
        out[combo_name(combo)] = average_precision_score(masks.ravel(), maps.ravel())
    return out


@pytest.fixture(scope="module")
def folds(tiny_root):
    s = Settings(
        backbone=BackboneConfig(arch="resnet18", weights="random", resize=72, crop=CROP),
        configs={"patchcore": PatchCoreConfig(dim=64, target_dim=64)},
        layers=AUTO,
    )
    fx = make_extractor(s, None, ["patchcore"])
    train = layerchoice.training_features(fx, tiny_root / "nut")
    parts, _ = layerchoice.validation_folds(fx, train, s.seed)
    return parts, s


def test_patchcore_subset_auprs_equal_an_independent_computation(folds, monkeypatch):
    parts, s = folds
    expected = _independent_auprs(parts, s)
    exact = functools.partial(patchcore_subsets.subset_grids, rerank=10**9)  # every bank row a candidate
    monkeypatch.setattr(patchcore_subsets, "subset_grids", exact)
    # AUPR of near-flat maps (layer 4 alone is 2 x 2 here) moves by up to 1e-3 under float32 rounding
    assert layerchoice.subset_auprs("patchcore", parts, s) == pytest.approx(expected, abs=2e-3)
    monkeypatch.undo()
    default = layerchoice.subset_auprs("patchcore", parts, s)  # the candidate search as run
    assert default == pytest.approx(expected, abs=0.01)


def test_no_coreset_runs_while_comparing(folds, monkeypatch):
    parts, s = folds

    def refuse(*args, **kwargs):
        raise AssertionError("the coreset ran while comparing subsets")

    monkeypatch.setattr(spadim.methods.coreset, "greedy_coreset", refuse)
    monkeypatch.setattr(spadim.methods.patchcore, "greedy_coreset", refuse)
    ticks = []
    auprs = layerchoice.subset_auprs("patchcore", parts, s, tick=lambda: ticks.append(1))
    assert set(auprs) == {combo_name(c) for c in ALL_COMBOS} and len(ticks) == len(ALL_COMBOS)
    with pytest.raises(AssertionError, match="coreset ran"):  # the guard itself works
        PatchCore(layers=(1,), coreset=0.5).fit(parts.train)
