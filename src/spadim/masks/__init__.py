"""Object masks that damp scores off the part: keypoint matching (proposal 1), the foreground learned
from normal features, and the automatic choice between them. The automatic choice scores candidates
on synthetic defects, so this package sits after :mod:`spadim.metrics` in the flow."""

from .auto import LEARNED, MaskPlanner, auto_masks
from .foreground import ForegroundConfig, fit_foreground
from .keypoints import (
    DETECTORS,
    MaskConfig,
    MaskResult,
    apply_outside_multiplier,
    available_detectors,
    object_mask,
    reference_features,
)

__all__ = [
    "DETECTORS",
    "LEARNED",
    "ForegroundConfig",
    "MaskConfig",
    "MaskPlanner",
    "MaskResult",
    "apply_outside_multiplier",
    "auto_masks",
    "available_detectors",
    "fit_foreground",
    "object_mask",
    "reference_features",
]
