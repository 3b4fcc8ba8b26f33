"""The region statistic against scikit-image's grey-level area opening, and the decision it implies."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage.morphology import area_opening

from spadim.decision import find_regions, has_region, min_area_pixels, region_score


def _maps(seed: int, count: int):
    rng = np.random.default_rng(seed)
    for trial in range(count):
        height, width = (int(v) for v in rng.integers(4, 40, 2))
        score_map = cv2.GaussianBlur(
            rng.random((height, width)).astype(np.float32), (0, 0), rng.uniform(0.3, 3)
        )
        if trial % 3 == 0:  # ties: many pixels share a value
            score_map = (np.round(score_map * 20) / 20).astype(np.float32)
        yield score_map, int(rng.integers(1, height * width))


@pytest.mark.parametrize("seed", [0, 1])
def test_region_score_is_the_maximum_of_the_area_opening(seed):
    for score_map, area in _maps(seed, 150):
        expected = float(area_opening(score_map, area_threshold=area, connectivity=2).max())
        assert region_score(score_map, area) == pytest.approx(expected, abs=0)


def test_a_region_exists_exactly_below_the_region_score():
    for score_map, area in _maps(7, 120):
        level = region_score(score_map, area)
        below = float(np.nextafter(np.float32(level), np.float32(-np.inf)))
        assert has_region(score_map, below, area) and not has_region(score_map, level, area)
        for threshold in np.quantile(score_map, [0.1, 0.5, 0.9, 0.99]):
            assert has_region(score_map, threshold, area) == bool(find_regions(score_map, threshold, area)[0])
            assert has_region(score_map, threshold, area) == (threshold < level)


def test_a_large_map_is_exact_too():
    rng = np.random.default_rng(11)
    score_map = cv2.GaussianBlur(rng.random((600, 500)).astype(np.float32), (0, 0), 6)
    area = min_area_pixels(0.001, 600, 500)
    assert area == 300
    assert region_score(score_map, area) == float(area_opening(score_map, area, connectivity=2).max())


def test_no_region_can_reach_an_area_larger_than_the_map():
    assert region_score(np.ones((3, 3), np.float32), 10) == float("-inf")
