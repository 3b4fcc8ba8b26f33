"""Metrics at one threshold: what a line sees when it acts on the decisions and masks.

Ranking metrics (AUROC, AUPR) judge every threshold at once; a deployed model runs at one. Here the
calibrated threshold (chosen from normal images only) is scored beside the oracle, the threshold
with the best F1 chosen with the test labels, so the cost of not knowing the defects shows; for
image decisions the yardstick is :func:`best_recall`, the best recall with no more false alarms.
Undefined values (no defect to recall, no alarm to be precise about) are NaN, as in ranking.py.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import precision_recall_curve


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else float("nan")


def counts(flagged: np.ndarray, labels: np.ndarray) -> tuple[int, int, int, int]:
    """(true positives, false positives, false negatives, true negatives) of boolean arrays."""
    flagged, labels = np.asarray(flagged, bool).ravel(), np.asarray(labels, bool).ravel()
    tp = int(np.count_nonzero(flagged & labels))
    fp = int(np.count_nonzero(flagged & ~labels))
    fn = int(np.count_nonzero(~flagged & labels))
    return tp, fp, fn, int(flagged.size - tp - fp - fn)


def at_threshold(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """Precision, recall, F1, false-alarm rate and IoU when ``score > threshold`` is flagged."""
    tp, fp, fn, tn = counts(np.asarray(scores) > threshold, labels)
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "false_alarm_rate": _ratio(fp, fp + tn),
        "iou": _ratio(tp, tp + fp + fn),
        "threshold": float(threshold),
    }


def best_f1(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The oracle: the threshold with the highest F1 on these labels, and the metrics there."""
    scores, labels = np.asarray(scores, np.float64).ravel(), np.asarray(labels, bool).ravel()
    if not labels.any():
        return at_threshold(scores, labels, float("inf"))
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)[:-1]
    best = int(np.argmax(f1))
    # sklearn flags score >= t; at_threshold flags score > t: step just below t for the same set
    return at_threshold(scores, labels, float(np.nextafter(thresholds[best], -np.inf)))


def best_recall(scores: np.ndarray, labels: np.ndarray, false_alarms: int) -> dict[str, float]:
    """The yardstick of a calibrated decision: the highest recall of any threshold (``score > t``) that
    flags at most ``false_alarms`` normal images, chosen with the test labels. Unlike the F1-best
    threshold it stays meaningful when most test images are defective (flagging all scores F1 0.8-0.9)."""
    scores, labels = np.asarray(scores, np.float64).ravel(), np.asarray(labels, bool).ravel()
    normal = np.sort(scores[~labels])[::-1]
    if not labels.any():
        return {"recall": float("nan"), "threshold": float("inf"), "false_alarms": 0}
    threshold = float(normal[false_alarms]) if false_alarms < len(normal) else -np.inf
    return {
        "recall": float(np.mean(scores[labels] > threshold)),
        "threshold": threshold,
        "false_alarms": int(np.count_nonzero(normal > threshold)),
    }
