"""Calibration: the conformal quantile, out-of-fold scores and normalisation, each against an
independent computation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spadim.errors import SpadimError
from spadim.features.extractor import FeatureSet
from spadim.decision.audit import audit
from spadim.decision.conformal import Calibration, check_far, conformal_threshold, images_needed, summarize
from spadim.features.extractor import take
from spadim.run.calibration import held_out
from spadim.run.layerchoice import fold_rows, other_rows
from spadim.features.config import BackboneConfig
from spadim.run.pipeline import Settings


@pytest.mark.parametrize("n,far", [(19, 0.05), (99, 0.01), (200, 0.05), (10, 0.2), (57, 0.1)])
def test_conformal_threshold_is_the_finite_sample_quantile(n, far):
    scores = np.random.default_rng(n).normal(size=n)
    threshold, guaranteed = conformal_threshold(scores, far)
    rank = math.ceil((n + 1) * (1 - far))  # 1-based, by the split-conformal rule
    assert guaranteed and threshold == sorted(scores)[rank - 1]
    # at most floor(far (n+1)) - 1 ... i.e. the share of calibration scores above it is <= far
    assert np.mean(scores > threshold) <= far


def test_conformal_guarantee_holds_on_fresh_exchangeable_scores():
    """Monte Carlo: over many calibration sets, a new score exceeds the threshold at rate <= far."""
    rng = np.random.default_rng(0)
    far, n, trials = 0.1, 29, 20000
    calibration = rng.exponential(size=(trials, n))
    fresh = rng.exponential(size=trials)
    thresholds = np.sort(calibration, axis=1)[:, math.ceil((n + 1) * (1 - far)) - 1]
    assert conformal_threshold(calibration[0], far)[0] == thresholds[0]
    rate = np.mean(fresh > thresholds)
    assert rate <= far + 3 * math.sqrt(far * (1 - far) / trials)  # exact value is 3/30 = 0.1
    assert rate > far - 0.02  # and not wastefully conservative


def _calibration(far, image_scores, maps, pixel_far=0.001):
    return Calibration(
        far,
        "out-of-fold",
        5,
        len(image_scores),
        **summarize(np.array(image_scores), maps),
        pixel_far=pixel_far,
    )


def test_too_few_images_warn_and_are_not_silently_guaranteed():
    maps = [np.full((4, 4), v, np.float32) for v in np.linspace(3, 4, 20)]
    cal = _calibration(0.01, list(np.linspace(1, 2, 20)), maps)
    assert not cal.guaranteed and cal.image_threshold == 2.0
    assert "NOT guaranteed" in cal.warning() and "1/(n+1) = 0.0476" in cal.warning()
    assert cal.at(0.05).guaranteed and cal.at(0.05).warning() is None


@pytest.mark.parametrize("far", [0, 1, -0.1, 1.5, float("nan")])
def test_far_outside_zero_one_is_refused(far):
    with pytest.raises(SpadimError, match="between 0 and 1"):
        check_far(far)


def test_pixel_threshold_is_the_quantile_of_all_normal_pixels():
    rng = np.random.default_rng(2)
    maps = [rng.gamma(2.0, size=(32, 32)).astype(np.float32) for _ in range(30)]
    pixels = np.concatenate([m.ravel() for m in maps])
    for pixel_far in (0.001, 0.004, 0.01):
        cal = _calibration(0.1, list(rng.normal(size=30)), maps, pixel_far)
        assert np.mean(pixels > cal.pixel_threshold) <= pixel_far
        assert np.mean(pixels >= cal.pixel_threshold) > pixel_far  # the smallest such threshold
        assert cal.mask_alarm_rate == pytest.approx(np.mean([m.max() > cal.pixel_threshold for m in maps]))
    assert cal.pixel_median == pytest.approx(float(np.median(pixels)))
    with pytest.raises(SpadimError, match="`pixel_far=0.02` needs more"):
        _calibration(0.1, list(rng.normal(size=30)), maps, 0.02)


def test_normalised_scores_are_zero_at_the_median_and_half_at_the_threshold():
    scores = list(np.arange(1.0, 100.0))
    maps = [np.full((10, 10), s, np.float32) for s in np.linspace(0, 20, 99)]
    cal = _calibration(0.1, scores, maps)
    assert cal.normalize_image(cal.image_median) == pytest.approx(0.0)
    assert cal.normalize_image(cal.image_threshold) == pytest.approx(0.5)
    assert cal.normalize_image(2 * cal.image_threshold - cal.image_median) == pytest.approx(1.0)
    assert cal.normalize_pixels(cal.pixel_threshold) == pytest.approx(0.5)
    assert cal.normalize_pixels(cal.pixel_median) == pytest.approx(0.0)
    assert Calibration.from_json(cal.to_json()).to_json() == cal.to_json()


class _MeanDistance:
    """A stand-in method: image score = distance of the pooled vector to the fitted mean."""

    name = "toy"

    def __init__(self, layers):
        self.layers = layers

    def fit(self, fs):
        self.mean = fs.pooled.mean(0)
        return self

    fit_to_score = fit  # the method protocol's fit for in-process scoring

    def score(self, fs, size):
        scores = (fs.pooled - self.mean).norm(dim=1).numpy()
        return np.repeat(scores[:, None, None], size, 1).repeat(size, 2).astype(np.float32), scores


class _ToySettings(Settings):
    def method(self, name, layers=None):
        return _MeanDistance(layers)


def test_out_of_fold_scores_each_image_with_a_model_that_never_saw_it():
    import torch

    n = 13
    pooled = torch.from_numpy(np.random.default_rng(1).normal(size=(n, 4)).astype(np.float32))
    train = FeatureSet(
        [f"{i}.png" for i in range(n)], {}, pooled, np.zeros((n, 4, 4, 3), np.uint8), [(4, 4)] * n
    )
    settings = _ToySettings(backbone=BackboneConfig(arch="resnet18", weights="random", resize=4, crop=4))
    result = held_out("toy", settings, (1,), train, folds=5)
    scores, maps = result.image_scores, result.maps
    assert result.how == "out-of-fold" and result.folds == 5
    for held in fold_rows(n, settings.seed, 5):
        mean = pooled[other_rows(n, held)].mean(0)
        expected = (pooled[held] - mean).norm(dim=1).numpy()
        np.testing.assert_allclose(scores[held], expected, rtol=1e-6)
    assert all(m.shape == (4, 4) for m in maps)
    assert len(take(train, [0, 2]).paths) == 2


@pytest.mark.parametrize("far", [0.05, 0.01, 0.1, 0.2, 0.03])
def test_images_needed_is_where_the_conformal_rank_first_leaves_the_maximum(far):
    needed = images_needed(far)
    for n in range(2, needed + 30):
        below_max = conformal_threshold(np.arange(float(n)), far)[0] < n - 1  # scores 0..n-1
        assert below_max == (n >= needed), n
    assert images_needed(0.05) == 39 and images_needed(0.01) == 199


def test_region_level_is_the_conformal_quantile_of_the_region_statistic():
    rng = np.random.default_rng(5)
    maps = [rng.gamma(2.0, size=(8, 8)).astype(np.float32) for _ in range(60)]
    regions = rng.normal(10, 1, size=60)
    cal = Calibration(0.05, "leave-one-out", 60, 60, **summarize(rng.normal(size=60), maps, regions))
    assert cal.region_threshold == conformal_threshold(regions, 0.05)[0] and cal.guaranteed
    assert cal.mask_level == min(cal.pixel_threshold, cal.region_threshold)
    assert cal.at(0.2).region_threshold == conformal_threshold(regions, 0.2)[0]
    assert Calibration.from_json(cal.to_json()).region_threshold == cal.region_threshold
    old = {k: v for k, v in cal.to_json().items() if k not in ("region_scores", "min_area")}
    assert Calibration.from_json(old).region_threshold is None  # an old model: predict asks to recalibrate


def _modified_z(stats: np.ndarray) -> np.ndarray:
    """Iglewicz and Hoaglin's modified z-score, by its definition: 0.6745 (x - median) / MAD."""
    median = np.median(stats)
    return 0.6745 * (stats - median) / np.median(np.abs(stats - median))


def _conformal_level(stats: np.ndarray, far: float) -> float:
    """The ceil((n + 1)(1 - far))-th smallest of n, or the largest when that rank passes n."""
    ordered = np.sort(stats)
    return float(ordered[min(math.ceil((len(ordered) + 1) * (1 - far)), len(ordered)) - 1])


def test_audit_names_a_planted_outlier_first_and_the_level_without_it():
    rng = np.random.default_rng(3)
    stats = rng.normal(10.0, 0.5, size=30)
    planted = stats.copy()
    planted[17] = 14.0  # a defect filed as good
    planted[4] = 12.2  # a milder one
    names = [f"good_{i:02d}.png" for i in range(30)]
    z = _modified_z(planted)
    expected = sorted(np.flatnonzero(z > 3.5), key=lambda i: -planted[i])
    assert expected[:2] == [17, 4]  # both planted images stand apart by the definition
    flagged = audit(planted, names, 0.05)
    assert [entry["image"] for entry in flagged] == [names[i] for i in expected]
    for entry, i in zip(flagged, expected):
        assert entry["robust_z"] == pytest.approx(z[i], rel=1e-9)
        assert entry["region_score"] == planted[i]
        assert entry["level"] == 14.0  # with 30 images the level is the largest statistic: the plant
        assert entry["level_without_it"] == _conformal_level(np.delete(planted, i), 0.05)
        assert entry["level_without_all_flagged"] == _conformal_level(np.delete(planted, expected), 0.05)
    assert flagged[0]["level_without_it"] == 12.2  # without the worst, the milder plant sets the level
    # without the plants the audit flags exactly the images the definition flags (here one, z 5.4)
    clean_z = _modified_z(stats)
    clean = sorted(np.flatnonzero(clean_z > 3.5), key=lambda i: -stats[i])
    assert len(clean) == 1
    assert [entry["image"] for entry in audit(stats, names, 0.05)] == [names[i] for i in clean]


def test_far_interval_matches_a_simulation_of_calibration_sets():
    """The false-alarm rate of one calibration set, simulated: 4000 sets of 60 uniform scores."""
    from spadim.decision.conformal import far_interval

    rng = np.random.default_rng(4)
    n, far = 60, 0.05
    levels = np.sort(rng.random((4000, n)), axis=1)[:, math.ceil((n + 1) * (1 - far)) - 1]
    rates = 1.0 - levels  # P(new uniform score > level)
    low, high = far_interval(n, far)
    assert np.mean(rates < low) == pytest.approx(0.05, abs=0.015)
    assert np.mean(rates > high) == pytest.approx(0.05, abs=0.015)
    assert np.mean(rates) == pytest.approx(3 / 61, abs=0.003)  # the marginal guarantee: <= far


def test_resume_files_are_strict_json_and_keep_undefined_metrics(tmp_path):
    """save_atomic writes null (no NaN token) and read_saved restores NaN where it was, None where it was."""
    import json

    from spadim.run.session import read_saved, save_atomic

    content = {"signature": {"k": 5}, "rows": [{"aupr": float("nan"), "auroc": 0.9, "aupro": None}]}
    path = tmp_path / "unit.json"
    save_atomic(path, content)
    json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in a JSON file"))
    back = read_saved(path)
    row = back["rows"][0]
    assert math.isnan(row["aupr"]) and row["auroc"] == 0.9 and row["aupro"] is None
    assert set(row) == {"aupr", "auroc", "aupro"} and back["signature"] == {"k": 5}
