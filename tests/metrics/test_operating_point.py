"""Operating-point metrics against sklearn's and hand-counted values."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, jaccard_score, precision_score, recall_score

from spadim.metrics.operating_point import at_threshold, best_f1


def test_at_threshold_matches_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.random(500) < 0.2
    scores = rng.normal(size=500) + 1.5 * labels
    got = at_threshold(scores, labels, 0.7)
    flagged = scores > 0.7
    assert got["precision"] == pytest.approx(precision_score(labels, flagged))
    assert got["recall"] == pytest.approx(recall_score(labels, flagged))
    assert got["f1"] == pytest.approx(f1_score(labels, flagged))
    assert got["iou"] == pytest.approx(jaccard_score(labels, flagged))
    assert got["false_alarm_rate"] == pytest.approx(np.mean(flagged[~labels]))


def test_best_f1_is_the_maximum_over_every_threshold():
    rng = np.random.default_rng(1)
    labels = rng.random(300) < 0.3
    scores = np.round(rng.normal(size=300) + labels, 1)  # ties on purpose
    oracle = best_f1(scores, labels)
    brute = max(f1_score(labels, scores > t) for t in np.unique(scores) - 1e-9)
    assert oracle["f1"] == pytest.approx(brute)
    assert at_threshold(scores, labels, oracle["threshold"])["f1"] == pytest.approx(brute)


def test_undefined_values_are_nan_not_zero():
    got = at_threshold(np.array([0.1, 0.2]), np.array([False, False]), 1.0)
    assert np.isnan(got["recall"]) and np.isnan(got["precision"]) and got["false_alarm_rate"] == 0.0
    assert np.isnan(best_f1(np.array([0.1, 0.2]), np.array([False, False]))["f1"])
