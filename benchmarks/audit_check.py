"""Does the audit name a defective image filed among the good ones, and say what the level would be?

Usage: python -m benchmarks.audit_check [DATA] [--classes grid,hazelnut,transistor] [--far 0.05]
       [--methods spade,padim,patchcore] [--out runs/audit-check]
Per class and method: `fit` on train/good (clean) and on train/good plus the first defective test
image of each class (planted; a copy in a temporary folder). Reports the plant's rank in the audit
(1 = named first; 0 = not flagged), and how far the level the audit says the fit would have without it
lies from the clean fit's level. Whole frame, real weights (resnet50_caffe via $SPADIM_WEIGHTS).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from spadim.data.mvtec import load_class
from spadim.features.backbone import locate
from spadim.inspect import fit_model
from spadim.features.config import BackboneConfig
from spadim.run.pipeline import Settings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, nargs="?", default=Path("../shared/data/mvtec_ad_subset"))
    parser.add_argument("--classes", default="grid,hazelnut,transistor")
    parser.add_argument("--methods", default="spade,padim,patchcore")
    parser.add_argument("--far", type=float, default=0.05)
    parser.add_argument("--out", type=Path, default=Path("runs/audit-check"))
    args = parser.parse_args()
    settings = Settings(
        backbone=BackboneConfig(arch="resnet50_caffe", weights=str(locate("resnet50_caffe")), frame="whole")
    )
    rows = []
    for name in args.classes.split(","):
        data = load_class(args.data / name)
        plant = next(p for p, kind in zip(data.test, data.defects) if kind != "good")
        planted = args.out / name / "planted"
        shutil.rmtree(planted, ignore_errors=True)
        planted.mkdir(parents=True)
        for path in data.train:
            (planted / path.name).symlink_to(path.resolve())
        planted_name = planted / f"planted_{plant.parent.name}_{plant.name}"
        planted_name.symlink_to(plant.resolve())
        for method in args.methods.split(","):
            quiet = {"say": lambda *a, **k: None}
            clean = fit_model(
                args.data / name, args.out / name / f"{method}-clean.pt", settings, method, args.far, **quiet
            )
            dirty = fit_model(
                planted, args.out / name / f"{method}-planted.pt", settings, method, args.far, **quiet
            )
            names = [entry["image"] for entry in dirty["audit"]]
            rank = names.index(str(planted_name)) + 1 if str(planted_name) in names else 0
            level = clean["calibration"].region_threshold
            without = dirty["audit"][rank - 1]["level_without_it"] if rank else None
            rows.append(
                {
                    "class": name,
                    "method": method,
                    "n_good": len(data.train),
                    "planted": plant.parent.name,
                    "rank_in_audit": rank,
                    "flagged": len(names),
                    "clean_level": round(level, 4),
                    "planted_level": round(dirty["calibration"].region_threshold, 4),
                    "level_without_it": None if without is None else round(without, 4),
                    "relative_gap": None if without is None else round(abs(without - level) / abs(level), 4),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    (args.out / "audit.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
