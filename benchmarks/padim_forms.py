"""PaDiM's two exact forms on real classes: model size, one-image latency and pixel AUPR.

Usage: python -m benchmarks.padim_forms DATA [--classes grid,hazelnut,transistor] [--repeats 7]
For each class it fits PaDiM (layers 1,2,3, d = 550, whole frame, real ImageNet weights when found)
twice on the same features: in the low-rank form chosen when N - 1 <= 64, and forced into the
Cholesky form that classes with more than 65 images get. It reports each form's model-file bytes, the median time of
one-image scoring beside the backbone's one-image forward pass (same process, same stretch of time),
the largest relative difference of their distance grids and the pixel AUPR of each.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from sklearn.metrics import average_precision_score

from spadim.features.backbone import locate
from spadim.methods.padim import Padim
from spadim.features.config import BackboneConfig
from spadim.run.pipeline import Settings, make_extractor, prepare_class


def _median_ms(work, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def _file_bytes(model: Padim) -> int:
    buffer = io.BytesIO()
    torch.save(model.state(), buffer)
    return buffer.tell()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--classes", default="grid,hazelnut,transistor")
    parser.add_argument("--arch", default="resnet50_caffe")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    found = locate(args.arch, None)
    settings = Settings(
        backbone=BackboneConfig(arch=args.arch, weights=str(found) if found else "random", frame="whole")
    )
    fx = make_extractor(settings, methods=["padim"], layer_sets=[(1, 2, 3)])
    rows = []
    for name in args.classes.split(","):
        run = prepare_class(fx, args.data / name)
        one_path = run.data.test[:1]
        backbone_ms = _median_ms(lambda: fx(one_path, "one"), args.repeats)
        one = run.test.rows(0, 1)
        row = {"class": name, "n_train": len(run.train), "backbone_ms": round(backbone_ms, 1)}
        grids = {}
        for form in ("low-rank", "cholesky"):
            max_rank = 64 if form == "low-rank" else 0
            model = Padim(
                layers=(1, 2, 3), d=settings.config("padim").d, seed=settings.seed, max_rank=max_rank
            )
            model.fit(run.train)
            assert model.form == form, (form, model.form)
            grids[form] = model.distance_grid(run.test)
            maps, _ = model.score(run.test, run.masks.shape[-1])
            row[form] = {
                "file_gb": round(_file_bytes(model) / 1e9, 3),
                "one_image_ms": round(_median_ms(lambda m=model: m.score(one, 224), args.repeats), 1),
                "pixel_aupr": round(
                    float(average_precision_score(run.masks.reshape(-1) > 0, maps.ravel())), 5
                ),
            }
            row[form]["one_image_vs_backbone"] = round(row[form]["one_image_ms"] / backbone_ms, 2)
            del model
        low, full = grids["low-rank"].double(), grids["cholesky"].double()
        row["max_relative_difference"] = float(((low - full).abs() / full.abs().clamp_min(1e-12)).max())
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(
        f"weights: {args.arch} {'ImageNet' if found else 'RANDOM'}; torch threads {torch.get_num_threads()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
