"""Tests for spadim.masks.keypoints on synthetic 224x224 scenes with a known textured object."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from spadim.errors import SpadimError
from spadim.masks.keypoints import (
    DETECTORS,
    MaskConfig,
    apply_outside_multiplier,
    available_detectors,
    detect,
    foreground_estimate,
    make_detector,
    mask_quality,
    object_mask,
    reference_features,
)

SIZE = 224
PALETTE = np.array(
    [
        (230, 200, 30),
        (20, 20, 160),
        (250, 250, 250),
        (10, 10, 10),
        (30, 170, 60),
        (200, 40, 200),
        (200, 60, 40),
    ],
    np.uint8,
)
# (centre x, centre y, rotation degrees, background noise seed): one test view, three references.
TEST_VIEW = (100, 120, 20, 1)
REF_VIEWS = [(112, 112, 0, 2), (130, 100, -35, 3), (95, 125, 60, 4)]
OTHER_TEST_VIEWS = [(80, 90, 135, 5), (140, 140, -100, 6)]


def make_patch(seed: int = 0, size: int = 96, cell: int = 12) -> np.ndarray:
    """Object texture: random-colour checker cells plus a few shapes and text (corners everywhere)."""
    rng = np.random.default_rng(seed)
    n = size // cell
    cells = rng.integers(0, len(PALETTE), (n, n))
    patch = np.kron(PALETTE[cells], np.ones((cell, cell, 1), np.uint8)).astype(np.uint8)
    for _ in range(6):
        x, y = (int(v) for v in rng.integers(10, size - 10, 2))
        cv2.circle(
            patch,
            (x, y),
            int(rng.integers(3, 8)),
            tuple(int(c) for c in PALETTE[rng.integers(len(PALETTE))]),
            -1,
        )
    cv2.putText(patch, "AX7", (10, size // 2 + 8), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (0, 0, 0), 2)
    return patch


def background(seed: int) -> np.ndarray:
    """Smooth grey gradient with mild sensor noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    grey = 120 + 20 * xx / SIZE + 10 * yy / SIZE + rng.normal(0, 1.5, (SIZE, SIZE))
    return np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)


def scene(patch: np.ndarray, view: tuple[int, int, float, int]) -> tuple[np.ndarray, np.ndarray]:
    """``patch`` rotated and pasted at a position on a plain background; returns (image, object mask)."""
    cx, cy, angle, seed = view
    ph, pw = patch.shape[:2]
    m = cv2.getRotationMatrix2D((pw / 2, ph / 2), angle, 1.0)
    m[:, 2] += np.array([cx - pw / 2, cy - ph / 2])
    warped = cv2.warpAffine(patch, m, (SIZE, SIZE), flags=cv2.INTER_LINEAR)
    obj = cv2.warpAffine(np.ones((ph, pw), np.uint8), m, (SIZE, SIZE), flags=cv2.INTER_NEAREST).astype(bool)
    img = background(seed)
    img[obj] = warped[obj]
    return img, obj


@pytest.fixture(scope="module")
def views() -> tuple[list[tuple[np.ndarray, np.ndarray]], list[np.ndarray]]:
    patch = make_patch()
    tests = [scene(patch, v) for v in [TEST_VIEW, *OTHER_TEST_VIEWS]]
    refs = [scene(patch, v)[0] for v in REF_VIEWS]
    return tests, refs


def needs(name: str) -> None:
    if name not in available_detectors():
        pytest.skip(f"{name} is not in OpenCV {cv2.__version__} (OpenCV 5 moved it to opencv-contrib)")


@pytest.mark.parametrize("name", DETECTORS)
def test_mask_covers_object_and_excludes_far_background(name: str, views) -> None:
    needs(name)
    cfg = MaskConfig(detector=name)
    tests, refs = views
    for img, obj in tests:
        res = object_mask(img, refs, cfg)
        assert res.fallback is None
        assert res.mask.dtype == bool and res.mask.shape == obj.shape
        assert res.n_matched >= cfg.min_matches and res.n_matched <= res.n_keypoints
        assert res.mask[obj].mean() >= 0.9
        dist = cv2.distanceTransform((~obj).astype(np.uint8), cv2.DIST_L2, 5)
        far = dist > cfg.radius + cfg.close + 4
        assert res.mask[far].mean() < 0.02


@pytest.mark.parametrize("name", DETECTORS)
def test_precomputed_reference_features_give_same_mask(name: str, views) -> None:
    needs(name)
    cfg = MaskConfig(detector=name, cross_check=True)
    tests, refs = views
    feats = reference_features(refs, cfg)
    assert len(feats) == cfg.n_refs
    direct = object_mask(tests[0][0], refs, cfg)
    cached = object_mask(tests[0][0], [], cfg, ref_features=feats)
    assert np.array_equal(direct.mask, cached.mask) and direct.n_matched == cached.n_matched


def test_n_refs_limits_references_used(views) -> None:
    tests, refs = views
    one = object_mask(tests[0][0], refs, MaskConfig(detector="orb", n_refs=1))
    only_first = object_mask(tests[0][0], refs[:1], MaskConfig(detector="orb", n_refs=3))
    assert one.n_matched == only_first.n_matched


def test_blank_test_image_falls_back_to_full_frame(views) -> None:
    _, refs = views
    blank = np.full((SIZE, SIZE, 3), 128, np.uint8)
    res = object_mask(blank, refs, MaskConfig(detector="orb"))
    assert res.mask.all() and res.mask.shape == (SIZE, SIZE)
    assert res.n_keypoints == 0 and res.fallback and "no orb keypoints" in res.fallback


def test_references_without_keypoints_fall_back(views) -> None:
    tests, _ = views
    blanks = [np.zeros((SIZE, SIZE, 3), np.uint8)] * 3
    res = object_mask(tests[0][0], blanks, MaskConfig(detector="orb"))
    assert res.mask.all() and res.n_keypoints > 0 and res.n_matched == 0
    assert res.fallback and "reference" in res.fallback
    assert object_mask(tests[0][0], [], MaskConfig(detector="orb")).mask.all()


def test_too_few_matches_fall_back(views) -> None:
    tests, refs = views
    res = object_mask(tests[0][0], refs, MaskConfig(detector="orb", min_matches=100_000))
    assert res.mask.all() and res.n_matched > 0
    assert res.fallback and "min_matches=100000" in res.fallback


def test_unknown_detector_raises() -> None:
    with pytest.raises(SpadimError, match="orb, akaze, brisk"):
        make_detector("sift")
    with pytest.raises(SpadimError, match="unknown detector"):
        MaskConfig(detector="surf")


def test_missing_detector_in_opencv_build_raises(monkeypatch) -> None:
    monkeypatch.delattr(cv2, "AKAZE_create", raising=False)
    monkeypatch.delattr(cv2, "xfeatures2d", raising=False)
    assert "akaze" not in available_detectors()
    with pytest.raises(SpadimError, match="opencv-contrib"):
        make_detector("akaze")


@pytest.mark.parametrize("name", DETECTORS)
def test_detect_gray_colour_and_cap(name: str, views) -> None:
    needs(name)
    img = views[0][0][0]
    det = make_detector(name)
    kps, desc = detect(img, det)
    kps_gray, _ = detect(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), det)
    assert len(kps) == len(kps_gray) == len(desc) > 20 and desc.dtype == np.uint8
    capped, capped_desc = detect(img, det, max_features=10)
    assert 0 < len(capped) <= 10 and len(capped_desc) == len(capped)
    assert detect(np.zeros((SIZE, SIZE), np.uint8), det) == ([], None)
    with pytest.raises(SpadimError, match="uint8"):
        detect(img.astype(np.float32), det)
    with pytest.raises(SpadimError, match="HxW"):
        detect(np.zeros((SIZE, SIZE, 4), np.uint8), det)


def test_bad_config_raises() -> None:
    for kwargs in (
        {"ratio": 0.0},
        {"ratio": 1.2},
        {"n_refs": 0},
        {"radius": 0},
        {"close": -1},
        {"min_matches": 0},
    ):
        with pytest.raises(SpadimError):
            MaskConfig(**kwargs)


def test_apply_outside_multiplier() -> None:
    rng = np.random.default_rng(0)
    maps = rng.random((2, 8, 8)).astype(np.float32)
    masks = rng.random((2, 8, 8)) > 0.5
    same = apply_outside_multiplier(maps, masks, 1.0)
    assert np.array_equal(same, maps) and same is not maps and same.dtype == maps.dtype
    zeroed = apply_outside_multiplier(maps, masks, 0.0)
    assert zeroed.dtype == np.float32
    assert np.array_equal(zeroed[masks], maps[masks]) and np.all(zeroed[~masks] == 0)
    half = apply_outside_multiplier(maps[0], masks[0], 0.5)
    assert np.allclose(half, maps[0] * np.where(masks[0], 1.0, 0.5))
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(SpadimError, match="r="):
            apply_outside_multiplier(maps, masks, bad)
    with pytest.raises(SpadimError, match="shape"):
        apply_outside_multiplier(maps, masks[0], 0.5)


def test_mask_quality_hand_computed() -> None:
    mask = np.zeros((4, 4), bool)
    mask[:2, :2] = True  # 4 px
    gt = np.zeros((4, 4), bool)
    gt[1, 1] = gt[3, 3] = True  # 1 of 2 inside
    fg = np.zeros((4, 4), bool)
    fg[:2, :] = True  # 8 px, 4 inside mask
    fg[2, 0] = True  # 9 px
    q = mask_quality(mask, gt, fg)
    assert q["area_fraction"] == pytest.approx(4 / 16)
    assert q["gt_coverage"] == pytest.approx(1 / 2)
    assert q["fg_coverage"] == pytest.approx(4 / 9)
    assert q["fg_precision"] == pytest.approx(1.0)
    empty_gt = mask_quality(mask, np.zeros((4, 4), bool))
    assert np.isnan(empty_gt["gt_coverage"]) and np.isnan(empty_gt["fg_coverage"])
    assert np.isnan(mask_quality(mask)["gt_coverage"])
    assert np.isnan(mask_quality(np.zeros((4, 4), bool), gt, fg)["fg_precision"])
    with pytest.raises(SpadimError, match="shape"):
        mask_quality(mask, np.zeros((3, 3), bool))


def test_foreground_estimate_finds_object(views) -> None:
    tests, _ = views
    for img, obj in tests:
        fg = foreground_estimate(img)
        assert fg.dtype == bool and fg.shape == obj.shape
        assert (fg & obj).sum() / (fg | obj).sum() > 0.8


def test_foreground_estimate_full_frame_on_texture_and_blank() -> None:
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    blobs = cv2.GaussianBlur(rng.random((SIZE, SIZE, 3)).astype(np.float32), (0, 0), 6)
    blobs = cv2.normalize(blobs, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    blank = np.full((SIZE, SIZE), 90, np.uint8)
    for img in (noise, blobs, blank):
        assert foreground_estimate(img).mean() > 0.95
