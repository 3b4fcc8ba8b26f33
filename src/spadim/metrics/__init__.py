"""Scores to numbers: plain metric functions on numpy arrays (pixel and image AUROC, AUPR, PRO)."""

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

__all__ = ["aupro", "evaluate_maps", "image_auroc", "pixel_aupr", "pixel_aupr_by_multiplier", "pixel_auroc",
           "pr_points", "pro_curve", "roc_points", "undefined_notes"]
