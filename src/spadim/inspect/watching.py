"""The watch over one model's promise, from the record (``spadim status``, the page, ``/metrics``)."""

from __future__ import annotations

from spadim.errors import SpadimError
from spadim.record import RecordStore, line_status
from .inspector import Inspector

WHAT_IF_FARS = (0.01, 0.02, 0.05, 0.1)


def model_status(inspector: Inspector, store: RecordStore, all_versions: bool = False) -> dict:
    """The record's verdicts and recent decisions against this model's calibration."""
    calibration = inspector.calibration
    if calibration is None or calibration.region_scores is None:
        raise SpadimError(
            f"model {inspector.model_path} has no region calibration to watch against: run spadim calibrate"
        )
    levels = {
        f"far {far:g}": calibration.at(far).region_threshold for far in WHAT_IF_FARS if far != calibration.far
    }
    status = line_status(
        store,
        far=calibration.far,
        level=calibration.region_threshold,
        reference=calibration.deciding_region_scores.tolist(),
        model_version=None if all_versions else inspector.model_version,
        levels=levels,
    )
    return {"model": str(inspector.model_path), "far": calibration.far, **status}
