"""benchmarks/regret_noise_floor.py: its weighted AP and cross-split regret against independent computations."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "regret_noise_floor.py"


@pytest.fixture(scope="module")
def floor():
    spec = importlib.util.spec_from_file_location("regret_noise_floor", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_weighted_ap_equals_sklearn_on_repeated_rows(floor):
    """Integer weights must give the AP of the data with each row repeated that many times (ties kept)."""
    rng = np.random.default_rng(3)
    scores = np.round(rng.random(400), 2)  # many ties
    labels = (rng.random(400) < 0.2 + 0.5 * scores).astype(float)
    weights = rng.integers(0, 4, 400).astype(float)
    order = np.argsort(-scores, kind="stable")
    got = floor.weighted_ap(scores[order], labels[order], weights[order])
    repeated = np.repeat(np.arange(400), weights.astype(int))
    assert got == pytest.approx(average_precision_score(labels[repeated], scores[repeated]), abs=1e-12)
    ones = floor.weighted_ap(scores[order], labels[order], np.ones(400))
    assert ones == pytest.approx(average_precision_score(labels, scores), abs=1e-12)


def test_cross_regret_scores_the_chooser_pick_on_the_other_split(floor):
    chooser = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.5], [0.1, 0.1, 0.6]])  # [subsets, splits]
    scorer = np.array([[0.5, 0.7, 0.3], [0.6, 0.4, 0.2], [0.9, 0.9, 0.9]])
    # split 0 picks subset 0 (0.5 of best 0.9), split 1 subset 1 (0.4 of 0.9), split 2 subset 2 (0.9 of 0.9)
    assert floor.cross_regret(chooser, scorer) == pytest.approx(np.mean([0.4, 0.5, 0.0]))
