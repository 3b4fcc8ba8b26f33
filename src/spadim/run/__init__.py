"""Run plumbing: settings, fitting and streaming classes through the methods, the layer choice made at
fit time, model files, staged output, and ``spadim evaluate`` as a function (:func:`evaluate.run`)."""

from .layerchoice import Selection, select_layers, select_many
from .modelfile import load_model
from .pipeline import AUTO, ClassRun, Settings, evaluate_class, fit_methods, make_extractor, score_stream

__all__ = [
    "AUTO",
    "ClassRun",
    "Selection",
    "Settings",
    "evaluate_class",
    "fit_methods",
    "load_model",
    "make_extractor",
    "score_stream",
    "select_layers",
    "select_many",
]
