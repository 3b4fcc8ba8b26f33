"""line_status: which records each watch reads."""

from __future__ import annotations

import numpy as np

from spadim.record import RecordStore
from spadim.record.rows import decision_row
from spadim.record.status import line_status
from spadim.record.watch import watch_drift


def _add(store: RecordStore, index: int, region_score: float, level: float) -> dict:
    prediction = {
        "image": f"part{index}.png",
        "score": region_score,
        "region_score": region_score,
        "region_threshold": level,
        "decision": "defect" if region_score > level else "ok",
        "regions": [],
    }
    row = decision_row(
        prediction,
        image_sha256=f"{index:064x}",
        model_version="v1",
        method="patchcore",
        far=0.05,
        source="predict",
    )
    return store.add(row)


def test_drift_leaves_out_confirmed_defects_and_keeps_the_rest(tmp_path):
    """A burst of defects the operator confirmed raises no drift alert; the same scores unreviewed do,
    as the drift test on those scores alone says."""
    rng = np.random.default_rng(0)
    reference = rng.normal(100, 5, 60).tolist()
    level = float(np.max(reference))
    store = RecordStore(tmp_path / "line.sqlite")
    goods = rng.normal(100, 5, 30)
    defects = np.full(6, 400.0)
    rows = [_add(store, i, float(score), level) for i, score in enumerate(goods)]
    defect_rows = [_add(store, 100 + i, float(score), level) for i, score in enumerate(defects)]
    options = {"far": 0.05, "level": level, "reference": reference, "model_version": "v1"}

    unreviewed = line_status(store, **options)
    expect = watch_drift(np.asarray(reference), np.concatenate([goods, defects]))
    assert unreviewed["drift"]["alert"] == expect.alert is True  # six defects in a row are a change

    for row in defect_rows:
        store.review(row["id"], "defect", by="operator")
    reviewed = line_status(store, **options)
    expect = watch_drift(np.asarray(reference), goods)
    assert reviewed["drift"]["alert"] == expect.alert is False
    assert reviewed["drift"]["recent"] == len(rows) == 30
