"""End to end on real MVTec AD images (../shared/data/mvtec_ad_subset) with the real ImageNet ResNet-50.

These run in CI, where ../shared sits beside the checkout; elsewhere they skip with the reason.
The floors are well below what a careful run gives (about 0.99 / 0.74 SPADE, 0.99 / 0.65 PaDiM),
and far above what random weights reach.
"""

import json

import numpy as np
import pytest

from spadim.cli import main
from spadim.data.mvtec import Preprocess, load_class, load_images, load_masks
from spadim.metrics.ranking import pixel_aupr, pixel_auroc

from conftest import CAFFE_WEIGHTS, SUBSET

pytestmark = pytest.mark.skipif(
    not (CAFFE_WEIGHTS.is_file() and (SUBSET / "hazelnut").is_dir()),
    reason="../shared (real weights and MVTec subset) is not beside this checkout",
)
REAL = ["--arch", "resnet50_caffe", "--weights", str(CAFFE_WEIGHTS)]
HAZELNUT = SUBSET / "hazelnut"


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    out = tmp_path_factory.mktemp("real") / "eval"
    assert (
        main(
            [
                "evaluate",
                str(HAZELNUT),
                "--out",
                str(out),
                "--examples",
                "1",
                "--methods",
                "spade,padim",
                "--layers",
                "1,2,3",
                *REAL,
            ]
        )
        == 0
    )
    return {
        r["method"]: r
        for r in json.loads((out / "results.json").read_text())["rows"]
        if r["class"] == "hazelnut"
    }


def test_hazelnut_metrics_with_real_weights(evaluated):
    for method in ("spade", "padim"):
        row = evaluated[method]
        assert row["pixel_auroc"] >= 0.97, (method, row)
        assert row["pixel_aupr"] >= 0.60, (method, row)


@pytest.mark.parametrize("method", ["spade", "padim"])
def test_fit_save_load_predict_reproduces_evaluate(method, evaluated, tmp_path):
    from spadim.inspect import Inspector

    model = tmp_path / f"{method}.pt"
    assert (
        main(["fit", str(HAZELNUT), "--method", method, "--layers", "1,2,3", "--out", str(model), *REAL]) == 0
    )
    data = load_class(HAZELNUT)
    whole = Preprocess(frame="whole")  # fit's and evaluate's default frame
    frames, shapes = load_images(data.test, whole)
    maps, _, _ = Inspector.load(model, weights=str(CAFFE_WEIGHTS)).score_frames(frames)
    masks = load_masks(data, whole, shapes)
    # the saved model gives evaluate's maps: the same pixel metrics to 1e-6
    assert pixel_auroc(maps, masks) == pytest.approx(evaluated[method]["pixel_auroc"], abs=1e-6)
    assert pixel_aupr(maps, masks) == pytest.approx(evaluated[method]["pixel_aupr"], abs=1e-6)
    out = tmp_path / "pred"
    folders = sorted(p for p in (HAZELNUT / "test").iterdir())
    assert (
        main(["predict", str(model), *map(str, folders), "--out", str(out), "--weights", str(CAFFE_WEIGHTS)])
        == 0
    )
    assert len((out / "predictions.csv").read_text().splitlines()) == 1 + len(data.test)
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    # on real images: defect exactly when the image has a region, and the region statistic decides it
    assert all((r["decision"] == "defect") == bool(r["regions"]) for r in records)
    assert all((r["decision"] == "defect") == (r["region_score"] > r["region_threshold"]) for r in records)
    assert all(r["defect_pixels"] == sum(region["area"] for region in r["regions"]) for r in records)


@pytest.fixture(scope="module")
def hazelnut_features():
    from spadim.features.config import BackboneConfig
    from spadim.run.pipeline import Settings, make_extractor, prepare_class

    s = Settings(backbone=BackboneConfig(arch="resnet50_caffe", weights=str(CAFFE_WEIGHTS)))
    return s, prepare_class(make_extractor(s, methods=["spade", "padim"]), HAZELNUT)


def test_padim_leave_one_out_is_the_same_in_both_forms_on_real_features(hazelnut_features):
    """A training image lies inside the low-rank form's span, where subtracting float32 norms is all error
    and the leave-one-out formula amplifies it (it once set PaDiM's region level at 5e5 on grid). Against
    the Cholesky form on real hazelnut features, layer 2 (d = 512, 49 directions), every held-out image
    score and map agrees."""
    from spadim.methods.padim import Padim

    s, run = hazelnut_features
    low = Padim(layers=(2,), d=550, seed=0).fit(run.train)
    full = Padim(layers=(2,), d=550, seed=0, max_rank=0).fit(run.train)
    assert (low.form, full.form) == ("low-rank", "cholesky")
    low_maps, low_scores = low.score_left_out(run.train, 56)
    full_maps, full_scores = full.score_left_out(run.train, 56)
    np.testing.assert_allclose(low_scores, full_scores, rtol=1e-3)
    np.testing.assert_allclose(low_maps, full_maps, rtol=1e-3, atol=1e-3 * float(np.max(full_maps)))


def test_streamed_float32_padim_equals_a_float64_reference_on_real_features(hazelnut_features):
    """The streamed float32 sums + float64 Cholesky give the reference's float64 Mahalanobis distances
    (np.cov + 0.01 I, explicit inverse) to 1e-4 on real ImageNet features, at every 31st position."""
    import torch

    from spadim.methods.padim import select_and_concat

    s, run = hazelnut_features
    padim = s.method("padim").fit(run.train)
    grid = padim.distance_grid(run.test).reshape(len(run.test), -1).numpy()
    train = select_and_concat(run.train, padim.layers, padim.idx).double().numpy()  # [N, L, d]
    test = select_and_concat(run.test, padim.layers, padim.idx).double().numpy()
    for pos in range(0, train.shape[1], 31):
        cov = np.cov(train[:, pos], rowvar=False) + 0.01 * np.eye(train.shape[2])
        diff = test[:, pos] - train[:, pos].mean(0)
        expect = np.sqrt(np.einsum("nd,de,ne->n", diff, np.linalg.inv(cov), diff))
        np.testing.assert_allclose(grid[:, pos], expect, rtol=1e-4)
    assert padim.form == "low-rank" and torch.isfinite(padim.basis).all()  # 50 images: rank 49 <= 64


def test_spade_search_equals_cdist_on_real_features(hazelnut_features):
    from scipy.spatial.distance import cdist

    s, run = hazelnut_features
    spade = s.method("spade").fit(run.train)
    _, idx = spade.neighbours(run.test)
    grids = spade.layer_grids(run.test.rows(0, 2), idx[:2])
    for layer in (1, 2, 3):
        for i in range(2):
            q = (
                run.test.layers[layer][i]
                .permute(1, 2, 0)
                .reshape(-1, run.test.layers[layer].shape[1])
                .numpy()[::5]
            )
            g = run.train.layers[layer][idx[i]].permute(0, 2, 3, 1).reshape(-1, q.shape[1]).numpy()
            found = (
                grids[layer][i].reshape(-1).numpy()[::5]
            )  # every 5th query position: scipy's cdist is slow
            np.testing.assert_allclose(found, cdist(q, g).min(1), rtol=1e-4, atol=1e-4)


def test_audit_names_a_planted_defect_and_the_level_without_it(tmp_path):
    """A cracked hazelnut filed among 30 good ones: the audit names it first, and the level it says the
    fit would have without it is within 2% of a fit on the clean folder."""
    from spadim.inspect import fit_model
    from spadim.features.config import BackboneConfig
    from spadim.run.pipeline import Settings

    good = sorted((HAZELNUT / "train" / "good").glob("*.png"))[:30]
    clean, planted = tmp_path / "clean", tmp_path / "planted"
    for folder in (clean, planted):
        folder.mkdir()
        for path in good:
            (folder / path.name).symlink_to(path)
    plant = planted / "zz_crack_000.png"
    plant.symlink_to(HAZELNUT / "test" / "crack" / "000.png")
    settings = Settings(
        backbone=BackboneConfig(arch="resnet50_caffe", weights=str(CAFFE_WEIGHTS), frame="whole")
    )
    quiet = {"say": lambda *a, **k: None}
    reference = fit_model(clean, tmp_path / "clean.pt", settings, "spade", 0.05, **quiet)["calibration"]
    fitted = fit_model(planted, tmp_path / "planted.pt", settings, "spade", 0.05, **quiet)
    first = fitted["audit"][0]
    assert first["image"] == str(plant)
    assert first["level_without_it"] == pytest.approx(reference.region_threshold, rel=0.02)
    assert fitted["calibration"].region_threshold > reference.region_threshold  # the plant had set the level
    assert (tmp_path / "planted.pt.report" / "index.html").is_file()
    # the audit file holds every image's held-out statistic: the plant's robust z follows from them
    saved = json.loads((tmp_path / "planted.pt.audit.json").read_text())
    stats = np.array(saved["region_scores"])
    assert saved["images"][-1] == str(plant) and len(stats) == 31
    assert stats[-1] == pytest.approx(first["region_score"]) and stats[-1] == stats.max()
    median = np.median(stats)
    assert first["robust_z"] == pytest.approx(
        0.6745 * (stats[-1] - median) / np.median(np.abs(stats - median))
    )
    # taking the plant out gives the clean fit: the same gallery and the same calibration
    import torch

    from spadim.inspect.audit_actions import take_out
    from spadim.run.modelfile import load_model

    result = take_out(tmp_path / "planted.pt", [plant.name], weights=str(CAFFE_WEIGHTS), **quiet)
    assert result["level_after"] == reference.region_threshold
    taken, clean_state = (
        load_model(tmp_path / "planted.pt")[0].state(),
        load_model(tmp_path / "clean.pt")[0].state(),
    )
    for key, tensor in clean_state["tensors"].items():
        assert torch.equal(taken["tensors"][key], tensor), key
