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
    flat = values.ravel()
    # has_region at low is true (the whole map is one region above it); at high it is false (at most
    # min_area - 1 pixels lie strictly above the min_area-th largest value)
    low = float(np.nextafter(np.float32(flat.min()), np.float32(-np.inf)))
    high = float(np.partition(flat, flat.size - min_area)[flat.size - min_area])
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


@dataclass
class Verdict:
    """One image under the OK/defect rule: a defect exactly when ``regions`` is not empty."""

    region_score: float  # the level at which its last region of the minimum area disappears
    regions: list[Region]
    mask: np.ndarray  # bool: the pixels of ``regions``


def judge(
    score_map: np.ndarray, region_level: float, mask_level: float, min_area: int, normalize=None
) -> Verdict:
    """The rule ``predict``, ``serve`` and ``evaluate`` apply: a defect when ``region_score`` is above the
    region level; its regions are then drawn from ``mask_level`` (never above the region level, so the
    region that decided is among them); an OK image has none."""
    score = region_score(score_map, min_area)
    if score > region_level:
        regions, mask = find_regions(score_map, mask_level, min_area, normalize)
    else:
        regions, mask = [], np.zeros(score_map.shape, bool)
    return Verdict(score, regions, mask)


def min_area_pixels(fraction: float, height: int, width: int) -> int:
    """The minimum region area in pixels of an image: ``fraction`` of its area, at least one pixel."""
    return max(1, round(fraction * height * width))
