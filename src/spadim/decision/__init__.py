"""From anomaly maps to what a line acts on: defect regions and the statistic that decides OK/defect.

An image is a defect exactly when its map has a region (a connected component above the region
level with at least the minimum area); :func:`region_score` is the level at which that stops being
true, so calibrating its quantile on normal images calibrates the decision and the regions together.
"""

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
    "DEFAULT_MIN_AREA",
    "Region",
    "Verdict",
    "find_regions",
    "has_region",
    "judge",
    "min_area_pixels",
    "region_score",
]
