"""The line's state from its record: false alarms among confirmed good images, drift of recent region
statistics against the calibration's, and what other levels would have caught among reviewed images.
``spadim status``, the served page and ``GET /metrics`` all read this one summary."""

from __future__ import annotations

import numpy as np

from .store import RecordStore
from .watch import ALPHA, watch_drift, watch_false_alarms, what_if

RECENT = (
    500  # the drift check looks at this many newest decisions of the model version (less confirmed defects)
)


def line_status(
    store: RecordStore,
    *,
    far: float,
    level: float,
    reference: list[float],
    model_version: str | None = None,
    levels: dict[str, float] | None = None,
    recent: int = RECENT,
    alpha: float = ALPHA,
) -> dict:
    """``reference``: the calibration's held-out region statistics; ``levels``: other region levels to
    weigh (label -> level), beside the one in force."""
    good = store.query(verdict="good", model_version=model_version)
    defects = store.query(verdict="defect", model_version=model_version)
    flagged = sum(row["decision"] == "defect" for row in good)
    false_alarms = watch_false_alarms(flagged, len(good), far, alpha)
    newest = store.query(model_version=model_version, limit=recent, newest_first=True)
    # a defect an operator confirmed is explained, not drift; undecided and unreviewed ones stay in, so a
    # drift that lifts good parts above the level is still seen
    scores = np.array(
        [row["region_score"] for row in reversed(newest) if row["verdict"] != "defect"], dtype=np.float64
    )
    drift = watch_drift(np.asarray(reference, dtype=np.float64), scores[np.isfinite(scores)], alpha)
    candidates = {"in force": level, **(levels or {})}
    rows = what_if(
        list(candidates.values()),
        np.array([row["region_score"] for row in good]),
        np.array([row["region_score"] for row in defects]),
    )
    return {
        "model_version": model_version,
        "decisions": store.count(model_version=model_version),
        "reviewed": len(good) + len(defects),
        "false_alarms": false_alarms.to_json(),
        "drift": drift.to_json(),
        "what_if": [{"label": label, **row} for label, row in zip(candidates, rows)],
        "alert": false_alarms.alert or drift.alert,
        "lines": [false_alarms.line(), drift.line()],
    }
