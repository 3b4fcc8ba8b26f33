"""End to end on real MVTec AD images (../shared/data/mvtec_ad_subset) with the real ImageNet ResNet-50.

These run in CI, where ../shared sits beside the checkout; elsewhere they skip with the reason.
The floors are well below what a careful run gives (about 0.99 / 0.74 SPADE, 0.99 / 0.65 PaDiM),
and far above what random weights reach.
"""

import json

import numpy as np
import pytest

from spadim.cli import main
from spadim.data import Preprocess, load_class, load_images, load_masks
from spadim.metrics import pixel_aupr, pixel_auroc

from conftest import CAFFE_WEIGHTS, SUBSET

pytestmark = pytest.mark.skipif(not (CAFFE_WEIGHTS.is_file() and (SUBSET / "hazelnut").is_dir()),
                                reason="../shared (real weights and MVTec subset) is not beside this checkout")
REAL = ["--arch", "resnet50_caffe", "--weights", str(CAFFE_WEIGHTS)]
HAZELNUT = SUBSET / "hazelnut"


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    out = tmp_path_factory.mktemp("real") / "eval"
    assert main(["evaluate", str(HAZELNUT), "--out", str(out), "--examples", "1", *REAL]) == 0
    return {r["method"]: r for r in json.loads((out / "results.json").read_text())["rows"] if r["class"] == "hazelnut"}


def test_hazelnut_metrics_with_real_weights(evaluated):
    for method in ("spade", "padim"):
        row = evaluated[method]
        assert row["pixel_auroc"] >= 0.97, (method, row)
        assert row["pixel_aupr"] >= 0.60, (method, row)


@pytest.mark.parametrize("method", ["spade", "padim"])
def test_fit_save_load_predict_reproduces_evaluate(method, evaluated, tmp_path):
    model = tmp_path / f"{method}.pt"
    assert main(["fit", str(HAZELNUT), "--method", method, "--out", str(model), *REAL]) == 0
    out = tmp_path / "pred"
    folders = sorted(p for p in (HAZELNUT / "test").iterdir())
    assert main(["predict", str(model), *map(str, folders), "--out", str(out), "--weights", str(CAFFE_WEIGHTS)]) == 0
    saved = np.load(out / "maps.npz")
    data = load_class(HAZELNUT)
    order = [list(saved["paths"]).index(str(p)) for p in data.test]
    maps = saved["maps"][order]
    masks = load_masks(data, Preprocess(), load_images(data.test, Preprocess())[1])
    # the saved model gives evaluate's maps: the same pixel metrics to 1e-6
    assert pixel_auroc(maps, masks) == pytest.approx(evaluated[method]["pixel_auroc"], abs=1e-6)
    assert pixel_aupr(maps, masks) == pytest.approx(evaluated[method]["pixel_aupr"], abs=1e-6)
