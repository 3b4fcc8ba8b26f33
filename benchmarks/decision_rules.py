"""Which rule turns held-out normal statistics into an OK/defect level that catches defects?

Usage: python -m benchmarks.decision_rules [DATA] [--classes grid,hazelnut,transistor] [--far 0.05]
       [--methods spade,padim,patchcore] [--cut 25] [--out runs/decision-rules]
Per class, method and training-set size (all images, and the first --cut): the region statistic of
every training image as `fit` calibrates it (leave-one-out for SPADE and PatchCore, 5-fold for PaDiM,
and 5-fold for all three to measure the gap), the same statistic and the image score of the test
images from the model fitted on all training images, whole frame, real weights (resnet50_caffe via
$SPADIM_WEIGHTS). Each rule's level is scored by the recall of `statistic > level` on the defective
test images, its false alarms on the good ones, and the recall of the best threshold with no more false
alarms. Writes stats.json (every number) and rules.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from spadim.data.mvtec import load_class
from spadim.features.backbone import locate
from spadim.metrics.operating_point import best_recall
from spadim.decision.conformal import region_scores
from spadim.features.extractor import take
from spadim.run.calibration import held_out
from spadim.features.config import BackboneConfig
from spadim.run.pipeline import Settings, make_extractor
from .rules import RULES, level


def collect(args) -> list[dict]:
    settings = Settings(
        backbone=BackboneConfig(arch="resnet50_caffe", weights=str(locate("resnet50_caffe")), frame="whole")
    )
    methods = args.methods.split(",")
    extractor = make_extractor(settings, None, methods)
    out = []
    for name in args.classes.split(","):
        data = load_class(args.data / name)
        train_all = extractor(data.train, f"{name} train")
        test = extractor(data.test, f"{name} test")
        for n in sorted({len(train_all), min(args.cut, len(train_all))}, reverse=True):
            train = take(train_all, list(range(n)))
            for method in methods:
                model = settings.method(method).fit(train)
                maps, scores = model.score(test, settings.backbone.crop)
                entry = {
                    "class": name,
                    "method": method,
                    "n_train": n,
                    "labels": data.labels.tolist(),
                    "test_region": region_scores(maps, test.shapes, settings.backbone.pre).tolist(),
                    "test_image": np.asarray(scores).tolist(),
                }
                deployed = held_out(method, settings, settings.method_layers(method), train, fitted=model)
                entry["held_region"] = deployed.region_scores.tolist()
                entry["held_how"] = deployed.how
                if deployed.how == "leave-one-out":
                    folds = held_out(method, settings, settings.method_layers(method), train)
                    entry["fold_region"] = folds.region_scores.tolist()
                out.append(entry)
                print(f"{name} {method} n={n} done", file=sys.stderr, flush=True)
    return out


def score_rules(entries: list[dict], far: float) -> list[dict]:
    rows = []
    for entry in entries:
        labels = np.array(entry["labels"], bool)
        statistic = np.array(entry["test_region"])
        for rule in RULES:
            sets = {"": entry["held_region"]}
            if "fold_region" in entry:
                sets[" (5-fold)"] = entry["fold_region"]
            for suffix, normal in sets.items():
                threshold = level(rule, np.array(normal), far)
                flagged = statistic > threshold
                false_alarms = int((flagged & ~labels).sum())
                best = best_recall(statistic, labels, false_alarms)["recall"]
                recall = float(flagged[labels].mean())
                rows.append(
                    {
                        "class": entry["class"],
                        "method": entry["method"],
                        "n_train": entry["n_train"],
                        "rule": rule + suffix,
                        "level": round(float(threshold), 4),
                        "false_alarms": f"{false_alarms}/{int((~labels).sum())}",
                        "recall": round(recall, 3),
                        "best_recall": round(best, 3),
                        "ratio": round(recall / best, 3) if best > 0 else None,
                    }
                )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, nargs="?", default=Path("../shared/data/mvtec_ad_subset"))
    parser.add_argument("--classes", default="grid,hazelnut,transistor")
    parser.add_argument("--methods", default="spade,padim,patchcore")
    parser.add_argument("--far", type=float, default=0.05)
    parser.add_argument("--cut", type=int, default=25)
    parser.add_argument("--out", type=Path, default=Path("runs/decision-rules"))
    parser.add_argument("--reuse", action="store_true", help="score the rules on an earlier stats.json")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    stats = args.out / "stats.json"
    entries = json.loads(stats.read_text()) if args.reuse else collect(args)
    stats.write_text(json.dumps(entries))
    rows = score_rules(entries, args.far)
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r[c]) for c in columns) + " |" for r in rows]
    (args.out / "rules.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
