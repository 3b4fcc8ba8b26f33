"""Which pixel-threshold rule from normal images alone gives defect masks closest to the oracle's?

Usage: python scripts/pixel_threshold_rules.py [DATA] [--classes grid,hazelnut,transistor]
Per class and method: out-of-fold maps of the training images (as `fit` calibrates), the test maps
of the model fitted on all of them, and the pooled pixel F1 of the test masks at each rule's
threshold, divided by the F1-best (oracle) threshold's F1. Rules: the conformal quantile of each
normal image's largest pixel score (what spadim stores: a new normal image's mask is empty with
probability >= 1 - far), and plain quantiles of all normal pixel scores (a per-pixel false-positive
rate). Real weights (resnet50_caffe) via $SPADIM_WEIGHTS.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from spadim.data.mvtec import load_class, load_masks
from spadim.features.backbone import locate
from spadim.metrics.operating_point import at_threshold, best_f1
from spadim.run.calibration import conformal_threshold, held_out
from spadim.run.pipeline import Settings, make_extractor

RULES = {
    "image-max far=0.01": ("max", 0.01),
    "image-max far=0.1": ("max", 0.1),
    "image-max far=0.3": ("max", 0.3),
    "pixel quantile 1-1e-3": ("pixel", 1e-3),
    "pixel quantile 1-1e-4": ("pixel", 1e-4),
    "pixel quantile 1-1e-5": ("pixel", 1e-5),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, nargs="?", default=Path("../shared/data/mvtec_ad_subset"))
    parser.add_argument("--classes", default="grid,hazelnut,transistor")
    parser.add_argument("--methods", default="spade,padim")
    args = parser.parse_args()
    settings = Settings(arch="resnet50_caffe", weights=str(locate("resnet50_caffe")))
    methods = args.methods.split(",")
    extractor = make_extractor(settings, None, methods)
    rows = []
    for name in args.classes.split(","):
        data = load_class(args.data / name)
        train = extractor(data.train, f"{name} train")
        test = extractor(data.test, f"{name} test")
        masks = load_masks(data, settings.pre, test.shapes)
        for method in methods:
            oof_maps = held_out(method, settings, settings.layers, train).maps  # 5-fold, as when measured
            normal = np.stack(oof_maps)
            test_maps, _ = settings.method(method).fit(train).score(test, settings.crop)
            oracle = best_f1(test_maps, masks)["f1"]
            row = {"class": name, "method": method, "oracle_f1": round(oracle, 4)}
            for rule, (kind, far) in RULES.items():
                if kind == "max":
                    threshold = conformal_threshold(normal.reshape(len(normal), -1).max(1), far)[0]
                else:
                    threshold = float(np.quantile(normal, 1 - far))
                row[rule] = round(at_threshold(test_maps, masks, threshold)["f1"] / oracle, 3)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
