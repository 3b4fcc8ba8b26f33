"""How much regret an ideal layer selector would still show on test sets this small.

Why: ``layer-select`` scores a choice against the best of 15 subsets on the real test set, and that
maximum is taken over noisy estimates (a class here has 10-20 test images). Resampling the test
images (bootstrap, good and defective images separately) gives new test sets of the same size; on
each, a selector that always picks the subset with the best mean AUPR over the resamples still
loses ``max_c AUPR_b(c) - AUPR_b(best)``. Its mean is the regret floor that no selection method
can go below on these data.

A second column asks what real labelled defects would buy: the test images are split in two halves
at random (good and defective separately); the subset best on one half is scored on the other, and
the regret there is averaged over splits and both directions. That is a selector that sees real
defects and their masks, on half as many images; it is pessimistic by that halving, and it is the
yardstick for any choice made from normal images, which see less. With ``--choices`` the
subsets chosen by earlier ``layer-select`` runs, and the fixed 1+2+3, are scored on the same halves,
so the three selectors are compared on equal terms. Usage:

    python -m benchmarks.regret_noise_floor ../shared/data/mvtec_ad_subset data/spadim-toy \
        --arch resnet50_caffe --weights ../shared/weights \
        --choices runs/layer-select-real-v2 runs/layer-select-toy-v2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score

from spadim.features.extractor import ALL_COMBOS
from spadim.studies.layersweep import combo_name, subset_maps
from spadim.features.config import BackboneConfig
from spadim.run.pipeline import Settings, make_extractor, prepare_class


def weighted_ap(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> float:
    """Average precision as sklearn defines it, with per-pixel weights, on scores sorted descending.

    Sorting once and weighting per resample is what makes 100 resamples x 15 subsets affordable;
    every full test set is checked against ``sklearn.metrics.average_precision_score`` below."""
    tp, fp = np.cumsum(weights * labels), np.cumsum(weights * (1 - labels))
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]  # one point per distinct score
    tp, fp = tp[last], fp[last]
    precision, recall = tp / np.maximum(tp + fp, 1e-12), tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def cross_regret(chooser: np.ndarray, scorer: np.ndarray) -> float:
    """Mean regret on ``scorer`` [subsets, splits] of the subset best on ``chooser`` (same split)."""
    picked = np.argmax(chooser, 0)
    return float(np.mean(scorer.max(0) - scorer[picked, np.arange(scorer.shape[1])]))


def stored_choices(dirs: list[str]) -> dict[tuple[str, str], str]:
    """(class, method) -> subset chosen by earlier ``spadim layer-select`` runs (their layer_select.json)."""
    out = {}
    for d in dirs:
        for row in json.loads((Path(d) / "layer_select.json").read_text())["rows"]:
            if row["class"] != "mean":
                out[(row["class"], row["method"])] = row["chosen"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", nargs="+", help="MVTec-layout folders")
    p.add_argument("--arch", default="resnet50_caffe")
    p.add_argument("--weights", default=None)
    p.add_argument("--resamples", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--choices",
        nargs="*",
        default=[],
        help="layer-select output folders: also score their auto choice (and 1+2+3) on the halves",
    )
    a = p.parse_args()
    s = Settings(backbone=BackboneConfig(arch=a.arch, weights=a.weights), seed=a.seed)
    fx = make_extractor(s, None, ("spade", "padim"), ALL_COMBOS)
    choices = stored_choices(a.choices)
    columns = [
        "class",
        "method",
        "good / defective test images",
        "best subset",
        "its AUPR",
        "regret floor (mean)",
        "half-split regret: labelled selector",
    ]
    columns += ["half-split regret: auto choice", "half-split regret: fixed 1+2+3"] if choices else []
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    means: dict[str, list[list[float]]] = {"spade": [], "padim": []}
    for root in a.data:
        for cdir in sorted(d for d in Path(root).iterdir() if (d / "test").is_dir()):
            cr = prepare_class(fx, cdir)
            good, bad = np.flatnonzero(cr.labels == 0), np.flatnonzero(cr.labels == 1)
            rng = np.random.default_rng(a.seed)
            counts = np.zeros((a.resamples, len(cr.labels)))
            for b in range(a.resamples):
                for group in (good, bad):
                    np.add.at(counts[b], rng.choice(group, len(group)), 1)
            split = np.zeros((a.resamples, len(cr.labels)))  # 1 = first half, 0 = second
            for b in range(a.resamples):
                for group in (good, bad):
                    split[b, rng.permutation(group)[: (len(group) + 1) // 2]] = 1
            for method in ("spade", "padim"):
                full, boot, first, second = {}, [], [], []
                for combo, maps, _ in subset_maps(cr, s, method, ALL_COMBOS):
                    flat, truth = maps.reshape(-1), cr.masks.reshape(-1).astype(np.float64)
                    image = np.repeat(np.arange(len(maps)), maps[0].size)
                    order = np.argsort(-flat, kind="stable")
                    flat, truth, image = flat[order], truth[order], image[order]
                    full[combo] = weighted_ap(flat, truth, np.ones_like(truth))
                    reference = average_precision_score(cr.masks.reshape(-1), maps.reshape(-1))
                    assert abs(full[combo] - reference) < 1e-6
                    boot.append([weighted_ap(flat, truth, counts[b][image]) for b in range(a.resamples)])
                    first.append([weighted_ap(flat, truth, split[b][image]) for b in range(a.resamples)])
                    second.append([weighted_ap(flat, truth, 1 - split[b][image]) for b in range(a.resamples)])
                table, first, second = np.array(boot), np.array(first), np.array(second)  # [15, resamples]
                best = int(np.argmax(table.mean(1)))
                values = [
                    float(np.mean(table.max(0) - table[best])),
                    (cross_regret(first, second) + cross_regret(second, first)) / 2,
                ]
                names = [combo_name(c) for c in ALL_COMBOS]
                if choices:
                    for chosen in (choices[(cr.data.name, method)], "1+2+3"):
                        row = names.index(chosen)
                        values.append(float(np.mean([np.mean(h.max(0) - h[row]) for h in (first, second)])))
                means[method].append(values)
                cells = [
                    cr.data.name,
                    method,
                    f"{len(good)} / {len(bad)}",
                    names[best],
                    f"{full[ALL_COMBOS[best]]:.3f}",
                    *(f"{v:.3f}" for v in values),
                ]
                print("| " + " | ".join(cells) + " |", flush=True)
    for method, rows in means.items():
        print(f"| **mean** | {method} | | | | " + " | ".join(f"{v:.3f}" for v in np.mean(rows, 0)) + " |")


if __name__ == "__main__":
    main()
