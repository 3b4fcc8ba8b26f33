"""The watch's sequential tests: valid however often they are checked, and quick to see a real change."""

from __future__ import annotations

import numpy as np
from scipy.special import betaln
from scipy.stats import beta as beta_dist

from spadim.record.watch import (
    log_excess_evidence,
    log_power_martingale,
    online_p_values,
    rate_upper_bound,
    watch_drift,
    watch_false_alarms,
    what_if,
)


def test_upper_bound_solves_the_mixture_boundary():
    k, n, alpha = 3, 40, 0.05
    upper = rate_upper_bound(k, n, alpha)
    ratio = betaln(k + 1, n - k + 1) - k * np.log(upper) - (n - k) * np.log1p(-upper)
    assert abs(ratio - np.log(1 / alpha)) < 1e-6
    # wider than the fixed-n Clopper-Pearson bound: it pays for being valid at every n
    assert upper > beta_dist.ppf(1 - alpha, k + 1, n - k)


def test_false_alarm_alert_is_rare_under_the_promise_and_fast_when_broken():
    rng = np.random.default_rng(0)
    far, alpha, runs, horizon = 0.05, 0.05, 300, 1000
    flags = rng.uniform(size=(runs, horizon)) < far  # the promise holds exactly
    counts = np.cumsum(flags, 1)
    checks = range(9, horizon, 10)  # checked after every 10 images
    ever = [
        any(log_excess_evidence(int(c[t]), t + 1, far) >= np.log(1 / alpha) for t in checks) for c in counts
    ]
    assert np.mean(ever) <= alpha
    broken = np.cumsum(rng.uniform(size=horizon) < 0.15, 0)  # three times the promised rate
    first = next(t + 1 for t in checks if watch_false_alarms(int(broken[t]), t + 1, far).alert)
    assert first <= 300
    calm = watch_false_alarms(2, 100, far)
    assert not calm.alert and calm.observed == 0.02 and calm.upper_bound > 0.02


def test_online_p_values_are_ranks():
    p = online_p_values(np.array([1.0, 2.0, 3.0]), np.array([10.0, 0.0]), seed=1)
    assert p[0] <= 0.25  # higher than everything before it
    assert p[1] >= 0.8  # lower than everything before it: 4 of 5 above, plus its own share


def test_drift_alert_rate_and_power():
    rng = np.random.default_rng(0)
    alpha, runs = 0.05, 200
    alerts = 0
    for run in range(runs):
        reference = rng.normal(size=50)
        alerts += watch_drift(reference, rng.normal(size=500), alpha, seed=run).alert
    assert alerts / runs <= alpha
    reference = rng.normal(size=50)
    shifted = watch_drift(reference, rng.normal(1.5, 1.0, size=100), alpha)
    assert shifted.alert and shifted.first_alert_at <= 100


def test_power_martingale_against_its_definition():
    p = np.array([0.2, 0.01, 0.5])
    eps = np.linspace(0.005, 0.995, 199)
    expected = np.log(np.mean(np.prod(eps[None] * p[:, None] ** (eps[None] - 1), axis=0)))
    assert abs(log_power_martingale(p)[-1] - expected) < 1e-9


def test_what_if_counts():
    rows = what_if([1.0, 2.0], good_scores=np.array([0.5, 1.5]), defect_scores=np.array([1.2, 2.5, 3.0]))
    assert rows[0] == {
        "level": 1.0,
        "defects_caught": 3,
        "defects": 3,
        "recall": 1.0,
        "false_alarms": 1,
        "good": 2,
    }
    assert rows[1]["defects_caught"] == 2 and rows[1]["false_alarms"] == 0
