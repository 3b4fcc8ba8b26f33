"""Scores to numbers: plain metric functions on numpy arrays (pixel and image AUROC, AUPR, PRO; and
precision, recall, F1, IoU at one threshold beside the F1-best oracle)."""

from .operating_point import at_threshold, best_f1

from .ranking import (
    aupro,
    evaluate_maps,
    image_auroc,
    pixel_aupr,
    pixel_aupr_by_multiplier,
    pixel_auroc,
    pr_points,
    pro_curve,
    roc_points,
    undefined_notes,
)

__all__ = [
    "at_threshold",
    "best_f1",
    "aupro",
    "evaluate_maps",
    "image_auroc",
    "pixel_aupr",
    "pixel_aupr_by_multiplier",
    "pixel_auroc",
    "pr_points",
    "pro_curve",
    "roc_points",
    "undefined_notes",
]
