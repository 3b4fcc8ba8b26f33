"""Inspection: a calibrated OK/defect decision, a defect mask and regions per image, from good images only.

``fit_model`` fits and calibrates (out-of-fold, split-conformal thresholds), ``calibrate_model``
recalibrates on held-out good images, :class:`Inspector` predicts, ``predict_paths`` streams folders.
The CLI (``fit``, ``calibrate``, ``predict``) and the HTTP server are thin shells over these.
"""

from spadim.decision.regions import DEFAULT_MIN_AREA, Region, find_regions
from spadim.decision.conformal import DEFAULT_FAR, Calibration, conformal_threshold
from spadim.run.calibration import DEFAULT_FOLDS
from .fitting import calibrate_model, fit_classes, fit_model
from .inspector import Inspector, ObjectMask, OperatingPoint, Prediction
from .stream import predict_paths

__all__ = [
    "DEFAULT_FAR",
    "DEFAULT_FOLDS",
    "DEFAULT_MIN_AREA",
    "Calibration",
    "Inspector",
    "ObjectMask",
    "OperatingPoint",
    "Prediction",
    "Region",
    "calibrate_model",
    "conformal_threshold",
    "find_regions",
    "fit_classes",
    "fit_model",
    "predict_paths",
]
