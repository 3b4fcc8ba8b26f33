"""The Python API as docs/python-api.md shows it: every block runs, in order, on real hazelnut images;
the same prediction comes back from a path, an array and a saved and reloaded inspector."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import CAFFE_WEIGHTS, SUBSET

from spadim import Inspector, PaDiM, PatchCore, SPADE, SpadimError

ROOT = Path(__file__).resolve().parents[1]
HAZELNUT = SUBSET / "hazelnut"
REAL = pytest.mark.skipif(
    not (CAFFE_WEIGHTS.is_file() and HAZELNUT.is_dir()),
    reason="../shared (real weights and MVTec subset) is not beside this checkout",
)


@REAL
def test_every_python_example_of_the_api_page_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "python-api.md").read_text(), flags=re.S)
    assert len(blocks) >= 2
    train = sorted((HAZELNUT / "train" / "good").glob("*.png"))
    for folder, paths in (("good_parts", train[:16]), ("more_good", train[16:20])):
        (tmp_path / folder).mkdir()
        for path in paths:
            (tmp_path / folder / path.name).symlink_to(path)
    (tmp_path / "part.png").symlink_to(HAZELNUT / "test" / "crack" / "000.png")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPADIM_WEIGHTS", str(CAFFE_WEIGHTS.parent))
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/python-api.md", "exec"), namespace)  # noqa: S102 - the page's own code
    inspector, grown = namespace["inspector"], namespace["grown"]
    # four new images: each joined, or was set apart by the audit (and said so)
    assert sorted(grown["added"] + grown["set_apart"]) == [f"more_good/{p.name}" for p in train[16:20]]
    assert inspector.meta["fit"]["images"] == 16 + len(grown["added"]) >= 17
    assert inspector.method.layers != "auto" and set(inspector.method.layers) <= {1, 2, 3, 4}
    assert (tmp_path / "bolts.pt").is_file() and (tmp_path / "bolts.pt.versions" / "log.jsonl").is_file()


@REAL
def test_path_array_and_reloaded_inspector_agree(tmp_path):
    from spadim.data.mvtec import read_rgb

    train = sorted((HAZELNUT / "train" / "good").glob("*.png"))[:10]
    tests = sorted((HAZELNUT / "test").rglob("*.png"))[:4]
    inspector = Inspector(
        PaDiM(layers=(1, 2, 3)), backbone="resnet50_caffe", weights=str(CAFFE_WEIGHTS), far=0.1
    )
    assert inspector.fit(train) is inspector
    from_paths = inspector.predict(tests)
    from_arrays = inspector.predict([read_rgb(p) for p in tests])
    inspector.save(tmp_path / "m.pt")
    reloaded = Inspector.load(tmp_path / "m.pt", weights=str(CAFFE_WEIGHTS)).predict(tests)
    for a, b, c in zip(from_paths, from_arrays, reloaded):
        assert a.decision == b.decision == c.decision
        assert (
            a.region_score
            == pytest.approx(b.region_score, rel=1e-6)
            == pytest.approx(c.region_score, rel=1e-5)
        )
        np.testing.assert_allclose(a.anomaly_map, c.anomaly_map, rtol=1e-4, atol=1e-4)
        assert a.region_score > inspector.calibration.region_threshold if a.decision == "defect" else True
    # fitting on arrays gives the model fitting on the files gives
    arrays = Inspector(
        PaDiM(layers=(1, 2, 3)), backbone="resnet50_caffe", weights=str(CAFFE_WEIGHTS), far=0.1
    )
    arrays.fit([read_rgb(p) for p in train])
    assert arrays.calibration.region_threshold == pytest.approx(
        inspector.calibration.region_threshold, rel=1e-5
    )


def test_options_are_keyword_only_and_errors_speak_the_library(tiny_root):
    with pytest.raises(TypeError):
        Inspector(PatchCore(), "resnet18")  # the backbone is a keyword option
    with pytest.raises(SpadimError, match="far"):
        Inspector(SPADE(), far=2.0)
    with pytest.raises(SpadimError, match="coreset"):
        PatchCore(coreset=0)
    with pytest.raises(SpadimError, match="not fitted"):
        Inspector(SPADE(), backbone="resnet18", weights="random").predict(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(SpadimError, match="give a folder"):
        Inspector(SPADE(), backbone="resnet18", weights="random").fit([1, 2, 3])
