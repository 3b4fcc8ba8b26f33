"""Regret of --layers auto under variants of the synthetic validation set.

Why: the defect kinds, their sizes and the number of folds are design choices of
``spadim.studies.layerselect``; this measures each variant's choice against the real test masks, using the
real AUPR of every subset that ``spadim layer-select`` already stored (``subsets.json``), so only the
selection itself is recomputed. Usage:

    python -m benchmarks.layer_select_variants runs/layer-select-real-v2 ../shared/data/mvtec_ad_subset \
        runs/layer-select-toy-v2 data/spadim-toy --arch resnet50_caffe --weights ../shared/weights
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from spadim.data.mvtec import load_class
from spadim.data.defects import APPEARANCE_KINDS, KINDS, DefectConfig
from spadim.features.extractor import ALL_COMBOS
from spadim.run.layerchoice import select_many
from spadim.features.config import BackboneConfig
from spadim.run.pipeline import Settings, make_extractor

VARIANTS = {  # short name -> (description, select_many keywords)
    "appearance": (
        "appearance kinds, sizes 0.04-0.18, one 20% part, 2 copies",
        {"cfg": DefectConfig(APPEARANCE_KINDS, 0.04, 0.18), "folds": 5, "validated": 1, "copies": 2},
    ),
    "default": (
        "all kinds, sizes 0.06-0.30, one 20% part, 2 copies (default)",
        {"cfg": DefectConfig(KINDS, 0.06, 0.30), "folds": 5, "validated": 1, "copies": 2},
    ),
    "cv": (
        "all kinds, sizes 0.06-0.30, 5-fold cross-validation, 1 copy",
        {"cfg": DefectConfig(KINDS, 0.06, 0.30), "folds": 5, "validated": 5, "copies": 1},
    ),
    # part-scale changes (a whole part moved or removed): the real optimum on transistor is layer 3
    "larger": (
        "all kinds, sizes 0.06-0.45, one 20% part, 2 copies",
        {"cfg": DefectConfig(KINDS, 0.06, 0.45), "folds": 5, "validated": 1, "copies": 2},
    ),
    "part-scale": (
        "all kinds, sizes 0.30-0.60, one 20% part, 2 copies",
        {"cfg": DefectConfig(KINDS, 0.30, 0.60), "folds": 5, "validated": 1, "copies": 2},
    ),
    "part-structure": (
        "shift and missing only, sizes 0.30-0.60, one 20% part, 2 copies",
        {"cfg": DefectConfig(("shift", "missing"), 0.30, 0.60), "folds": 5, "validated": 1, "copies": 2},
    ),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pairs", nargs="+", help="layer-select output folder, then its data folder, repeated")
    p.add_argument("--arch", default="resnet50_caffe")
    p.add_argument("--weights", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    a = p.parse_args()
    s = Settings(backbone=BackboneConfig(arch=a.arch, weights=a.weights), seed=a.seed)
    fx = make_extractor(s, None, ("spade", "padim"), ALL_COMBOS)
    real, dirs = {}, []
    for out, data in zip(a.pairs[::2], a.pairs[1::2]):
        for r in json.loads((Path(out) / "subsets.json").read_text())["rows"]:
            real[(r["class"], r["method"], r["layers"])] = r["real_aupr"]
        dirs += sorted(d for d in Path(data).iterdir() if (d / "train").is_dir())
    dirs = [d for d in dirs if (d.name, "spade", "1") in real]
    train = {d.name: fx(load_class(d, need_test=False).train, d.name) for d in dirs}
    print("| variant | method | chosen per class | mean regret | mean AUPR auto | mean AUPR 1,2,3 |")
    print("|---|---|---|---|---|---|")
    for name, kw in (VARIANTS[v] for v in a.variants):
        sels = {c: select_many(fx, feats, s, ["spade", "padim"], **kw) for c, feats in train.items()}
        for m in ("spade", "padim"):
            regret, auto, fixed, chosen = [], [], [], []
            for c, sel in sels.items():
                aupr = {layers: real[(c, m, layers)] for (cc, mm, layers) in real if cc == c and mm == m}
                regret.append(max(aupr.values()) - aupr[sel[m].name])
                auto.append(aupr[sel[m].name])
                fixed.append(aupr["1+2+3"])
                chosen.append(f"{c} {sel[m].name}")
            print(
                f"| {name} | {m} | {', '.join(chosen)} | {np.mean(regret):.3f} | {np.mean(auto):.3f} | "
                f"{np.mean(fixed):.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
