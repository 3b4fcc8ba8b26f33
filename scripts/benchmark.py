"""Benchmark SPADE and PaDiM: where the time goes, peak memory, and the issue-8 targets.

Runs on a generated MVTec-layout class (``nut``; default 200 training and 50 test images at
256 px, cached under ``--data``) and writes ``<out>/bench.json`` plus a table with pass/fail
per target. Measured, each in a fresh process so that timings and peak memory are its own:

* the backbone alone (features of the training and test images, to layer 4: ms/img);
* per method, the real end-to-end path (``evaluate_class``: extract train, fit, stream the
  test set): fit s, inference ms/img excluding the backbone, peak RSS (``ru_maxrss``);
* the same at N=50 training images (growth with N) and with 500 test images (memory);
* SPADE's 15-subset layer sweep against one SPADE scoring with layers 1,2,3,4.

Uses ``resnet50_caffe`` ImageNet weights when a checkpoint is found, else random weights
(timings and memory do not depend on the weight values); the output says which.

    python scripts/benchmark.py [--n-train 200] [--n-test 50] [--arch resnet50_caffe] [--skip-large]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import resource
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLASS = "nut"
GIB = 1024**3


# ---------------------------------------------------------------- data


def _split(n_test: int) -> tuple[int, int]:
    """(good, per-defect-type) counts: about half good, two defect types; at least one each."""
    per_defect = max(1, n_test // 4)
    return max(1, n_test - 2 * per_defect), per_defect


def _generate(root: Path, n_train: int, n_test: int, size: int) -> Path:
    """A cached synthetic class (make_dataset is a no-op when its marker matches)."""
    from spadim.data.embedded.dataset import make_dataset

    good, per_defect = _split(n_test)
    folder = root / f"{CLASS}-n{n_train}-g{good}-d{per_defect}-s{size}"
    make_dataset(folder, classes=(CLASS,), n_train=n_train, n_test_good=good, n_test_defect=per_defect,
                 size=size, seed=0)
    return folder / CLASS


def _link(dst: Path, train: Path, test_class: Path, n_train: int | None = None) -> Path:
    """Class folder ``dst`` of symlinks: the first ``n_train`` of ``train`` and the test set of
    ``test_class`` (so that runs compared with each other share their images)."""
    from spadim.data.mvtec import list_images

    stamp = f"{train.resolve()}|{test_class.resolve()}|{n_train}"
    marker = dst / ".bench-links"
    if marker.is_file() and marker.read_text() == stamp:
        return dst
    if dst.exists():
        for p in sorted(dst.rglob("*"), key=lambda p: -len(p.parts)):
            p.unlink() if p.is_symlink() or p.is_file() else p.rmdir()
    (dst / "train" / "good").mkdir(parents=True)
    for img in list_images(train / "train" / "good")[:n_train]:
        (dst / "train" / "good" / img.name).symlink_to(img.resolve())
    for sub in ("test", "ground_truth"):
        (dst / sub).symlink_to((test_class / sub).resolve(), target_is_directory=True)
    marker.write_text(stamp)
    return dst


# ---------------------------------------------------------------- child processes


def _settings(cfg: dict, layers=(1, 2, 3)):
    from spadim.run.pipeline import Settings

    return Settings(arch=cfg["arch"], weights=cfg["weights"], resize=cfg["resize"], crop=cfg["crop"],
                    layers=tuple(layers), batch_size=cfg["batch_size"])


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # KiB on Linux


class _Clock:
    """Seconds and image counts accumulated per label."""

    def __init__(self):
        self.s: dict[str, float] = {}
        self.n: dict[str, int] = {}

    def add(self, label: str, seconds: float, n: int = 0) -> None:
        self.s[label] = self.s.get(label, 0.0) + seconds
        self.n[label] = self.n.get(label, 0) + n


def _phase(desc: str) -> str:
    return "backbone train" if desc.endswith("train") else "backbone test"


class _TimedExtractor:
    """A FeatureExtractor whose calls and streamed chunks are timed as backbone train/test."""

    def __init__(self, fx, clock: _Clock):
        self._fx, self._clock = fx, clock

    def __getattr__(self, name):
        return getattr(self._fx, name)

    def __call__(self, paths, desc: str = "features"):
        t0 = time.perf_counter()
        fs = self._fx(paths, desc)
        self._clock.add(_phase(desc), time.perf_counter() - t0, len(paths))
        return fs

    def stream(self, paths, size: int, desc: str = "features"):
        chunks = iter(self._fx.stream(paths, size, desc))
        while True:
            t0 = time.perf_counter()
            chunk = next(chunks, None)
            if chunk is None:
                return
            self._clock.add(_phase(desc), time.perf_counter() - t0, len(chunk))
            yield chunk


class _TimedMethod:
    """A method whose fit stages (fit, partial_fit, finish_fit) and score calls are timed."""

    STAGES = {"fit": "fit", "partial_fit": "fit", "finish_fit": "fit", "score": "score"}

    def __init__(self, method, clock: _Clock):
        self._m, self._clock = method, clock

    def __getattr__(self, name):
        attr = getattr(self._m, name)
        if name not in self.STAGES:
            return attr

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            out = attr(*args, **kwargs)
            n = len(args[0]) if args and hasattr(args[0], "__len__") else 0
            self._clock.add(self.STAGES[name], time.perf_counter() - t0, n)
            return self if out is self._m else out

        return timed


def _backbone_child(cfg: dict) -> dict:
    """The backbone alone, as SPADE+PaDiM extract (layers 1-3 kept, forward to layer 4)."""
    import torch
    from spadim.data.mvtec import load_class
    from spadim.run.pipeline import make_extractor

    s = _settings(cfg)
    fx = make_extractor(s, methods=["spade", "padim"], layer_sets=[s.layers])
    data = load_class(Path(cfg["class_dir"]))
    fx(data.train[: s.batch_size])  # warm-up batch, not timed
    t0 = time.perf_counter()
    train = fx(data.train)
    t1 = time.perf_counter()
    test = fx(data.test)
    t2 = time.perf_counter()
    n = len(train) + len(test)
    return {"ms_per_img": 1000 * (t2 - t0) / n, "train_s": t1 - t0, "test_s": t2 - t1, "n_images": n,
            "last_layer": fx.last, "weights_pretrained": fx.weights.pretrained,
            "weights_source": str(fx.weights.source), "weights_describe": fx.weights.describe(),
            "torch_threads": torch.get_num_threads(), "peak_rss_gib": _peak_rss_gib()}


def _method_child(cfg: dict, method: str) -> dict:
    """One method through the real end-to-end path (evaluate_class), timed per stage."""
    from spadim.data.mvtec import load_class
    from spadim.run.pipeline import Settings, evaluate_class, make_extractor

    s = _settings(cfg)
    clock = _Clock()
    raw = make_extractor(s, methods=[method], layer_sets=[s.layers])
    raw(load_class(Path(cfg["class_dir"])).train[: s.batch_size])  # warm-up batch, not timed
    fx = _TimedExtractor(raw, clock)
    s.method = lambda name, layers=None: _TimedMethod(Settings.method(s, name, layers), clock)
    t0 = time.perf_counter()
    run, metrics = evaluate_class(fx, Path(cfg["class_dir"]), s, [method])
    total = time.perf_counter() - t0
    n_train, n_test = clock.n["backbone train"], clock.n["backbone test"]
    backbone_s = clock.s["backbone train"] + clock.s["backbone test"]
    return {"n_train": n_train, "n_test": n_test, "fit_s": clock.s["fit"],
            "infer_ms_per_img": 1000 * clock.s["score"] / n_test,
            "backbone_ms_per_img": 1000 * backbone_s / (n_train + n_test), "last_layer": fx.last,
            "other_s": total - backbone_s - clock.s["fit"] - clock.s["score"], "total_s": total,
            "peak_rss_gib": _peak_rss_gib(),
            "metrics": {k: float(v) for k, v in metrics[method].items() if isinstance(v, (int, float))}}


def _sweep_child(cfg: dict) -> dict:
    """SPADE's 15-subset sweep (per-layer maps once, every subset fused) vs one 4-layer scoring."""
    from spadim.data.mvtec import load_class
    from spadim.features.extractor import ALL_COMBOS
    from spadim.run.pipeline import make_extractor

    layers = (1, 2, 3, 4)
    s = _settings(cfg, layers)
    fx = make_extractor(s, methods=["spade"], layer_sets=[layers])
    data = load_class(Path(cfg["class_dir"]))
    train, test = fx(data.train), fx(data.test)
    spade = s.method("spade", layers).fit(train)
    t0 = time.perf_counter()
    spade.score(test, s.crop)
    one = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, idx = spade.neighbours(test)
    grids = spade.layer_grids(test, idx)
    t1 = time.perf_counter()
    for combo in ALL_COMBOS:
        spade.fuse([grids[l] for l in combo], s.crop)
    t2 = time.perf_counter()
    return {"one_score_s": one, "sweep_s": t2 - t0, "grids_s": t1 - t0, "fuse_s": t2 - t1,
            "ratio": (t2 - t0) / one, "n_combos": len(ALL_COMBOS), "n_train": len(train), "n_test": len(test),
            "peak_rss_gib": _peak_rss_gib()}


def _padim_sweep_child(cfg: dict) -> dict:
    """PaDiM's 15 fits and scorings on one set of features (slow at d=550: opt-in)."""
    from spadim.data.mvtec import load_class
    from spadim.features.extractor import ALL_COMBOS
    from spadim.run.pipeline import make_extractor

    s = _settings(cfg, (1, 2, 3, 4))
    fx = make_extractor(s, methods=["padim"], layer_sets=[(1, 2, 3, 4)])
    data = load_class(Path(cfg["class_dir"]))
    train, test = fx(data.train), fx(data.test)
    per = {}
    for combo in ALL_COMBOS:
        t0 = time.perf_counter()
        s.method("padim", combo).fit(train).score(test, s.crop)
        per["+".join(map(str, combo))] = time.perf_counter() - t0
    return {"per_combo_s": per, "sweep_s": sum(per.values()), "peak_rss_gib": _peak_rss_gib()}


def _entry(conn, target, args) -> None:
    try:
        out = target(*args)
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which carries on
        out = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    conn.send(out)
    conn.close()


def _child(target, *args) -> dict:
    """Run ``target(*args)`` in a fresh process; its result, or {"error": ...}.

    The forkserver context is used because a spawned or forked child inherits the parent's
    resident size in ``ru_maxrss``; a child of the (small) fork server does not.
    """
    ctx = mp.get_context("forkserver")
    recv, send = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_entry, args=(send, target, args))
    p.start()
    send.close()
    try:
        out = recv.recv()
    except EOFError:
        out = None
    p.join()
    if out is None:
        out = {"error": f"process died with exit code {p.exitcode} (killed for memory?)"}
    if "error" in out:
        print(f"!!! {target.__name__.strip('_')}: {out['error']}", file=sys.stderr)
        if "traceback" in out:
            print(out["traceback"], file=sys.stderr)
    return out


# ---------------------------------------------------------------- report


def _ok(r: dict | None) -> bool:
    return bool(r) and "error" not in r


def _target(name: str, value, limit: float, unit: str = "") -> dict:
    bad = value is None or (isinstance(value, float) and math.isnan(value))
    return {"name": name, "value": None if bad else round(value, 4), "limit": limit, "unit": unit,
            "pass": None if bad else bool(value <= limit)}


def _targets(b: dict) -> list[dict]:
    bb = b["backbone_ms_per_img"]
    sp, pd, n50, big, sw = b["spade"], b["padim"], b["n50"], b.get("large"), b["sweep"]

    def get(r, key):
        return r[key] if _ok(r) else None

    def ratio(v, ref):
        return None if v is None or not ref else v / ref

    d = b["padim_d"]
    t = [
        _target("PaDiM inference / backbone (per image)", ratio(get(pd, "infer_ms_per_img"), bb), 1.5, "x"),
        _target("SPADE inference / backbone (per image, K=5)", ratio(get(sp, "infer_ms_per_img"), bb), 4.0, "x"),
        _target("PaDiM fit / backbone over the training images",
                ratio(get(pd, "fit_s"), bb and bb * b["n_train"] / 1000), 2.0, "x"),
        _target(f"SPADE peak RSS, N={b['n_train']}", get(sp, "peak_rss_gib"), 6.0, "GiB"),
        _target(f"PaDiM peak RSS, N={b['n_train']}, d={d}", get(pd, "peak_rss_gib"), 6.0, "GiB"),
    ]
    p50, p200 = get(n50["padim"], "peak_rss_gib"), get(pd, "peak_rss_gib")
    growth = None if p50 is None or p200 is None else abs(p200 - p50) / p50
    t.append(_target(f"PaDiM peak RSS change N={n50['n_train']} -> N={b['n_train']}", growth, 0.10, "fraction"))
    if big is not None:
        for m in ("spade", "padim"):
            t.append(_target(f"{m.upper() if m == 'spade' else 'PaDiM'} peak RSS, "
                             f"{big['n_train']} train / {big['n_test']} test", get(big[m], "peak_rss_gib"), 6.0,
                             "GiB"))
    t.append(_target("SPADE 15-subset sweep / one scoring with layers 1,2,3,4", get(sw, "ratio"), 1.3, "x"))
    return t


def _fmt(v, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def _table(b: dict) -> str:
    bb = b["backbone_ms_per_img"]
    m = b["machine"]
    w = f"ImageNet ({b['weights_source']})" if b["weights"] == "imagenet" else "RANDOM (untrained)"
    gpu = "GPU present, unused" if m["gpu"] else "no GPU"
    lines = [
        f"spadim benchmark: {m['nproc']} CPU cores, {gpu}, torch {m['torch']} ({m['torch_threads']} threads)",
        f"arch {b['arch']}, weights {w}",
        f"data: synthetic '{CLASS}', {b['n_train']} train / {b['n_test']} test at {b['image_size']} px, "
        f"crop {b['crop']}; PaDiM d={b['padim_d']}, SPADE K={b['k']}, batch {b['batch_size']}",
        "",
        f"backbone alone (load + forward to layer 4): {_fmt(bb, '.1f')} ms/img "
        f"({b['backbone'].get('n_images', '-')} images)",
        "",
        "| run | method | fit s | infer ms/img | infer / backbone | backbone ms/img in run | peak RSS GiB "
        "| total s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    runs = [(f"N={b['n_train']}, {b['n_test']} test", b)]
    runs.append((f"N={b['n50']['n_train']}, {b['n50']['n_test']} test", b["n50"]))
    if b.get("large"):
        runs.append((f"N={b['large']['n_train']}, {b['large']['n_test']} test", b["large"]))
    for label, block in runs:
        for name in ("spade", "padim"):
            r = block[name]
            if not _ok(r):
                lines.append(f"| {label} | {name} | failed: {r.get('error', '?')[:60]} | | | | | |")
                continue
            lines.append(f"| {label} | {name} | {r['fit_s']:.2f} | {r['infer_ms_per_img']:.1f} | "
                         f"{_fmt(r['infer_ms_per_img'] / bb if bb else None)}x | "
                         f"{r['backbone_ms_per_img']:.1f} | "
                         f"{r['peak_rss_gib']:.2f} | {r['total_s']:.1f} |")
    sw = b["sweep"]
    if _ok(sw):
        lines += ["", f"SPADE layer sweep ({sw['n_combos']} subsets of layers 1-4): "
                      f"one scoring {sw['one_score_s']:.1f} s;"
                      f" sweep {sw['sweep_s']:.1f} s (neighbours + per-layer maps {sw['grids_s']:.1f} s, "
                      f"fusions {sw['fuse_s']:.1f} s) = {sw['ratio']:.2f}x"]
    ps = b["padim_sweep"]
    lines.append(f"PaDiM layer sweep: {ps['note']}")
    lines += ["", "| target | value | limit | result |", "|---|---|---|---|"]
    for t in b["targets"]:
        res = "skipped/failed" if t["pass"] is None else ("PASS" if t["pass"] else "FAIL")
        unit = t["unit"]
        lines.append(f"| {t['name']} | {_fmt(t['value'], '.3f')} {unit} | <= {t['limit']} {unit} | {res} |")
    return "\n".join(lines)


# ---------------------------------------------------------------- main


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


def _stage(msg: str, t0: float) -> None:
    print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", file=sys.stderr, flush=True)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=200, help="training images (default: %(default)s)")
    ap.add_argument("--n-train-small", type=int, default=50,
                    help="training images of the growth run (default: %(default)s)")
    ap.add_argument("--n-test", type=int, default=50, help="test images (default: %(default)s)")
    ap.add_argument("--n-test-large", type=int, default=500, help="test images of the memory run (%(default)s)")
    ap.add_argument("--size", type=int, default=256, help="generated image size in px (default: %(default)s)")
    ap.add_argument("--crop", type=int, default=224, help="network input crop; resize is crop*8/7 (%(default)s)")
    ap.add_argument("--arch", default="resnet50_caffe", help="backbone (default: %(default)s)")
    ap.add_argument("--weights", default=None,
                    help="checkpoint file/folder or 'random' (default: a found ImageNet checkpoint, else random)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--data", default="runs/bench/data", help="generated data cache (default: %(default)s)")
    ap.add_argument("--out", default="runs/bench", help="folder for bench.json (default: %(default)s)")
    ap.add_argument("--skip-large", action="store_true", help="skip the 500-test-image memory run")
    ap.add_argument("--padim-sweep", action="store_true", help="also time PaDiM's 15 fits+scorings (slow)")
    args = ap.parse_args(argv)
    if not os.environ.get("SPADIM_WEIGHTS") and (REPO.parent / "shared" / "weights").is_dir():
        os.environ["SPADIM_WEIGHTS"] = str(REPO.parent / "shared" / "weights")  # as the Makefile does
    t0 = time.perf_counter()
    weights, kind = _resolve_weights(args.arch, args.weights)
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    _stage(f"generating / reusing data under {data}", t0)
    main_cls = _generate(data, args.n_train, args.n_test, args.size)
    small_cls = _link(data / f"links-n{args.n_train_small}-of-{main_cls.parent.name}" / CLASS, main_cls, main_cls,
                      args.n_train_small)
    large_cls = None
    if not args.skip_large:
        test_cls = _generate(data, 1, args.n_test_large, args.size)
        large_cls = _link(data / f"links-{main_cls.parent.name}-with-{test_cls.parent.name}" / CLASS, main_cls,
                          test_cls)

    from spadim.run.pipeline import Settings

    cfg = {"arch": args.arch, "weights": weights, "resize": args.crop * 8 // 7, "crop": args.crop,
           "batch_size": args.batch_size, "class_dir": str(main_cls)}
    s = Settings(arch=args.arch, weights=weights, resize=cfg["resize"], crop=cfg["crop"])
    import torch

    b: dict = {"arch": args.arch, "weights": kind, "weights_source": weights if kind == "imagenet" else "random",
               "image_size": args.size, "crop": args.crop, "resize": cfg["resize"], "padim_d": s.padim_d,
               "k": s.k, "batch_size": args.batch_size, "stream_size": s.stream_size,
               "machine": {"nproc": os.cpu_count(), "gpu": torch.cuda.is_available(), "torch": torch.__version__,
                           "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                           "cpu": platform.processor() or platform.machine()}}

    _stage("backbone alone", t0)
    b["backbone"] = _child(_backbone_child, cfg)
    b["backbone_ms_per_img"] = b["backbone"].get("ms_per_img")
    for name in ("spade", "padim"):
        _stage(f"{name}: {args.n_train} train / {args.n_test} test", t0)
        b[name] = _child(_method_child, cfg, name)
    b["n_train"] = b["padim"].get("n_train", args.n_train)
    b["n_test"] = b["padim"].get("n_test", args.n_test)

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

    _stage("SPADE layer sweep", t0)
    b["sweep"] = _child(_sweep_child, cfg)
    if args.padim_sweep:
        _stage("PaDiM layer sweep", t0)
        b["padim_sweep"] = _child(_padim_sweep_child, cfg)
        b["padim_sweep"]["note"] = (f"15 fits + scorings {b['padim_sweep'].get('sweep_s', float('nan')):.1f} s, "
                                    "measured")
    else:
        pd = b["padim"]
        one = pd["fit_s"] + pd["infer_ms_per_img"] * b["n_test"] / 1000 if _ok(pd) else None
        b["padim_sweep"] = {"measured": False, "one_fit_score_s_layers_123": one,
                            "note": f"not measured (--padim-sweep); one fit + scoring with layers 1,2,3 takes "
                                    f"{_fmt(one, '.1f')} s"}
    b["targets"] = _targets(b)
    b["elapsed_s"] = time.perf_counter() - t0
    path = out / "bench.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(b, indent=2, default=str) + "\n")
    tmp.replace(path)
    print(_table(b))
    print(f"\nwrote {path} in {b['elapsed_s']:.0f} s")
    return b


if __name__ == "__main__":
    main()
