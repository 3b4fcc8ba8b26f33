"""Measure the false-alarm rate of calibrated models on many good test images of the embedded data.

Usage: python -m benchmarks.far_check [--far 0.05] [--train 60] [--good 200] [--methods padim,spade]
Fits each method per class with its leave-one-out calibration (normal training images only), predicts
the class's good test images (never seen in fitting) and reports the share flagged as defect (an image
is flagged exactly when it has a defect region), beside the target rate. It also sets the held-out
region statistics of the training images beside the deployed model's on the new good images (median
and 95% quantile): how well the calibration represents the deployed model. Real ImageNet weights when
found (see README).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from spadim.data.embedded import make_dataset
from spadim.features.backbone import locate
from spadim.inspect import Inspector, fit_model, predict_paths
from spadim.features.config import BackboneConfig
from spadim.run.pipeline import Settings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--far", type=float, default=0.05)
    parser.add_argument("--train", type=int, default=60)
    parser.add_argument("--good", type=int, default=200)
    parser.add_argument("--classes", default="tile,nut")
    parser.add_argument("--methods", default="padim,spade")
    parser.add_argument("--arch", default="resnet50_caffe")
    parser.add_argument("--out", type=Path, default=Path("runs/far-check"))
    parser.add_argument(
        "--same-dust",
        action="store_true",
        help="give good test images the training images' background-dust rate (the embedded "
        "set draws dust on 15%% of training and 50%% of test images of object classes, a "
        "deliberate shift that breaks exchangeability)",
    )
    args = parser.parse_args()
    classes = tuple(args.classes.split(","))
    if args.same_dust:
        from spadim.data.embedded import dataset

        dataset._DUST_P["test"] = dataset._DUST_P["train"]
        args.out = args.out / "same-dust"
    root = make_dataset(
        args.out / "data", classes=classes, n_train=args.train, n_test_good=args.good, n_test_defect=1, seed=1
    )
    settings = Settings(
        backbone=BackboneConfig(arch=args.arch, weights=str(locate(args.arch)), frame="whole")
    )
    rows = []
    for name in classes:
        good = sorted((root / name / "test" / "good").glob("*.png"))
        for method in args.methods.split(","):
            model = args.out / f"{name}-{method}.pt"
            started = time.perf_counter()
            fit_model(
                root / name, model, settings, method, args.far, say=lambda msg: print(msg, file=sys.stderr)
            )
            inspector = Inspector.load(model)
            point = inspector.operating_point()
            out = args.out / f"pred-{name}-{method}"
            predict_paths(inspector, good, out, point)
            records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
            image_rate = sum(r["decision"] == "defect" for r in records) / len(records)
            held = np.array(json.loads(Path(f"{model}.audit.json").read_text())["region_scores"])
            new = np.array([r["region_score"] for r in records])
            pixel_rate = sum(r["defect_pixels"] > 0 for r in records) / len(records)
            rows.append(
                {
                    "class": name,
                    "method": method,
                    "n_train": args.train,
                    "n_good_test": len(records),
                    "far": args.far,
                    "image_false_alarm_rate": image_rate,
                    "mask_false_alarm_rate": pixel_rate,
                    "guaranteed": inspector.calibration.guaranteed,
                    "held_out": inspector.calibration.how,
                    "held_median_q95": [round(float(v), 3) for v in np.quantile(held, [0.5, 0.95])],
                    "new_median_q95": [round(float(v), 3) for v in np.quantile(new, [0.5, 0.95])],
                    "seconds": round(time.perf_counter() - started, 1),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    (args.out / "far.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
