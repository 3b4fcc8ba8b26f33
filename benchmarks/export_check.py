"""The ONNX export against the torch path on real classes: map agreement and per-image latency.

Usage: python -m benchmarks.export_check DATA [--classes grid,hazelnut,transistor] [--methods spade,padim,patchcore]
For each class and method it fits a model (each method's own layers, whole frame, real ImageNet weights when
found), exports it, scores the class's test images with both runtimes and reports the largest relative
difference of the maps (|onnx - torch| / |torch|, over every pixel) and of the image scores, whether the
decisions agree, and the median one-image latency of each runtime (backbone included in both; the same
process, interleaved). With OpenVINO installed it also runs the export in OpenVINO unchanged (float32
inference precision asked for explicitly).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from spadim.cli import main as spadim
from spadim.data.mvtec import load_class, load_images
from spadim.inspect import Inspector


def _median_ms(score, frames, repeats: int = 1) -> float:
    times = []
    for _ in range(repeats):
        for i in range(len(frames)):
            start = time.perf_counter()
            score(frames[i : i + 1])
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def _openvino(export: Path, frames: np.ndarray):
    try:
        import openvino as ov
    except ImportError:
        return None
    from spadim.data.mvtec import normalize

    # float32 throughout: the CPU plugin's default on CPUs with bfloat16 units is bfloat16 inference
    compiled = ov.Core().compile_model(str(export / "model.onnx"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})

    def run(batch):
        return compiled(normalize(batch))

    return np.asarray(run(frames)[compiled.output(0)]), run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--classes", default="grid,hazelnut,transistor")
    parser.add_argument("--methods", default="spade,padim,patchcore")
    parser.add_argument("--arch", default="resnet50_caffe")
    parser.add_argument("--out", type=Path, default=Path("runs/export-check"))
    args = parser.parse_args()
    for name in args.classes.split(","):
        data = load_class(args.data / name)
        for method in args.methods.split(","):
            model = args.out / f"{name}_{method}.pt"
            export = args.out / f"{name}_{method}_onnx"
            layers = "2,3" if method == "patchcore" else "1,2,3"  # each method's own
            fit = ["fit", str(args.data / name), "--method", method, "--layers", layers, "--out", str(model)]
            fit += ["--arch", args.arch]
            if spadim(fit) != 0 or spadim(["export", str(model), "--out", str(export)]) != 0:
                return 1
            torch_side, onnx_side = (
                Inspector.load(model, batch_size=1),
                Inspector.load(export, runtime="onnx"),
            )
            frames, _ = load_images(data.test, torch_side.pre)
            maps, scores, _ = torch_side.score_frames(frames)
            onnx_maps, onnx_scores, _ = onnx_side.score_frames(frames)
            point = torch_side.operating_point()
            torch_ok = [p.decision for p in torch_side.predict_batch(list(frames), data.test, point)]
            onnx_ok = [p.decision for p in onnx_side.predict_batch(list(frames), data.test, point)]
            row = {
                "class": name,
                "method": method,
                "form": getattr(torch_side.method, "form", None),
                "export_gb": round(sum(f.stat().st_size for f in export.iterdir()) / 1e9, 3),
                "map_max_relative": float((np.abs(onnx_maps - maps) / np.abs(maps)).max()),
                "score_max_relative": float((np.abs(onnx_scores - scores) / np.abs(scores)).max()),
                "decisions_agree": torch_ok == onnx_ok,
            }
            for _ in range(2):  # interleaved, the second round counts (caches and threads warm)
                row["torch_ms"] = round(_median_ms(torch_side.score_frames, frames), 1)
                row["onnxruntime_ms"] = round(_median_ms(onnx_side.score_frames, frames), 1)
            row["onnx_vs_torch"] = round(row["onnxruntime_ms"] / row["torch_ms"], 2)
            vino = _openvino(export, frames)
            if vino is not None:
                row["openvino_map_max_relative"] = float((np.abs(vino[0] - maps) / np.abs(maps)).max())
                row["openvino_ms"] = round(_median_ms(lambda f, c=vino[1]: c(f), frames), 1)
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
