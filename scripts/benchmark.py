"""Benchmark SPADE and PaDiM on the embedded data: fit time, per-image inference, peak memory,
and the cost of the 15-combination layer sweep against one backbone pass per image.

Each method runs in a fresh process so that its peak resident memory is its own.
Timings do not depend on the weight values, so an untrained network is used when no
ImageNet checkpoint is found (the output says which).

    python scripts/benchmark.py [--data data/spadim-toy] [--arch wide_resnet50_2] [--classes nut]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time
from pathlib import Path

import torch


def _weights(arch: str, spec: str | None) -> str | None:
    from spadim.backbone import find_checkpoint

    return spec or (None if find_checkpoint(arch)[0] else "random")


def _method_run(args, method: str, q) -> None:
    from spadim.data import load_class
    from spadim.pipeline import Settings, make_extractor

    s = Settings(arch=args.arch, weights=_weights(args.arch, args.weights), layers=(1, 2, 3))
    fx = make_extractor(s)
    data = load_class(Path(args.data) / args.cls)
    t0 = time.perf_counter()
    train = fx(data.train)
    t1 = time.perf_counter()
    model = s.method(method).fit(train)
    t2 = time.perf_counter()
    test = fx(data.test)
    t3 = time.perf_counter()
    model.score(test, s.crop)
    t4 = time.perf_counter()
    q.put({"method": method, "weights": fx.weights.describe()[:60], "n_train": len(train), "n_test": len(test),
           "extract_train_s": t1 - t0, "fit_s": t2 - t1, "fit_total_s": t2 - t0,
           "infer_ms_per_image": 1000 * (t4 - t2) / len(test), "backbone_ms_per_image": 1000 * (t3 - t2) / len(test),
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def _sweep_run(args, q) -> None:
    from spadim.features import ALL_COMBOS
    from spadim.pipeline import Settings, make_extractor, prepare_class, score_class

    s = Settings(arch=args.arch, weights=_weights(args.arch, args.weights))
    fx = make_extractor(s)
    t0 = time.perf_counter()
    run = prepare_class(fx, Path(args.data) / args.cls)
    t1 = time.perf_counter()
    per = {}
    for combo in ALL_COMBOS:
        c0 = time.perf_counter()
        score_class(run, s, ["spade", "padim"], combo)
        per["+".join(map(str, combo))] = time.perf_counter() - c0
    q.put({"images": fx.n_forward, "backbone_pass_s": t1 - t0, "scoring_s": per,
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def _child(target, *a):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*a, q))
    p.start()
    out = q.get()
    p.join()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/spadim-toy")
    ap.add_argument("--classes", default="nut", help="comma-separated classes (default: %(default)s)")
    ap.add_argument("--arch", default="wide_resnet50_2")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--no-sweep", action="store_true", help="skip the layer-sweep benchmark")
    args = ap.parse_args()
    if not Path(args.data).is_dir():
        from spadim.synth import make_dataset

        make_dataset(args.data)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, arch {args.arch}")
    for cls in args.classes.split(","):
        args.cls = cls
        print(f"\n## class {cls}\n")
        print("| method | n_train | n_test | backbone train s | fit s | fit total s | infer ms/img (backbone) | peak RSS MiB |")
        print("|---|---|---|---|---|---|---|---|")
        for method in ("spade", "padim"):
            r = _child(_method_run, args, method)
            print(f"| {method} | {r['n_train']} | {r['n_test']} | {r['extract_train_s']:.1f} | {r['fit_s']:.2f} | "
                  f"{r['fit_total_s']:.1f} | {r['infer_ms_per_image']:.0f} ({r['backbone_ms_per_image']:.0f}) | {r['peak_rss_mib']:.0f} |")
        print(f"\nweights: {r['weights']}")
        if not args.no_sweep:
            r = _child(_sweep_run, args)
            total = sum(r["scoring_s"].values())
            print(f"\nlayer sweep ({r['images']} images through the backbone once): backbone {r['backbone_pass_s']:.1f} s, "
                  f"scoring of 15 combinations x (SPADE + PaDiM) {total:.1f} s, peak RSS {r['peak_rss_mib']:.0f} MiB; "
                  f"re-running the backbone per combination would add {14 * r['backbone_pass_s']:.0f} s")
            print("per combination (s): " + ", ".join(f"{k} {v:.1f}" for k, v in r["scoring_s"].items()))


if __name__ == "__main__":
    main()
