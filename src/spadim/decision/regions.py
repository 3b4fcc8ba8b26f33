"""Defect regions: connected components of the thresholded anomaly map, in original-image pixels.

Components smaller than a minimum area are dropped (a single hot pixel is not a defect a line acts
on); the defect mask is the union of the kept components, so mask and region list always agree.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np
from scipy import ndimage

DEFAULT_MIN_AREA = 0.001  # smallest region kept, as a fraction of the image area


@dataclass
class Region:
    x: int  # left column of the bounding box
    y: int  # top row
    width: int
    height: int
    area: int  # pixels of the component
    peak: float  # largest raw score inside
    peak_normalized: float | None

    def to_json(self) -> dict:
        return asdict(self)


def find_regions(
    score_map: np.ndarray, threshold: float, min_area: int, normalize=None
) -> tuple[list[Region], np.ndarray]:
    """(regions sorted by peak, highest first; bool mask of their pixels). 8-connectivity."""
    above = (score_map > threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(above, connectivity=8)
    keep = [i for i in range(1, count) if stats[i, cv2.CC_STAT_AREA] >= min_area]
    if not keep:
        return [], np.zeros(score_map.shape, bool)
    peaks = ndimage.maximum(score_map, labels, keep)
    regions = []
    for i, peak in zip(keep, np.atleast_1d(peaks)):
        left, top, width, height, area = (int(v) for v in stats[i, :5])
        peak = float(peak)
        regions.append(
            Region(
                left, top, width, height, area, peak, None if normalize is None else float(normalize(peak))
            )
        )
    regions.sort(key=lambda r: -r.peak)
    mask = np.isin(labels, keep)
    return regions, mask


def has_region(score_map: np.ndarray, threshold: float, min_area: int) -> bool:
    """Whether some 8-connected component of ``score_map > threshold`` has at least ``min_area`` pixels."""
    above = (score_map > threshold).astype(np.uint8)
    if int(above.sum()) < min_area:
        return False
    count, _, stats, _ = cv2.connectedComponentsWithStats(above, connectivity=8)
    return bool(count > 1 and stats[1:, cv2.CC_STAT_AREA].max() >= min_area)


def region_score(score_map: np.ndarray, min_area: int) -> float:
    """The largest level at which a region of ``min_area`` pixels survives: ``has_region(map, t, min_area)``
    exactly when ``t < region_score``. It is the maximum of the map's grey-level area opening
    (8-connectivity), the statistic whose conformal quantile makes the OK/defect rule agree with the regions.

    Exact: the answer is one of the map's values. A float bisection brackets it (about 14 labelings),
    then the few map values inside the bracket are searched, so a 1-megapixel map costs ~20 labelings,
    not a sort of a million values.
    """
    values = np.asarray(score_map, np.float32)
    min_area = max(1, int(min_area))
    if min_area > values.size:
        return float("-inf")
    top = float(values.max())
    # has_region(map, low) is true; has_region(map, high) false. The min_area-th largest value bounds it.
    high = top
    low = float(np.partition(values.ravel(), values.size - min_area)[values.size - min_area])
    low = float(np.nextafter(np.float32(low), np.float32(-np.inf)))
    if not has_region(values, low, min_area):
        low = float(np.nextafter(np.float32(values.min()), np.float32(-np.inf)))  # one region = whole map
        if not has_region(values, low, min_area):
            return float("-inf")
    for _ in range(14):
        middle = float(np.float32(0.5 * (low + high)))
        if middle <= low or middle >= high:
            break
        if has_region(values, middle, min_area):
            low = middle
        else:
            high = middle
    # exact: the smallest map value v in (low, high] with has_region(map, v) false is the answer
    candidates = np.unique(values[(values > low) & (values <= high)])
    first, last = 0, len(candidates) - 1  # has_region at candidates[last] (<= high) is false
    while first < last:
        middle = (first + last) // 2
        if has_region(values, float(candidates[middle]), min_area):
            first = middle + 1
        else:
            last = middle
    return float(candidates[first])


def min_area_pixels(fraction: float, height: int, width: int) -> int:
    """The minimum region area in pixels of an image: ``fraction`` of its area, at least one pixel."""
    return max(1, round(fraction * height * width))
