"""The command line: which cases run, in what order, and bench.json."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from .backbone import _backbone_child
from .common import CASES, CLASS, METHODS, REPO, _child, _generate, _link, _many, _stage
from .inspection import _calibration_child, _stream_child
from .methods import _method_child
from .report import _fmt, _table
from .serving import _serve_available, _serve_child
from .sweep import _padim_sweep_child, _sweep_child
from .targets import _ok, _targets


def _resolve_weights(arch: str, spec: str | None) -> tuple[str, str]:
    """(weights argument for Settings, "imagenet" or "random")."""
    from spadim.features.backbone import find_checkpoint

    if spec == "random":
        return "random", "random"
    path = find_checkpoint(arch, spec)[0]
    if path is None:
        if spec:
            sys.exit(f"benchmark: no checkpoint for {arch} at {spec}")
        return "random", "random"
    return str(path), "imagenet"


def _cases(only: str | None, skip_large: bool) -> list[str]:
    if only is None:
        chosen = list(CASES)
    else:
        chosen = [c.strip() for c in only.split(",") if c.strip()]
        unknown = sorted(set(chosen) - set(CASES))
        if unknown or not chosen:
            sys.exit(f"benchmark: --only {only!r}: choose among {','.join(CASES)}")
    return [c for c in CASES if c in chosen and not (c == "large" and skip_large)]


def _sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        sizes = []
    if not sizes or sizes[0] < 1:
        sys.exit(f"benchmark: --stream-sizes {text!r}: give image counts such as 200,2000")
    return sizes


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _inspect_cases(b: dict, args, cfg: dict, main_cls: Path, data: Path, out: Path, t0: float) -> None:
    """The inspection cases: fit_model's calibration cost, the predict stream and the server (PaDiM model shared)."""
    import shutil

    from spadim.data.mvtec import load_class

    cases = b["cases"]
    models = out / "models"
    models.mkdir(parents=True, exist_ok=True)
    padim_model = None  # fitted in this invocation (frame whole), for stream and serve
    try:
        if "calibration" in cases:
            b["calibration"] = {}
            for name in ("spade", "padim", "patchcore"):
                _stage(f"fit_model {name}: {args.n_train} train, leave-one-out calibration", t0)
                path = models / f"{name}-whole.spadim"
                b["calibration"][name] = r = _child(_calibration_child, cfg, name, str(path))
                if name == "padim" and _ok(r):
                    padim_model = path
                elif path.exists():
                    path.unlink()
        if ("stream" in cases or "serve" in cases) and padim_model is None:
            _stage(f"fit_model padim: {args.n_train} train (model for stream / serve)", t0)
            path = models / "padim-whole.spadim"
            fitted = _child(_calibration_child, cfg, "padim", str(path))
            padim_model = path if _ok(fitted) else None
        else:
            fitted = b.get("calibration", {}).get("padim")
        if "stream" in cases:
            sources = load_class(main_cls).train + load_class(main_cls).test
            sizes = _sizes(args.stream_sizes)
            paths = _many(data / f"stream-{main_cls.parent.name}", sources, sizes[-1])
            b["stream"] = {"model": fitted, "runs": [], "sizes": sizes}
            for n in sizes:
                _stage(f"predict stream: {n} images", t0)
                dst = out / "stream" / f"n{n}"
                if dst.exists():
                    shutil.rmtree(dst)
                if padim_model is None:
                    r = {"error": "no PaDiM model (its fit failed)"}
                else:
                    r = _child(_stream_child, cfg, str(padim_model), [str(p) for p in paths[:n]], str(dst))
                b["stream"]["runs"].append({"n": n, **r})
                if dst.exists():
                    shutil.rmtree(dst)  # thousands of pictures; the numbers are in bench.json
            b["stream"]["last_layer"] = next((r["last_layer"] for r in b["stream"]["runs"] if _ok(r)), None)
        if "serve" in cases:
            available, reason = _serve_available()
            if not available:
                b["serve"] = {"available": False, "reason": reason}
            elif padim_model is None:
                b["serve"] = {"available": True, "error": "no PaDiM model (its fit failed)"}
            else:
                _stage(
                    f"serve: {args.serve_requests} requests, then {args.serve_clients} clients x "
                    f"{args.serve_total} requests",
                    t0,
                )
                test = [str(p) for p in load_class(main_cls).test]
                b["serve"] = {
                    "available": True,
                    **_child(
                        _serve_child,
                        cfg,
                        str(padim_model),
                        test,
                        args.serve_requests,
                        args.serve_clients,
                        args.serve_total,
                    ),
                }
    finally:
        if padim_model is not None and padim_model.exists():
            padim_model.unlink()  # about 2 GB at d=550; refitted by every run
        for side in models.glob("*.spadim.*"):  # fit's audit and report beside each model
            shutil.rmtree(side) if side.is_dir() else side.unlink()
        for folder in (models, out / "stream"):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=200, help="training images (default: %(default)s)")
    ap.add_argument(
        "--n-train-small",
        type=int,
        default=50,
        help="training images of the growth run (default: %(default)s)",
    )
    ap.add_argument("--n-test", type=int, default=50, help="test images (default: %(default)s)")
    ap.add_argument(
        "--n-test-large", type=int, default=500, help="test images of the memory run (%(default)s)"
    )
    ap.add_argument("--size", type=int, default=256, help="generated image size in px (default: %(default)s)")
    ap.add_argument(
        "--crop", type=int, default=224, help="network input crop; resize is crop*8/7 (%(default)s)"
    )
    ap.add_argument("--arch", default="resnet50_caffe", help="backbone (default: %(default)s)")
    ap.add_argument(
        "--weights",
        default=None,
        help="checkpoint file/folder or 'random' (default: a found ImageNet checkpoint, else random)",
    )
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--data", default="runs/bench/data", help="generated data cache (default: %(default)s)")
    ap.add_argument("--out", default="runs/bench", help="folder for bench.json (default: %(default)s)")
    ap.add_argument(
        "--only", default=None, help=f"comma-separated cases to run, of {','.join(CASES)} (default: all)"
    )
    ap.add_argument("--skip-large", action="store_true", help="skip the 500-test-image memory run")
    ap.add_argument("--padim-sweep", action="store_true", help="also time PaDiM's 15 fits+scorings (slow)")
    ap.add_argument(
        "--stream-sizes",
        default="200,2000",
        help="images streamed through predict, one fresh process each (default: %(default)s)",
    )
    ap.add_argument(
        "--serve-requests",
        type=int,
        default=20,
        help="sequential warm requests for the server's median latency (default: %(default)s)",
    )
    ap.add_argument("--serve-clients", type=int, default=4, help="concurrent clients (default: %(default)s)")
    ap.add_argument(
        "--serve-total",
        type=int,
        default=100,
        help="requests of the concurrent clients together (default: %(default)s)",
    )
    args = ap.parse_args(argv)
    cases = _cases(args.only, args.skip_large)
    if not os.environ.get("SPADIM_WEIGHTS") and (REPO.parent / "shared" / "weights").is_dir():
        os.environ["SPADIM_WEIGHTS"] = str(REPO.parent / "shared" / "weights")  # as the Makefile does
    t0 = time.perf_counter()
    weights, kind = _resolve_weights(args.arch, args.weights)
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    _stage(f"generating / reusing data under {data}", t0)
    main_cls = _generate(data, args.n_train, args.n_test, args.size)
    small_cls = large_cls = None
    if "growth" in cases:
        small_cls = _link(
            data / f"links-n{args.n_train_small}-of-{main_cls.parent.name}" / CLASS,
            main_cls,
            main_cls,
            args.n_train_small,
        )
    if "large" in cases:
        test_cls = _generate(data, 1, args.n_test_large, args.size)
        large_cls = _link(
            data / f"links-{main_cls.parent.name}-with-{test_cls.parent.name}" / CLASS, main_cls, test_cls
        )

    from spadim.features.config import BackboneConfig
    from spadim.run.pipeline import Settings

    cfg = {
        "arch": args.arch,
        "weights": weights,
        "resize": args.crop * 8 // 7,
        "crop": args.crop,
        "batch_size": args.batch_size,
        "class_dir": str(main_cls),
    }
    s = Settings(
        backbone=BackboneConfig(arch=args.arch, weights=weights, resize=cfg["resize"], crop=cfg["crop"])
    )
    import torch

    b: dict = {
        "arch": args.arch,
        "weights": kind,
        "weights_source": weights if kind == "imagenet" else "random",
        "image_size": args.size,
        "crop": args.crop,
        "resize": cfg["resize"],
        "padim_d": s.config("padim").d,
        "k": s.config("spade").k,
        "batch_size": args.batch_size,
        "stream_size": s.stream_size,
        "cases": cases,
        "n_train": args.n_train,
        "n_test": args.n_test,
        "machine": {
            "nproc": os.cpu_count(),
            "gpu": torch.cuda.is_available(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
            "cpu_model": _cpu_model(),
            "load_avg_start": list(os.getloadavg()),
        },
    }
    from spadim.methods.nearest import TorchSearch, FaissSearch, _time, probe_report

    generator = torch.Generator().manual_seed(0)  # SPADE's layer-1 shape: 3136 queries x 5 images x 3136
    queries, gallery = (
        torch.randn(3136, 256, generator=generator),
        torch.randn(15680, 256, generator=generator),
    )
    searches = (TorchSearch(), FaissSearch())
    b["search"] = {
        **probe_report(),
        "spade_layer1_s": {search.name: _time(search, queries, gallery, 2) for search in searches},
    }
    # PatchCore's shape: one 224 px image's 28 x 28 patches against a 10% bank of 200 images
    queries = torch.randn(784, 1024, generator=generator)
    gallery = torch.randn(15680, 1024, generator=generator)
    b["search"]["patchcore_s"] = {search.name: _time(search, queries, gallery, 2) for search in searches}

    if "backbone" in cases:
        _stage("backbone alone", t0)
        b["backbone"] = _child(_backbone_child, cfg)
        b["backbone_ms_per_img"] = b["backbone"].get("ms_per_img")
    if "methods" in cases:
        for name in METHODS:
            _stage(f"{name}: {args.n_train} train / {args.n_test} test", t0)
            b[name] = _child(_method_child, cfg, name)
        b["n_train"] = b["padim"].get("n_train", args.n_train)
        b["n_test"] = b["padim"].get("n_test", args.n_test)

    if "growth" in cases:
        b["n50"] = {"n_train": args.n_train_small, "n_test": b["n_test"]}
        for name in ("spade", "padim"):
            _stage(f"{name}: {args.n_train_small} train / {args.n_test} test", t0)
            b["n50"][name] = _child(_method_child, {**cfg, "class_dir": str(small_cls)}, name)
        # same network depth as the backbone-alone run (SPADE keeps the pooled layer-4 vector)
        b["n50"]["backbone_ms_per_img"] = b["n50"]["spade"].get("backbone_ms_per_img")

    if large_cls is not None:
        b["large"] = {"n_train": b["n_train"]}
        for name in ("spade", "padim"):
            _stage(f"{name}: {args.n_train} train / {args.n_test_large} test (memory)", t0)
            b["large"][name] = _child(_method_child, {**cfg, "class_dir": str(large_cls)}, name)
        b["large"]["n_test"] = b["large"]["padim"].get("n_test", args.n_test_large)
    else:
        b["large"] = None

    if "sweep" in cases:
        _stage("SPADE layer sweep", t0)
        b["sweep"] = _child(_sweep_child, cfg)
        if args.padim_sweep:
            _stage("PaDiM layer sweep", t0)
            b["padim_sweep"] = _child(_padim_sweep_child, cfg)
            b["padim_sweep"]["note"] = (
                f"15 fits + scorings {b['padim_sweep'].get('sweep_s', float('nan')):.1f} s, measured"
            )
        else:
            pd = b.get("padim")
            one = pd["fit_s"] + pd["infer_ms_per_img"] * b["n_test"] / 1000 if _ok(pd) else None
            b["padim_sweep"] = {
                "measured": False,
                "one_fit_score_s_layers_123": one,
                "note": f"not measured (--padim-sweep); one fit + scoring with layers 1,2,3 takes "
                f"{_fmt(one, '.1f')} s",
            }

    if {"calibration", "stream", "serve"} & set(cases):
        _inspect_cases(b, args, cfg, main_cls, data, out, t0)

    b["targets"] = _targets(b)
    b["elapsed_s"] = time.perf_counter() - t0
    b["machine"]["load_avg_end"] = list(os.getloadavg())
    path = out / "bench.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(b, indent=2, default=str) + "\n")
    tmp.replace(path)
    print(_table(b))
    load = "/".join(f"{x:.2f}" for x in b["machine"]["load_avg_end"])
    print(f"\nwrote {path} in {b['elapsed_s']:.0f} s (load average at the end {load})")
    return b
