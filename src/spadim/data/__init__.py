"""Images in: the MVTec AD layout or plain folders, reading and checking files, preprocessing, the
embedded data set and synthetic defects. Nothing here knows about networks or methods."""

from .defects import APPEARANCE_KINDS, KINDS, DefectConfig, make_defects
from .embedded import make_dataset
from .folders import find_images, load_plain, training_images
from .mvtec import (
    IMAGE_EXTS,
    ClassData,
    Preprocess,
    check_class,
    check_images,
    find_classes,
    list_images,
    load_class,
    load_images,
    load_masks,
    normalize,
    read_mask,
    read_rgb,
)

__all__ = ["APPEARANCE_KINDS", "IMAGE_EXTS", "KINDS", "ClassData", "DefectConfig", "Preprocess", "check_class",
           "check_images", "find_classes", "find_images", "list_images", "load_class", "load_images",
           "load_masks", "load_plain", "make_dataset", "make_defects", "normalize", "read_mask", "read_rgb",
           "training_images"]
