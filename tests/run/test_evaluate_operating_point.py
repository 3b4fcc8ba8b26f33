"""evaluate at the calibrated operating point: the same thresholds as a fitted model's calibration,
and metrics that agree with a recomputation from the model's own scores."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import FAST

from spadim.cli import main
from spadim.data.mvtec import Preprocess, load_class, load_images
from spadim.inspect import Inspector
from spadim.metrics.operating_point import at_threshold, best_f1


@pytest.mark.parametrize("method", ["padim", "spade"])
def test_operating_point_matches_a_fitted_models_calibration(method, tiny_root, tmp_path):
    out, model = tmp_path / "ev", tmp_path / "m.pt"
    assert (
        main(
            [
                "evaluate",
                str(tiny_root),
                "--classes",
                "nut",
                "--methods",
                method,
                "--far",
                "0.2",
                "--examples",
                "0",
                "--out",
                str(out),
                *FAST,
            ]
        )
        == 0
    )
    rows = json.loads((out / "operating_point.json").read_text())["rows"]
    row = next(r for r in rows if r["class"] == "nut")
    assert (
        main(
            [
                "fit",
                str(tiny_root / "nut"),
                "--method",
                method,
                "--far",
                "0.2",
                "--frame",
                "crop",
                "--out",
                str(model),
                *FAST,
            ]
        )
        == 0
    )
    inspector = Inspector.load(model)
    cal = inspector.calibration
    assert row["image_threshold"] == pytest.approx(cal.image_threshold, rel=1e-5)
    assert row["pixel_threshold"] == pytest.approx(cal.pixel_threshold, rel=1e-5)
    data = load_class(tiny_root / "nut")
    frames, _ = load_images(data.test, Preprocess(72, 64))
    _, scores, _ = inspector.score_frames(frames)
    labels = data.labels.astype(bool)
    expected = at_threshold(scores, labels, cal.image_threshold)
    assert row["image_f1"] == pytest.approx(expected["f1"], nan_ok=True)
    assert row["image_false_alarm_rate"] == pytest.approx(expected["false_alarm_rate"])
    assert row["oracle_image_f1"] == pytest.approx(best_f1(scores, labels)["f1"])
    assert row["oracle_image_f1"] >= (row["image_f1"] if not np.isnan(row["image_f1"]) else 0)
    assert row["pixel_f1_ratio"] == pytest.approx(row["pixel_f1"] / row["oracle_pixel_f1"])
    assert "At the operating point" in (out / "report.html").read_text()
