"""``spadim update`` through each method's own update(): the grown model scores as a fit on all images."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from spadim.cli import main
from spadim.data.mvtec import list_images, load_class, load_images
from spadim.inspect import Inspector
from spadim.inspect.versions import list_versions

from conftest import FAST


@pytest.mark.parametrize("method,layers", [("spade", "1,2,3"), ("padim", "1,2,3"), ("patchcore", "2,3")])
def test_update_grows_the_model_as_a_fit_on_all_images(method, layers, tiny_root, tmp_path, capsys):
    good = list_images(tiny_root / "nut" / "train" / "good")
    first, second = tmp_path / "first", tmp_path / "second"
    for folder, paths in ((first, good[:4]), (second, good[4:])):
        folder.mkdir()
        for path in paths:
            shutil.copy(path, folder / path.name)
    flags = ["--method", method, "--layers", layers, *FAST]
    grown, full = tmp_path / "grown.pt", tmp_path / "full.pt"
    assert main(["fit", str(first), "--out", str(grown), *flags]) == 0
    assert main(["fit", str(tiny_root / "nut" / "train" / "good"), "--out", str(full), *flags]) == 0
    before = Inspector.load(grown, weights="random").method
    capsys.readouterr()
    assert main(["update", str(grown), str(second), "--keep-apart", "--weights", "random"]) == 0
    said = capsys.readouterr().out
    frames = load_images(load_class(tiny_root / "nut").test, Inspector.load(full).pre)[0]
    maps, scores, _ = Inspector.load(grown, weights="random").score_frames(frames)
    expect, expect_scores, _ = Inspector.load(full, weights="random").score_frames(frames)
    after = Inspector.load(grown, weights="random")
    assert after.meta["fit"]["images"] == 6
    # 4 leave-one-out statistics of 3-image models and 2 of the 4-image model: all at least half of 6
    assert after.calibration.n_deciding == 6 and "resting on 6 of 6 held-out statistics" in said
    report = Path(f"{grown}.report/index.html").read_text()  # the fit report says the level moved
    entry = list_versions(grown)[-1]
    assert f"version {entry['id']}" in report and "n = 6" in report
    assert f"<b>{after.calibration.region_threshold:.4g}</b> at far" in report
    if method == "patchcore":  # the coreset continued over the 2 new images' patches (8 x 8 each at 64 px)
        assert len(after.method.bank) == len(before.bank) + int(0.1 * 2 * 64) and after.method.n_train == 6
        assert np.isfinite(maps).all() and np.isfinite(scores).all()
        return
    np.testing.assert_allclose(maps, expect, rtol=1e-3, atol=1e-3 * np.abs(expect).max())
    np.testing.assert_allclose(scores, expect_scores, rtol=1e-3)
