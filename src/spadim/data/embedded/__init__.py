"""The embedded data set: a deterministic synthetic inspection set in the MVTec AD layout, used when no
real data is at hand."""

from .dataset import DEFAULT_CLASSES, DEFECTS, GENERATOR_VERSION, MARKER_NAME, make_dataset, render_image

__all__ = ["make_dataset", "render_image", "DEFAULT_CLASSES", "DEFECTS", "MARKER_NAME", "GENERATOR_VERSION"]
