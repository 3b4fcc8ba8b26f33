"""The synthetic-defect generator: exact masks, inside the frame and the allowed region, seeded."""

import numpy as np
import pytest

from spadim.data.defects import KINDS, DefectConfig, make_defects


def _normals(n=8, size=64, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(60, 200, (n, 1, 1, 3))
    texture = rng.integers(-20, 20, (n, size, size, 3))
    return np.clip(base + texture, 0, 255).astype(np.uint8)


def test_masks_are_exactly_the_changed_pixels():
    images = _normals(12)
    out, masks, kinds = make_defects(images, _normals(seed=1), seed=3, cfg=DefectConfig(kinds=KINDS))
    assert out.shape == images.shape and out.dtype == np.uint8 and masks.dtype == bool
    assert set(kinds) == set(KINDS)
    changed = (out != images).any(axis=3)
    assert np.array_equal(changed, masks)
    assert all(m.sum() >= 4 for m in masks)


def test_defects_stay_inside_the_region():
    images = _normals(12)
    regions = np.zeros(images.shape[:3], bool)
    regions[:, 20:44, 16:40] = True
    out, masks, _ = make_defects(images, images, seed=5, regions=regions, cfg=DefectConfig(kinds=KINDS))
    assert masks.any(axis=(1, 2)).all()
    assert not (masks & ~regions).any()
    assert np.array_equal(out[~regions], images[~regions])  # nothing outside the region was touched


def test_seeded_and_empty_region_gives_no_defect():
    images = _normals(4)
    a = make_defects(images, images, seed=7)
    b = make_defects(images, images, seed=7)
    c = make_defects(images, images, seed=8)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert not np.array_equal(a[1], c[1])
    out, masks, _ = make_defects(images, images, seed=1, regions=np.zeros(images.shape[:3], bool))
    assert not masks.any() and np.array_equal(out, images)


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown defect kind"):
        make_defects(_normals(1), _normals(1), seed=0, cfg=DefectConfig(kinds=("melt",)))
