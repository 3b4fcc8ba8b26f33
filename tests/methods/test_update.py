"""update(): a fitted model grown by new images against a fit on all the images at once."""

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from spadim.errors import SpadimError
from spadim.features.extractor import FeatureSet
from spadim.methods import Padim, PatchCore, Spade
from spadim.methods.nearest import TorchSearch

from conftest import CAFFE_WEIGHTS, SUBSET
from test_methods import _fs


def _parts(fs: FeatureSet, *bounds: int) -> list[FeatureSet]:
    edges = [0, *bounds, len(fs)]
    return [fs.rows(a, b) for a, b in zip(edges[:-1], edges[1:])]


def test_spade_update_appends_to_the_gallery():
    train, test = _fs(9, 0), _fs(3, 1)
    full = Spade(layers=(1, 2, 3), k=3, search=TorchSearch()).fit(train)
    first, *rest = _parts(train, 4, 7)
    grown = Spade(layers=(1, 2, 3), k=3, search=TorchSearch()).fit(first)
    before, _ = grown.score(test, 16)
    for part in rest:
        grown.update(part)
    (maps, scores), (expect, expect_scores) = grown.score(test, 16), full.score(test, 16)
    assert not np.allclose(before, expect)  # the update changed the answers
    np.testing.assert_allclose(maps, expect, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(scores, expect_scores, rtol=1e-6)


@pytest.mark.parametrize(
    "d,max_rank,n_first,n_all,forms",
    [
        (12, 64, 4, 9, ("low-rank", "low-rank")),  # rank 3 -> 8, both below d
        (6, 64, 4, 12, ("low-rank", "cholesky")),  # rank 3 < d = 6, then 11 >= d: the full form
        (6, 64, 8, 12, ("cholesky", "cholesky")),
        (12, 4, 4, 9, ("low-rank", "cholesky")),  # rank 8 above max_rank
    ],
)
def test_padim_update_equals_a_fit_on_all_images(d, max_rank, n_first, n_all, forms):
    """Exact: the scatter rebuilt from the stored form, the new images added, refactored."""
    train, test = _fs(n_all, 2), _fs(3, 3)
    options = {"layers": (1, 2, 3), "d": d, "seed": 5, "batch": 3, "max_rank": max_rank}
    full = Padim(**options).fit(train)
    first, second, third = _parts(train, n_first, (n_first + n_all) // 2)
    grown = Padim(**options).fit(first)
    assert grown.form == forms[0]
    grown.update(second).update(third)
    assert grown.form == full.form == forms[1] and grown.n_train == n_all
    (maps, scores), (expect, expect_scores) = grown.score(test, 16), full.score(test, 16)
    np.testing.assert_allclose(maps, expect, rtol=1e-3, atol=1e-3 * np.abs(expect).max())
    np.testing.assert_allclose(scores, expect_scores, rtol=1e-3)
    loaded = Padim.from_state(grown.state())  # the count travels in the file: it can grow again
    loaded.update(_fs(2, 4))
    assert loaded.n_train == n_all + 2


def test_padim_update_refuses_a_model_that_does_not_know_its_image_count():
    model = Padim(layers=(1, 2), d=5).fit(_fs(6, 0))
    state = model.state()
    state["config"].pop("n_train")  # as written by an older spadim
    with pytest.raises(SpadimError, match="fit it again"):
        Padim.from_state(state).update(_fs(2, 1))


def test_patchcore_update_continues_the_coreset_from_the_bank():
    """coreset = 1 keeps every patch: the grown bank is the full fit's, row for row."""
    train, test = _fs(6, 5, c=(3, 40, 60, 5)), _fs(2, 6, c=(3, 40, 60, 5))
    options = {"layers": (2, 3), "dim": 200, "target_dim": 150, "seed": 2}
    full = PatchCore(coreset=1.0, **options).fit(train)
    first, second = _parts(train, 4)
    grown = PatchCore(coreset=1.0, **options).fit(first).update(second)
    assert torch.equal(grown.bank, full.bank) and torch.equal(grown.bank_image, full.bank_image)
    sampled = PatchCore(coreset=0.25, **options).fit(first)
    kept = len(sampled.bank)
    sampled.update(second)
    assert len(sampled.bank) == kept + int(0.25 * 2 * 16)  # 2 images of 4 x 4 patches
    assert np.isfinite(sampled.score(test, 16)[0]).all()


@pytest.mark.skipif(
    not (CAFFE_WEIGHTS.is_file() and (SUBSET / "hazelnut").is_dir()),
    reason="../shared (real weights and MVTec subset) is not beside this checkout",
)
def test_patchcore_update_ranks_real_hazelnut_as_a_full_fit_does():
    """On real features a grown coreset scores test images as a fit on all 30 images does: image scores in
    the same order (Spearman >= 0.99) and pixel maps as close to it as a refit with another seed is
    (0.975 here: the coreset's own sampling noise)."""
    from spadim.data.mvtec import load_class
    from spadim.features.config import BackboneConfig
    from spadim.run.pipeline import Settings, make_extractor

    s = Settings(
        backbone=BackboneConfig(arch="resnet50_caffe", weights=str(CAFFE_WEIGHTS)),
        layers=(2, 3),
        layers_given=True,
    )
    data = load_class(Path(SUBSET / "hazelnut"))
    fx = make_extractor(s, methods=["patchcore"], layer_sets=[(2, 3)])
    train, test = fx(data.train[:30], "train"), fx(data.test[::6], "test")
    full = PatchCore(layers=(2, 3)).fit(train)
    grown = PatchCore(layers=(2, 3)).fit(train.rows(0, 20)).update(train.rows(20, 30))
    reseeded = PatchCore(layers=(2, 3), seed=1).fit(train)
    (maps, scores), (expect, expect_scores) = (
        grown.score(test, s.backbone.crop),
        full.score(test, s.backbone.crop),
    )
    assert spearmanr(scores, expect_scores)[0] >= 0.99
    floor = spearmanr(reseeded.score(test, s.backbone.crop)[0].ravel(), expect.ravel())[0]
    assert spearmanr(maps.ravel(), expect.ravel())[0] >= floor - 0.005


def test_padim_low_rank_update_grows_in_the_span_without_a_d_by_d_scatter(monkeypatch):
    """While the form stays low-rank, an update neither rebuilds nor refactors the held images' scatter
    (the d x d paths raise here), and its Gaussians equal a fit on all images to float32 rounding."""
    from spadim.methods import gaussians

    train, test = _fs(9, 7), _fs(3, 8)
    options = {"layers": (1, 2, 3), "d": 12, "seed": 3, "batch": 4}
    full = Padim(**options).fit(train)
    grown = Padim(**options).fit(train.rows(0, 5))

    def forbidden(*args, **kwargs):
        raise AssertionError("a d x d scatter was built")

    monkeypatch.setattr(gaussians.GaussianAccumulator, "from_gaussians", forbidden)
    monkeypatch.setattr(gaussians.GaussianAccumulator, "low_rank_", forbidden)
    grown.update(train.rows(5, 7)).update(train.rows(7, 9))
    assert grown.form == "low-rank" and grown.n_train == 9 and grown.basis.shape == full.basis.shape
    np.testing.assert_allclose(grown.mean, full.mean, rtol=1e-5, atol=1e-6)
    expect = full.distance_grid(test)
    np.testing.assert_allclose(grown.distance_grid(test), expect, rtol=1e-4, atol=1e-5 * float(expect.max()))


def test_a_spade_file_keeps_the_gallery_rows_as_they_are_held(tmp_path):
    """The gallery is saved in the [N, h, w, C] order the search reads (no transpose on save or load), a
    row view of a larger buffer is saved alone, and a file of NCHW tensors (older spadim) still loads."""
    import io

    train, test = _fs(6, 0), _fs(2, 1)
    model = Spade(layers=(1, 2, 3), k=3, search=TorchSearch()).fit(train)
    expect, _ = model.score(test, 16)
    path = tmp_path / "spade.pt"
    torch.save(model.state(), path)
    state = torch.load(path, weights_only=True)
    assert state["tensors"]["layer1"].shape == train.layers[1].shape  # logical [N, C, h, w], as before
    loaded = Spade.from_state(state)
    for layer, rows in loaded.rows.items():
        assert rows.is_contiguous() and rows.data_ptr() == state["tensors"][f"layer{layer}"].data_ptr()
    np.testing.assert_array_equal(loaded.score(test, 16)[0], expect)
    # older files hold contiguous NCHW tensors: they load to the same rows
    older = {**state, "tensors": {key: value.contiguous() for key, value in state["tensors"].items()}}
    np.testing.assert_array_equal(Spade.from_state(older).score(test, 16)[0], expect)
    # rows that are a view of a larger buffer are saved alone, not with the whole buffer
    model.rows = {layer: torch.cat([rows, rows])[: len(rows)] for layer, rows in model.rows.items()}
    alone, whole = io.BytesIO(), io.BytesIO()
    torch.save(model.state(), alone)
    torch.save({layer: rows for layer, rows in model.rows.items()}, whole)
    expected_bytes = sum(rows.numel() * 4 for rows in model.rows.values())
    assert len(alone.getvalue()) < expected_bytes * 1.5 < len(whole.getvalue())
