"""From anomaly maps to what a line acts on: defect regions, the statistic that decides OK/defect, the
level it is compared with and the audit of the images that set that level.

An image is a defect exactly when its map has a region (a connected component above the region
level with at least the minimum area); :func:`region_score` is the level at which that stops being
true, so calibrating its quantile on normal images (:mod:`.conformal`) calibrates the decision and the
regions together. :mod:`.audit` names the good images that stand apart from the others.
"""

from .audit import AUDIT_Z, audit
from .conformal import Calibration, conformal_threshold, far_interval, images_needed
from .regions import (
    DEFAULT_MIN_AREA,
    Region,
    Verdict,
    find_regions,
    has_region,
    judge,
    min_area_pixels,
    region_score,
)

__all__ = [
    "AUDIT_Z",
    "DEFAULT_MIN_AREA",
    "Calibration",
    "Region",
    "Verdict",
    "audit",
    "conformal_threshold",
    "far_interval",
    "find_regions",
    "has_region",
    "images_needed",
    "judge",
    "min_area_pixels",
    "region_score",
]
