"""evaluate at the calibrated operating point: the same levels as a fitted model's calibration (same
frame, same method defaults), and counts that agree with the fitted model's own predictions."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import FAST

from spadim.cli import main
from spadim.data.mvtec import load_class, read_rgb
from spadim.inspect import Inspector


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
                "--out",
                str(model),
                *FAST,
            ]
        )
        == 0
    )
    inspector = Inspector.load(model)
    cal = inspector.calibration
    assert row["calibration"] == cal.how == "leave-one-out"
    assert row["region_threshold"] == pytest.approx(cal.region_threshold, rel=1e-5)
    assert row["mask_level"] == pytest.approx(cal.mask_level, rel=1e-5)
    # the fitted model's own predictions on the test images give the row's counts
    data = load_class(tiny_root / "nut")
    images = [read_rgb(p) for p in data.test]
    predictions = inspector.predict_batch(images, [str(p) for p in data.test], inspector.operating_point())
    labels = data.labels.astype(bool)
    flagged = np.array([p.decision == "defect" for p in predictions])
    assert all((p.decision == "defect") == bool(p.regions) for p in predictions)
    assert row["contradictions"] == 0
    assert row["false_alarms"] == int((flagged & ~labels).sum())
    assert row["recall"] == pytest.approx(flagged[labels].mean())
    statistic = np.array([p.region_score for p in predictions])
    assert np.array_equal(statistic > cal.region_threshold, flagged)
    # best recall with no more false alarms, by trying every threshold
    candidates = [
        t for t in np.r_[statistic, -np.inf] if ((statistic > t) & ~labels).sum() <= row["false_alarms"]
    ]
    assert row["best_recall"] == pytest.approx(max((statistic[labels] > t).mean() for t in candidates))
    assert row["best_recall"] >= row["recall"]
    assert "At the operating point" in (out / "report.html").read_text()
    json.loads((out / "operating_point.json").read_text(), parse_constant=_refuse)  # strict JSON: no NaN


def _refuse(constant):
    raise AssertionError(f"{constant} in a JSON output")
