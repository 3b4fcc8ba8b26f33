"""Defect regions: connected components of the thresholded anomaly map, in original-image pixels.

Components smaller than a minimum area are dropped (a single hot pixel is not a defect a line acts
on); the defect mask is the union of the kept components, so mask and region list always agree.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np
from scipy import ndimage


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
