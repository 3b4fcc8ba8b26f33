"""Images to features: ImageNet ResNets with their weight lookup and their one config, and the
once-per-image extractor."""

from .backbone import ARCHS, ResNet, Weights, load_backbone, locate, weights_report
from .config import BackboneConfig
from .extractor import ALL_COMBOS, FeatureExtractor, FeatureSet, combo_name, embed, parse_layers

__all__ = [
    "ALL_COMBOS",
    "ARCHS",
    "BackboneConfig",
    "FeatureExtractor",
    "FeatureSet",
    "ResNet",
    "Weights",
    "combo_name",
    "embed",
    "load_backbone",
    "locate",
    "parse_layers",
    "weights_report",
]
