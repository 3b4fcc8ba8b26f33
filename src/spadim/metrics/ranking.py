"""Evaluation metrics: pixel AUROC/AUPR, image AUROC, PRO curve and AUPRO.

Inputs are numpy arrays; every metric returns a Python float. A metric that is
undefined for the given labels (for example no anomalous pixels, or no normal
images) returns ``float("nan")`` instead of raising. Inconsistent shapes,
non-finite scores and non-binary labels raise :class:`SpadimError`.
"""

import numpy as np
from scipy import ndimage
from sklearn.metrics import (
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from spadim.errors import SpadimError

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _scores_labels(
    scores: np.ndarray,
    labels: np.ndarray,
    what: str,
    names: tuple[str, str] = ("maps", "masks"),
    keep_float32: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Validate a (scores, labels) pair and return them flattened as float64 / bool (float32 scores stay
    float32 with ``keep_float32``: a ranking is the same in either)."""
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    if scores.shape != labels.shape:
        raise SpadimError(
            f"{what}: {names[0]} have shape {scores.shape} but {names[1]} have shape {labels.shape}; "
            "pass arrays of the same shape"
        )
    if scores.size == 0:
        raise SpadimError(f"{what}: got empty arrays; pass at least one score and label")
    keep = keep_float32 and scores.dtype == np.float32
    scores = scores.astype(np.float32 if keep else np.float64, copy=False).ravel()
    if not np.all(np.isfinite(scores)):
        raise SpadimError(f"{what}: scores contain NaN or inf; replace non-finite values before evaluating")
    if labels.dtype != bool:
        if not np.all((labels == 0) | (labels == 1)):
            raise SpadimError(f"{what}: labels must be bool or 0/1; binarize them first, e.g. mask > 0")
        labels = labels == 1
    return scores, labels.ravel()


def _both_classes(labels: np.ndarray) -> bool:
    return bool(labels.any() and not labels.all())


def pixel_auroc(maps: np.ndarray, masks: np.ndarray) -> float:
    """Pixel-level ROC AUC of anomaly maps [N,H,W] against masks [N,H,W]; NaN if masks hold one class only."""
    scores, labels = _scores_labels(maps, masks, "pixel_auroc")
    if not _both_classes(labels):
        return float("nan")
    return float(roc_auc_score(labels, scores))


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """sklearn's ``average_precision_score`` of flat scores and bool labels, computed from one sort.

    AP sums ``(R_t - R_prev) P_t`` over the distinct score values t, descending; only values held by a
    positive change the recall, so it is enough to know, for each distinct positive value t, how many
    positives (``tp``) and how many scores in all lie at or above it: the first from the sorted
    positives, the second by a binary search in the sorted scores. Ties count as in sklearn (one
    threshold per distinct value). One ``np.sort`` instead of sklearn's stable argsort: about 10x
    faster on a million pixels, which the 15 subsets of ``--layers auto`` pay every fit.
    """
    positives = np.sort(scores[labels])[::-1]
    if not len(positives):
        return float("nan")
    ranked = np.sort(scores)
    last = np.ones(len(positives), bool)  # the last (lowest) position of each distinct positive value
    last[:-1] = positives[1:] != positives[:-1]
    values = positives[last]
    tp = np.flatnonzero(last).astype(np.float64) + 1
    at_or_above = len(ranked) - np.searchsorted(ranked, values, side="left")
    gained = np.diff(tp, prepend=0.0)
    return float(np.sum(gained * tp / at_or_above) / len(positives))


def pixel_aupr(maps: np.ndarray, masks: np.ndarray) -> float:
    """Pixel-level average precision (area under the PR curve); NaN if there are no anomalous pixels."""
    scores, labels = _scores_labels(maps, masks, "pixel_aupr", keep_float32=True)
    return average_precision(scores, labels)


def pixel_aupr_by_multiplier(
    maps: np.ndarray, inside: np.ndarray, masks: np.ndarray, multipliers
) -> dict[float, float]:
    """``{r: pixel_aupr(apply_outside_multiplier(maps, inside, r), masks)}`` for every r, exactly (each r
    scales the outside scores in the maps' float type, as :func:`apply_outside_multiplier`)."""
    scores, labels = _scores_labels(maps, masks, "pixel_aupr_by_multiplier")
    inside = np.asarray(inside, bool)
    if inside.shape != np.shape(maps):
        raise SpadimError(f"pixel_aupr_by_multiplier: inside has shape {inside.shape}, maps {np.shape(maps)}")
    if any(not 0.0 <= float(r) <= 1.0 for r in multipliers):
        raise SpadimError(f"outside multipliers {list(multipliers)} must lie in [0, 1]")
    if not labels.any():
        return {float(r): float("nan") for r in multipliers}
    dtype = np.result_type(np.asarray(maps).dtype, np.float32)  # as apply_outside_multiplier computes
    flat, outside = np.asarray(maps).astype(dtype).ravel(), ~inside.ravel()
    out = {}
    for r in multipliers:
        scaled = flat.copy()
        if float(r) != 1.0:
            scaled[outside] *= dtype.type(r)
        out[float(r)] = average_precision(scaled, labels)
    return out


def image_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Image-level ROC AUC (labels: 1 = anomalous); NaN if only normal or only anomalous images are given."""
    scores, labels = _scores_labels(scores, labels, "image_auroc", ("scores", "labels"))
    if not _both_classes(labels):
        return float("nan")
    return float(roc_auc_score(labels, scores))


def roc_points(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC curve (fpr, tpr) for plotting, from maps/masks or image scores/labels; empty arrays if one class only."""
    scores, labels = _scores_labels(scores, labels, "roc_points", ("scores", "labels"))
    if not _both_classes(labels):
        return np.empty(0), np.empty(0)
    fpr, tpr, _ = roc_curve(labels, scores)
    return fpr, tpr


def pr_points(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision-recall curve (recall, precision) for plotting; empty arrays if there are no positives."""
    scores, labels = _scores_labels(scores, labels, "pr_points", ("scores", "labels"))
    if not labels.any():
        return np.empty(0), np.empty(0)
    precision, recall, _ = precision_recall_curve(labels, scores)
    return recall, precision


def pro_curve(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-region-overlap curve (fpr, pro) at every distinct threshold of maps [N,H,W].

    Regions are the 8-connected components of each image's mask. At threshold t,
    PRO(t) is the mean over all regions of the fraction of region pixels with
    score >= t, and FPR(t) the fraction of normal pixels with score >= t. Points
    are ordered by decreasing threshold (fpr ascending), from (0, 0) to (1, 1).
    Returns empty arrays if there are no anomalous or no normal pixels.
    """
    maps_arr = np.asarray(maps)
    if maps_arr.ndim != 3:
        raise SpadimError(
            f"pro_curve: maps must have shape [N,H,W], got {maps_arr.shape}; add a batch axis for a single image"
        )
    scores, labels = _scores_labels(maps_arr, masks, "pro_curve")
    if not _both_classes(labels):
        return np.empty(0), np.empty(0)

    regions = np.zeros(maps_arr.shape, dtype=np.int64)
    n_regions = 0
    for i, mask in enumerate(labels.reshape(maps_arr.shape)):
        regions[i], count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
        regions[i][mask] += n_regions
        n_regions += count
    regions = regions.ravel()
    sizes = np.bincount(regions, minlength=n_regions + 1).astype(np.float64)
    pro_weight = np.where(labels, 1.0 / (sizes[regions] * n_regions), 0.0)

    order = np.argsort(scores, kind="stable")[::-1]
    sorted_scores = scores[order]
    group_ends = np.append(np.flatnonzero(sorted_scores[1:] != sorted_scores[:-1]), scores.size - 1)
    pro = np.cumsum(pro_weight[order])[group_ends]
    fpr = np.cumsum(~labels[order])[group_ends] / np.count_nonzero(~labels)
    pro[-1] = 1.0  # every pixel is >= the lowest threshold; removes cumsum round-off
    return np.concatenate(([0.0], fpr)), np.concatenate(([0.0], np.minimum(pro, 1.0)))


def aupro(maps: np.ndarray, masks: np.ndarray, max_fpr: float = 0.3) -> float:
    """Normalized area under the PRO curve for fpr in [0, max_fpr] (MVTec AD definition), in [0, 1].

    Trapezoid rule on the exact PRO curve, linearly interpolated at fpr = max_fpr,
    divided by max_fpr. NaN if there are no anomalous or no normal pixels.
    """
    if not 0.0 < max_fpr <= 1.0:
        raise SpadimError(f"aupro: max_fpr must be in (0, 1], got {max_fpr}; the MVTec AD default is 0.3")
    fpr, pro = pro_curve(maps, masks)
    if fpr.size == 0:
        return float("nan")
    k = int(np.searchsorted(fpr, max_fpr, side="right"))  # points with fpr <= max_fpr
    x, y = fpr[:k], pro[:k]
    if x[-1] < max_fpr:
        t = (max_fpr - fpr[k - 1]) / (fpr[k] - fpr[k - 1])
        x = np.append(x, max_fpr)
        y = np.append(y, pro[k - 1] + t * (pro[k] - pro[k - 1]))
    area = float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))
    return area / max_fpr


NO_ANOMALIES = "no anomalous test images: pixel metrics undefined"


def undefined_notes(masks: np.ndarray, image_labels: np.ndarray) -> list[str]:
    """Why a test split's metrics come out NaN, in words for tables and logs (empty if none is).

    A NaN alone reads like a bug; a split without defects is a data problem the user can fix.
    """
    labels = np.asarray(image_labels).astype(bool)
    notes = []
    if not labels.any():
        notes.append(NO_ANOMALIES)
    elif not np.any(masks):
        notes.append("no anomalous pixels in the ground-truth masks: pixel metrics undefined")
    if labels.size and labels.all():
        notes.append("no good test images: image AUROC undefined")
    return notes


def evaluate_maps(
    maps: np.ndarray,
    masks: np.ndarray,
    image_scores: np.ndarray,
    image_labels: np.ndarray,
    max_fpr: float = 0.3,
) -> dict[str, float]:
    """All metrics at once: {"pixel_auroc", "pixel_aupr", "image_auroc", "aupro"} (NaN where undefined)."""
    maps = np.asarray(maps)
    if maps.ndim != 3 or np.shape(image_scores) != maps.shape[:1]:
        raise SpadimError(
            f"evaluate_maps: maps have shape {maps.shape} and image_scores have shape {np.shape(image_scores)}; "
            "pass maps as [N,H,W] and one image score per map"
        )
    return {
        "pixel_auroc": pixel_auroc(maps, masks),
        "pixel_aupr": pixel_aupr(maps, masks),
        "image_auroc": image_auroc(image_scores, image_labels),
        "aupro": aupro(maps, masks, max_fpr),
    }
