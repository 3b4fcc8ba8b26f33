"""Watching the promise from the record: false alarms among confirmed good images, drift, what-if.

Both alerts are sequential tests that stay valid however often they are checked (Ville's inequality:
a non-negative supermartingale under the null reaches 1/alpha with probability at most alpha, ever):

- **False alarms.** Among images an operator confirmed good, k of n were flagged. The upper bound
  is a confidence sequence for the false-alarm rate p: every p whose uniform-mixture likelihood
  ratio ``B(k+1, n-k+1) / (p^k (1-p)^(n-k))`` stays below 1/alpha. The alert is a one-sided test of
  ``p <= far``: the same ratio with the mixture over ``q >= far`` only, which is a supermartingale for
  every ``p <= far``. It fires when the promise is broken with confidence 1 - alpha.
- **Drift.** Under no drift the calibration's held-out statistics and the new images' are
  exchangeable, so each new image's online conformal p-value (its rank among everything seen before
  it, ties broken at random) is uniform and independent of the earlier ones. A power martingale
  ``prod(eps p_i^(eps-1))``, mixed over eps in (0, 1), grows when new images score higher than the
  calibration said; it alerts at 1/alpha.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.special import betainc, betaln

ALPHA = 0.05
EPSILONS = np.linspace(0.005, 0.995, 199)  # the power martingale's mixing grid (uniform prior)


def _log_mixture_ratio(flagged: int, n: int, p: float) -> float:
    """log of the uniform-prior mixture likelihood ratio against the rate ``p``."""
    return betaln(flagged + 1, n - flagged + 1) - flagged * np.log(p) - (n - flagged) * np.log1p(-p)


def rate_upper_bound(flagged: int, n: int, alpha: float = ALPHA) -> float:
    """Upper end of the (1 - alpha) confidence sequence for a Bernoulli rate after ``flagged`` of ``n``."""
    if n == 0:
        return 1.0
    low, high = flagged / n, 1.0
    limit = np.log(1.0 / alpha)
    if flagged == n:
        return 1.0
    for _ in range(60):  # bisection: the ratio grows with p above the observed rate
        middle = 0.5 * (low + high)
        if _log_mixture_ratio(flagged, n, middle) < limit:
            low = middle
        else:
            high = middle
    return high


def log_excess_evidence(flagged: int, n: int, far: float) -> float:
    """log of the one-sided mixture ratio (uniform prior on q in [far, 1]) against ``p = far``."""
    if n == 0:
        return 0.0
    a, b = flagged + 1, n - flagged + 1
    tail = 1.0 - betainc(a, b, far)  # the prior's mass above far, weighted by the likelihood
    if tail <= 0:
        return -np.inf
    return (
        betaln(a, b) + np.log(tail) - np.log1p(-far) - flagged * np.log(far) - (n - flagged) * np.log1p(-far)
    )


@dataclass
class FalseAlarmWatch:
    far: float
    confirmed_good: int
    flagged: int
    observed: float | None
    upper_bound: float
    alpha: float
    alert: bool

    def to_json(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        if not self.confirmed_good:
            return f"false alarms: no image confirmed good yet (promise: far {self.far:g})"
        state = "ALERT: the promise is broken" if self.alert else "within the promise"
        return (
            f"false alarms: {self.flagged} of {self.confirmed_good} confirmed good images flagged "
            f"({self.observed:.3f}; upper bound {self.upper_bound:.3f} at {1 - self.alpha:.0%}, valid at "
            f"every check) against far {self.far:g}: {state}"
        )


def watch_false_alarms(
    flagged: int, confirmed_good: int, far: float, alpha: float = ALPHA
) -> FalseAlarmWatch:
    evidence = log_excess_evidence(flagged, confirmed_good, far)
    return FalseAlarmWatch(
        far,
        confirmed_good,
        flagged,
        flagged / confirmed_good if confirmed_good else None,
        rate_upper_bound(flagged, confirmed_good, alpha),
        alpha,
        bool(evidence >= np.log(1.0 / alpha)),
    )


def online_p_values(reference: np.ndarray, new: np.ndarray, seed: int = 0) -> np.ndarray:
    """Each new value's conformal p-value against the reference and every new value before it: the share
    of them (itself included) at least as high, ties broken at random. Uniform and independent under
    exchangeability."""
    rng = np.random.default_rng(seed)
    reference = np.sort(np.asarray(reference, dtype=np.float64))
    new = np.asarray(new, dtype=np.float64)
    seen_new: list[float] = []
    out = np.empty(len(new))
    for i, value in enumerate(new):  # one value at a time: each p-value needs the ones before it
        higher = len(reference) - np.searchsorted(reference, value, side="right")
        equal = np.searchsorted(reference, value, side="right") - np.searchsorted(reference, value, "left")
        earlier = np.asarray(seen_new)
        higher += int((earlier > value).sum())
        equal += int((earlier == value).sum())
        out[i] = (higher + rng.uniform() * (equal + 1)) / (len(reference) + i + 1)
        seen_new.append(value)
    return out


def log_power_martingale(p_values: np.ndarray) -> np.ndarray:
    """log of the mixture power martingale after each p-value (the running evidence)."""
    p = np.clip(np.asarray(p_values, dtype=np.float64), 1e-300, 1.0)
    log_bets = np.log(EPSILONS)[None, :] + (EPSILONS[None, :] - 1.0) * np.log(p)[:, None]
    cumulative = np.cumsum(log_bets, axis=0)  # [n, epsilons]
    top = cumulative.max(1, keepdims=True)
    return (top[:, 0] + np.log(np.exp(cumulative - top).mean(1))) if len(p) else np.zeros(0)


@dataclass
class DriftWatch:
    reference: int
    recent: int
    evidence: float  # the martingale's largest value so far (1 = no evidence)
    first_alert_at: int | None  # how many recent images it took, when it alerted
    alpha: float
    alert: bool
    reference_median: float | None
    recent_median: float | None

    def to_json(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        if not self.recent:
            return "drift: no new images yet"
        state = (
            f"ALERT after {self.first_alert_at} images: new images score higher than the calibration's"
            if self.alert
            else "no drift detected"
        )
        return (
            f"drift: {self.recent} new images against {self.reference} calibration statistics, median "
            f"{self.recent_median:.4g} vs {self.reference_median:.4g}, evidence {self.evidence:.3g} "
            f"(alert at {1 / self.alpha:.0f}): {state}"
        )


def watch_drift(reference: np.ndarray, recent: np.ndarray, alpha: float = ALPHA, seed: int = 0) -> DriftWatch:
    reference, recent = np.asarray(reference, dtype=np.float64), np.asarray(recent, dtype=np.float64)
    log_m = log_power_martingale(online_p_values(reference, recent, seed))
    crossed = np.nonzero(log_m >= np.log(1.0 / alpha))[0]
    return DriftWatch(
        len(reference),
        len(recent),
        float(np.exp(min(log_m.max(), 700))) if len(log_m) else 1.0,
        int(crossed[0]) + 1 if len(crossed) else None,
        alpha,
        bool(len(crossed)),
        float(np.median(reference)) if len(reference) else None,
        float(np.median(recent)) if len(recent) else None,
    )


def what_if(levels, good_scores: np.ndarray, defect_scores: np.ndarray) -> list[dict]:
    """Among reviewed images, what each region level would have caught and cost (a defect is a region
    score above the level, as the decision rule says)."""
    good, defect = np.asarray(good_scores, dtype=float), np.asarray(defect_scores, dtype=float)
    return [
        {
            "level": float(level),
            "defects_caught": int((defect > level).sum()),
            "defects": len(defect),
            "recall": float((defect > level).mean()) if len(defect) else None,
            "false_alarms": int((good > level).sum()),
            "good": len(good),
        }
        for level in levels
    ]
