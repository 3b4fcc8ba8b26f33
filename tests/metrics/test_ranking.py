"""Metrics checked against independent brute-force computations on small seeded random arrays."""

import math

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score

from spadim.errors import SpadimError
from spadim.metrics.ranking import (
    aupro,
    evaluate_maps,
    image_auroc,
    pixel_aupr,
    pixel_auroc,
    pr_points,
    pro_curve,
    roc_points,
)

SEEDS = range(8)


def random_case(seed: int, n: int = 3, h: int = 9, w: int = 11) -> tuple[np.ndarray, np.ndarray]:
    """Maps with many ties (one decimal) and masks with several rectangles per image, some touching diagonally."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, h, w), dtype=bool)
    for i in range(n):
        for _ in range(rng.integers(1, 5)):
            y, x = rng.integers(0, h - 1), rng.integers(0, w - 1)
            masks[i, y : y + rng.integers(1, 4), x : x + rng.integers(1, 4)] = True
        if rng.random() < 0.5:  # a single pixel touching nothing, plus a diagonal pair
            masks[i, h - 1, 0] = True
            masks[i, 0, w - 1] = masks[i, 1, w - 2] = True
    maps = np.round(rng.random((n, h, w)) + 0.4 * masks, 1)
    return maps, masks


def brute_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann-Whitney: P(pos > neg) + 0.5 P(pos == neg) over all positive/negative pairs."""
    pos = scores[labels.astype(bool)].ravel()
    neg = scores[~labels.astype(bool)].ravel()
    greater = equal = 0
    for p in pos:
        greater += int(np.sum(p > neg))
        equal += int(np.sum(p == neg))
    return (greater + 0.5 * equal) / (pos.size * neg.size)


def brute_average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Sum over distinct thresholds (descending) of (R_n - R_{n-1}) * P_n."""
    scores, labels = scores.ravel(), labels.ravel().astype(bool)
    ap, prev_recall = 0.0, 0.0
    for t in sorted(set(scores.tolist()), reverse=True):
        predicted = scores >= t
        tp = np.sum(predicted & labels)
        recall, precision = tp / labels.sum(), tp / predicted.sum()
        ap += (recall - prev_recall) * precision
        prev_recall = recall
    return ap


def brute_pro_curve(maps: np.ndarray, masks: np.ndarray) -> tuple[list[float], list[float]]:
    """(fpr, pro) at (0, 0) then at every distinct threshold, descending, by direct region overlaps."""
    regions = []
    for i in range(maps.shape[0]):
        labeled, count = ndimage.label(masks[i], structure=np.ones((3, 3)))
        regions += [(i, labeled == r) for r in range(1, count + 1)]
    normal = ~masks.astype(bool)
    fprs, pros = [0.0], [0.0]
    for t in sorted(set(maps.ravel().tolist()), reverse=True):
        overlaps = [np.mean(maps[i][region] >= t) for i, region in regions]
        pros.append(float(np.mean(overlaps)))
        fprs.append(float(np.mean(maps[normal] >= t)))
    return fprs, pros


def brute_aupro(fprs: list[float], pros: list[float], max_fpr: float) -> float:
    """Trapezoids up to max_fpr, with the last segment cut by linear interpolation, divided by max_fpr."""
    area = 0.0
    for (x0, y0), (x1, y1) in zip(zip(fprs, pros), zip(fprs[1:], pros[1:])):
        if x0 >= max_fpr:
            break
        if x1 > max_fpr:
            y1 = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
            x1 = max_fpr
        area += (x1 - x0) * (y0 + y1) / 2
    return area / max_fpr


@pytest.mark.parametrize("seed", SEEDS)
def test_pixel_auroc_matches_mann_whitney(seed: int) -> None:
    maps, masks = random_case(seed)
    assert pixel_auroc(maps, masks) == pytest.approx(brute_auroc(maps, masks), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_pixel_aupr_matches_brute_force_average_precision(seed: int) -> None:
    maps, masks = random_case(seed)
    assert pixel_aupr(maps, masks.astype(np.uint8)) == pytest.approx(
        brute_average_precision(maps, masks), abs=1e-12
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_pixel_aupr_of_float32_maps_matches_sklearn_on_large_tied_arrays(seed: int) -> None:
    """The one-sort average precision against sklearn's on 200k float32 pixels with heavy ties."""
    rng = np.random.default_rng(seed)
    masks = rng.random((4, 200, 250)) < 0.03
    maps = (np.round(rng.random(masks.shape) * 300) + 40 * masks * rng.random(masks.shape)).astype(np.float32)
    expected = average_precision_score(masks.ravel(), maps.ravel().astype(np.float64))
    assert pixel_aupr(maps, masks) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_image_auroc_matches_mann_whitney(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, size=20).astype(float)
    labels = rng.integers(0, 2, size=20)
    labels[:2] = [0, 1]
    assert image_auroc(scores, labels) == pytest.approx(brute_auroc(scores, labels), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_pro_curve_matches_brute_force(seed: int) -> None:
    maps, masks = random_case(seed)
    fpr, pro = pro_curve(maps, masks)
    brute_fpr, brute_pro = brute_pro_curve(maps, masks)
    np.testing.assert_allclose(fpr, brute_fpr, atol=1e-12)
    np.testing.assert_allclose(pro, brute_pro, atol=1e-12)
    assert (fpr[0], pro[0], fpr[-1], pro[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro) >= 0)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("max_fpr", [0.3, 0.05, 1.0])
def test_aupro_matches_brute_force_trapezoid(seed: int, max_fpr: float) -> None:
    maps, masks = random_case(seed)
    expected = brute_aupro(*brute_pro_curve(maps, masks), max_fpr)
    assert aupro(maps, masks, max_fpr) == pytest.approx(expected, abs=1e-12)
    assert 0.0 <= expected <= 1.0


def test_pro_regions_are_eight_connected() -> None:
    masks = np.zeros((1, 4, 4), dtype=bool)
    masks[0, 0, 0] = masks[0, 1, 1] = True  # one region: diagonal neighbours
    masks[0, 3, 3] = True  # a second region
    maps = np.zeros((1, 4, 4))
    maps[0, 0, 0] = 2.0  # covers half of region 1
    maps[0, 3, 3] = 1.0  # covers region 2
    fpr, pro = pro_curve(maps, masks)
    np.testing.assert_allclose(fpr, [0.0, 0.0, 0.0, 1.0])
    np.testing.assert_allclose(pro, [0.0, 0.25, 0.75, 1.0])


def test_perfect_inverted_and_constant_maps() -> None:
    _, masks = random_case(0)
    perfect = masks.astype(float)
    assert pixel_auroc(perfect, masks) == 1.0
    assert aupro(perfect, masks) == pytest.approx(1.0)
    assert pixel_aupr(perfect, masks) == pytest.approx(1.0)
    inverted = 1.0 - perfect
    assert pixel_auroc(inverted, masks) == 0.0
    assert aupro(inverted, masks) == 0.0
    constant = np.full(masks.shape, 0.7)
    assert pixel_auroc(constant, masks) == 0.5
    assert aupro(constant, masks) == pytest.approx(0.15)  # curve is the diagonal: 0.3^2 / 2 / 0.3
    assert image_auroc(np.ones(4), np.array([0, 1, 0, 1])) == 0.5


def test_curve_points_for_plotting() -> None:
    maps, masks = random_case(1)
    fpr, tpr = roc_points(maps, masks)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2) == pytest.approx(pixel_auroc(maps, masks))
    recall, precision = pr_points(maps, masks)
    assert recall[0] == 1.0 and recall[-1] == 0.0 and precision[-1] == 1.0
    assert all(
        a.size == 0 for a in roc_points(maps, np.zeros_like(masks)) + pr_points(maps, np.zeros_like(masks))
    )


def test_undefined_metrics_are_nan() -> None:
    maps, masks = random_case(2)
    no_anomaly = np.zeros_like(masks)
    assert math.isnan(pixel_auroc(maps, no_anomaly))
    assert math.isnan(pixel_aupr(maps, no_anomaly))
    assert math.isnan(aupro(maps, no_anomaly))
    assert all(a.size == 0 for a in pro_curve(maps, no_anomaly))
    all_anomalous = np.ones_like(masks)
    assert math.isnan(pixel_auroc(maps, all_anomalous))
    assert math.isnan(aupro(maps, all_anomalous))
    assert pixel_aupr(maps, all_anomalous) == 1.0  # precision is 1 everywhere: still defined
    assert math.isnan(image_auroc(np.arange(3.0), np.ones(3)))
    result = evaluate_maps(maps, no_anomaly, maps.max(axis=(1, 2)), np.zeros(3))
    assert set(result) == {"pixel_auroc", "pixel_aupr", "image_auroc", "aupro"}
    assert all(math.isnan(v) for v in result.values())


def test_evaluate_maps_combines_metrics() -> None:
    maps, masks = random_case(3)
    scores, labels = maps.max(axis=(1, 2)), np.array([0, 1, 1])
    assert evaluate_maps(maps, masks, scores, labels, max_fpr=0.2) == {
        "pixel_auroc": pixel_auroc(maps, masks),
        "pixel_aupr": pixel_aupr(maps, masks),
        "image_auroc": image_auroc(scores, labels),
        "aupro": aupro(maps, masks, 0.2),
    }


def test_bad_input_raises() -> None:
    maps, masks = random_case(4)
    with pytest.raises(SpadimError, match=r"\(3, 9, 11\).*\(3, 9, 10\)"):
        pixel_auroc(maps, masks[..., :10])
    with pytest.raises(SpadimError, match=r"\(3, 9, 11\).*\(2, 9, 11\)"):
        aupro(maps, masks[:2])
    with pytest.raises(SpadimError, match=r"\(4,\).*\(5,\)"):
        image_auroc(np.zeros(4), np.zeros(5))
    with pytest.raises(SpadimError, match="image_scores"):
        evaluate_maps(maps, masks, np.zeros(2), np.zeros(2))
    with pytest.raises(SpadimError, match="0/1"):
        pixel_auroc(maps, masks.astype(np.uint8) * 255)
    with pytest.raises(SpadimError, match="NaN"):
        pixel_aupr(np.where(masks, np.nan, maps), masks)
    with pytest.raises(SpadimError, match="max_fpr"):
        aupro(maps, masks, max_fpr=0.0)
    with pytest.raises(SpadimError, match=r"\[N,H,W\]"):
        pro_curve(maps[0], masks[0])


def test_aupro_handles_full_benchmark_size() -> None:
    """100 images of 224 x 224, with exact answers: every defect pixel scored above every normal one gives
    the PRO curve 1 from fpr 0 on (AUPRO 1); every one below gives PRO 0 up to fpr 1 (AUPRO 0)."""
    rng = np.random.default_rng(0)
    masks = np.zeros((100, 224, 224), dtype=bool)
    masks[::2, 50:90, 60:120] = True
    noise = rng.random(masks.shape, dtype=np.float32)  # in [0, 1)
    assert aupro(noise + masks, masks) == pytest.approx(1.0, abs=1e-12)
    assert aupro(noise - masks, masks) == pytest.approx(0.0, abs=1e-12)


def test_aupr_by_multiplier_equals_masking_then_scoring_exactly():
    from spadim.metrics.ranking import pixel_aupr_by_multiplier
    from spadim.masks.keypoints import apply_outside_multiplier

    rng = np.random.default_rng(4)
    maps = np.round(rng.gamma(2.0, 1.0, (5, 24, 24)), 1).astype(np.float32)  # rounded: many ties
    truth = rng.random((5, 24, 24)) < 0.08
    maps[truth] += 0.7
    inside = rng.random((5, 24, 24)) < 0.6
    rs = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    got = pixel_aupr_by_multiplier(maps, inside, truth, rs)
    for r in rs:
        assert got[r] == pixel_aupr(apply_outside_multiplier(maps, inside, r), truth)
    assert len(set(got.values())) > 2  # r changes the ranking here, so the check is not vacuous
    with pytest.raises(SpadimError):
        pixel_aupr_by_multiplier(maps, inside, truth, (1.5,))
