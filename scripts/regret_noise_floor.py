"""How much regret an ideal layer selector would still show on test sets this small.

Why: ``layer-select`` scores a choice against the best of 15 subsets on the real test set, and that
maximum is taken over noisy estimates (a class here has 10-20 test images). Resampling the test
images (bootstrap, good and defective images separately) gives new test sets of the same size; on
each, a selector that always picks the subset with the best mean AUPR over the resamples still
loses ``max_c AUPR_b(c) - AUPR_b(best)``. Its mean is the regret floor that no selection method
can go below on these data. Usage:

    python scripts/regret_noise_floor.py ../shared/data/mvtec_ad_subset data/spadim-toy \
        --arch resnet50_caffe --weights ../shared/weights
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score

from spadim.features import ALL_COMBOS
from spadim.layersweep import combo_name, spade_subset_maps
from spadim.padim import fit_padim
from spadim.pipeline import Settings, make_extractor, prepare_class


def weighted_ap(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> float:
    """Average precision as sklearn defines it, with per-pixel weights, on scores sorted descending.

    Sorting once and weighting per resample is what makes 100 resamples x 15 subsets affordable;
    every full test set is checked against ``sklearn.metrics.average_precision_score`` below."""
    tp, fp = np.cumsum(weights * labels), np.cumsum(weights * (1 - labels))
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]  # one point per distinct score
    tp, fp = tp[last], fp[last]
    precision, recall = tp / np.maximum(tp + fp, 1e-12), tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def subset_maps(cr, s: Settings, method: str):
    if method == "spade":
        yield from ((c, maps) for c, maps, _ in spade_subset_maps(cr, s, ALL_COMBOS))
    else:
        yield from ((c, fit_padim(c, s.padim_d, s.seed, cr.train).score(cr.test, s.crop)[0]) for c in ALL_COMBOS)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", nargs="+", help="MVTec-layout folders")
    p.add_argument("--arch", default="resnet50_caffe")
    p.add_argument("--weights", default=None)
    p.add_argument("--resamples", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    s = Settings(arch=a.arch, weights=a.weights, seed=a.seed)
    fx = make_extractor(s, None, ("spade", "padim"), ALL_COMBOS)
    print("| class | method | good / defective test images | best subset | its AUPR | regret floor (mean) |")
    print("|---|---|---|---|---|---|")
    floors = {"spade": [], "padim": []}
    for root in a.data:
        for cdir in sorted(d for d in Path(root).iterdir() if (d / "test").is_dir()):
            cr = prepare_class(fx, cdir)
            good, bad = np.flatnonzero(cr.labels == 0), np.flatnonzero(cr.labels == 1)
            rng = np.random.default_rng(a.seed)
            counts = np.zeros((a.resamples, len(cr.labels)))
            for b in range(a.resamples):
                for group in (good, bad):
                    np.add.at(counts[b], rng.choice(group, len(group)), 1)
            for method in ("spade", "padim"):
                auprs, full = {}, {}
                for combo, maps in subset_maps(cr, s, method):
                    flat, truth = maps.reshape(-1), cr.masks.reshape(-1).astype(np.float64)
                    image = np.repeat(np.arange(len(maps)), maps[0].size)
                    order = np.argsort(-flat, kind="stable")
                    flat, truth, image = flat[order], truth[order], image[order]
                    full[combo] = weighted_ap(flat, truth, np.ones_like(truth))
                    assert abs(full[combo] - average_precision_score(cr.masks.reshape(-1), maps.reshape(-1))) < 1e-6
                    auprs[combo] = np.array([weighted_ap(flat, truth, counts[b][image]) for b in range(a.resamples)])
                table = np.stack([auprs[c] for c in ALL_COMBOS])  # [15, resamples]
                best = int(np.argmax(table.mean(1)))
                floor = float(np.mean(table.max(0) - table[best]))
                floors[method].append(floor)
                print(f"| {cr.data.name} | {method} | {len(good)} / {len(bad)} | {combo_name(ALL_COMBOS[best])} | "
                      f"{full[ALL_COMBOS[best]]:.3f} | {floor:.3f} |", flush=True)
    for method, values in floors.items():
        print(f"| **mean** | {method} | | | | {np.mean(values):.3f} |")


if __name__ == "__main__":
    main()
