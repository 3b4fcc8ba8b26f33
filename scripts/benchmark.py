"""Benchmark SPADE, PaDiM and PatchCore: where the time goes, peak memory, the issue-8, -17 and -18 targets.

Runs on a generated MVTec-layout class (``nut``; default 200 training and 50 test images at
256 px, cached under ``--data``) and writes ``<out>/bench.json`` plus a table with pass/fail
per target. Measured, each in a fresh process so that timings and peak memory are its own:

* the backbone alone (features of the training and test images, to layer 4: ms/img);
* per method, the real end-to-end path (``evaluate_class``: extract train, fit, stream the
  test set): fit s, inference ms/img excluding the backbone, peak RSS (``ru_maxrss``); for
  PatchCore (layers 2+3, coreset 0.1) also the greedy coreset selection's seconds, compared with
  the backbone time over the training images of the same run (forward to layer 3);
* the nearest-neighbour backends (issue 18): what the probe measured and picked, and each
  backend's time on SPADE's layer-1 search and on PatchCore's (one image against the bank);
* the same at N=50 training images (growth with N) and with 500 test images (memory);
* SPADE's 15-subset layer sweep against one SPADE scoring with layers 1,2,3,4;
* the inspection path (issue 17; ``frame="whole"`` as ``spadim fit``, ``predict`` and ``serve``):
  ``fit_model``'s out-of-fold calibration seconds against features + final fit, SPADE and PaDiM
  (case ``calibration``); ``predict_paths`` over 200 and 2,000 distinct paths (symlinks cycling
  over the class's images), each size in a fresh process for its peak RSS, against the backbone
  alone over the same frames and batches (``stream``); ``spadim serve`` on 127.0.0.1 at an
  OS-picked port: median warm latency of one-image ``POST /predict`` against one batch-1 backbone
  forward in the same process, then concurrent clients, which must see no error (``serve``;
  reported as "serve: not available" when ``spadim.serve`` does not import).

Uses ``resnet50_caffe`` ImageNet weights when a checkpoint is found, else random weights
(timings and memory do not depend on the weight values); the output says which.

    python scripts/benchmark.py [--n-train 200] [--n-test 50] [--arch resnet50_caffe] [--skip-large]
        [--only calibration,stream,serve] [--stream-sizes 200,2000] [--serve-requests 20]
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
    make_dataset(
        folder,
        classes=(CLASS,),
        n_train=n_train,
        n_test_good=good,
        n_test_defect=per_defect,
        size=size,
        seed=0,
    )
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


def _many(dst: Path, sources: list[Path], n: int) -> list[Path]:
    """``n`` distinct paths (symlinks ``00000_<name>``, ...) cycling over ``sources``, made once."""
    names = [f"{i:05d}_{sources[i % len(sources)].name}" for i in range(n)]
    stamp = "|".join(str(p.resolve()) for p in sources) + f"|{n}"
    marker = dst / ".bench-links"
    if not (marker.is_file() and marker.read_text() == stamp):
        if dst.exists():
            for p in dst.iterdir():
                p.unlink()
        dst.mkdir(parents=True, exist_ok=True)
        for i, name in enumerate(names):
            (dst / name).symlink_to(sources[i % len(sources)].resolve())
        marker.write_text(stamp)
    return [dst / name for name in names]


# ---------------------------------------------------------------- child processes


def _settings(cfg: dict, layers=(1, 2, 3)):
    from spadim.run.pipeline import Settings

    return Settings(
        arch=cfg["arch"],
        weights=cfg["weights"],
        resize=cfg["resize"],
        crop=cfg["crop"],
        layers=tuple(layers),
        batch_size=cfg["batch_size"],
    )


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
    return {
        "ms_per_img": 1000 * (t2 - t0) / n,
        "train_s": t1 - t0,
        "test_s": t2 - t1,
        "n_images": n,
        "last_layer": fx.last,
        "weights_pretrained": fx.weights.pretrained,
        "weights_source": str(fx.weights.source),
        "weights_describe": fx.weights.describe(),
        "torch_threads": torch.get_num_threads(),
        "peak_rss_gib": _peak_rss_gib(),
    }


def _method_child(cfg: dict, method: str) -> dict:
    """One method through the real end-to-end path (evaluate_class), timed per stage; the extractor
    stops at the method's last layer (PatchCore: 2+3, so layer 3)."""
    import spadim.methods.patchcore as patchcore
    from spadim.data.mvtec import load_class
    from spadim.run.pipeline import Settings, evaluate_class, make_extractor

    s = _settings(cfg)
    clock = _Clock()
    greedy = patchcore.greedy_coreset

    def timed_coreset(*args, **kwargs):
        t0 = time.perf_counter()
        picked = greedy(*args, **kwargs)
        clock.add("coreset", time.perf_counter() - t0, len(args[0]))
        clock.add("coreset kept", 0.0, len(picked))
        return picked

    patchcore.greedy_coreset = timed_coreset
    raw = make_extractor(s, methods=[method], layer_sets=[s.method_layers(method)])
    raw(load_class(Path(cfg["class_dir"])).train[: s.batch_size])  # warm-up batch, not timed
    fx = _TimedExtractor(raw, clock)
    searches = []  # the search objects only: holding the fitted method would keep PaDiM's 3.8 GB alive

    def timed_method(name, layers=None):
        method = Settings.method(s, name, layers)
        searches.append(getattr(method, "search", None))
        return _TimedMethod(method, clock)

    s.method = timed_method
    t0 = time.perf_counter()
    run, metrics = evaluate_class(fx, Path(cfg["class_dir"]), s, [method])
    total = time.perf_counter() - t0
    n_train, n_test = clock.n["backbone train"], clock.n["backbone test"]
    backbone_s = clock.s["backbone train"] + clock.s["backbone test"]
    return {
        "n_train": n_train,
        "n_test": n_test,
        "fit_s": clock.s["fit"],
        "layers": list(s.method_layers(method)),
        "coreset_s": clock.s.get("coreset"),
        "coreset_points": clock.n.get("coreset"),
        "coreset_kept": clock.n.get("coreset kept"),
        "search": _search_used(searches[-1]),
        "backbone_train_s": clock.s["backbone train"],
        "infer_ms_per_img": 1000 * clock.s["score"] / n_test,
        "backbone_ms_per_img": 1000 * backbone_s / (n_train + n_test),
        "last_layer": fx.last,
        "other_s": total - backbone_s - clock.s["fit"] - clock.s["score"],
        "total_s": total,
        "peak_rss_gib": _peak_rss_gib(),
        "metrics": {k: float(v) for k, v in metrics[method].items() if isinstance(v, (int, float))},
    }


def _search_used(search) -> dict | None:
    """The nearest-neighbour backend a method used, and what its first call measured (PatchCore)."""
    if search is None:
        return None
    return {
        "name": search.name,
        "choice": getattr(search, "choice", None) or search.name,
        "first_call_s": getattr(search, "timings", None) or None,
        "first_call_queries": 4 * search.block if hasattr(search, "block") else None,
    }


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
    return {
        "one_score_s": one,
        "sweep_s": t2 - t0,
        "grids_s": t1 - t0,
        "fuse_s": t2 - t1,
        "ratio": (t2 - t0) / one,
        "n_combos": len(ALL_COMBOS),
        "n_train": len(train),
        "n_test": len(test),
        "peak_rss_gib": _peak_rss_gib(),
    }


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


# ---------------------------------------------------------------- inspection path (fit, predict, serve)


def _inspect_settings(cfg: dict):
    """As ``spadim fit`` / ``predict`` / ``serve``: the whole image squashed to the crop (frame="whole")."""
    from spadim.run.pipeline import Settings

    return Settings(
        arch=cfg["arch"],
        weights=cfg["weights"],
        resize=cfg["resize"],
        crop=cfg["crop"],
        layers=(1, 2, 3),
        batch_size=cfg["batch_size"],
        frame="whole",
    )


def _calibration_child(cfg: dict, method: str, model: str) -> dict:
    """``fit_model`` (features once, final fit, leave-one-out calibration, save) with its own stage clock."""
    from spadim.data.mvtec import load_class
    from spadim.inspect import fit_model
    from spadim.run.pipeline import make_extractor

    s = _inspect_settings(cfg)
    warm = make_extractor(s, methods=[method], layer_sets=[s.layers])
    warm(load_class(Path(cfg["class_dir"])).train[: s.batch_size])  # warm-up batch, not timed
    del warm
    result = fit_model(Path(cfg["class_dir"]), Path(model), s, method, say=lambda *a, **k: None)
    sec, cal = result["seconds"], result["calibration"]
    one = sec["features"] + sec["fit"]
    return {
        "method": method,
        "n_images": cal.n_images,
        "folds": cal.folds,
        "far": cal.far,
        "features_s": sec["features"],
        "calibration_s": sec["calibration"],
        "fit_s": sec["fit"],
        "ratio": sec["calibration"] / one if one > 0 else float("nan"),
        "seconds": sec,
        "image_threshold": cal.image_threshold,
        "pixel_threshold": cal.pixel_threshold,
        "region_threshold": cal.region_threshold,
        "how": cal.how,
        "guaranteed": cal.guaranteed,
        "model": model,
        "model_bytes": Path(model).stat().st_size,
        "peak_rss_gib": _peak_rss_gib(),
    }


def _current_rss_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / GIB
    return float("nan")


def _load_inspector(cfg: dict, model: str):
    from spadim.inspect import Inspector

    return Inspector.load(Path(model), cfg["weights"], batch_size=cfg["batch_size"])


def _stream_child(cfg: dict, model: str, paths: list[str], out: str) -> dict:
    """``predict_paths`` over ``paths`` (results, masks, heatmaps, overlays written), then the backbone
    alone over the same number of frames and batch size (after the peak RSS of the stream is taken)."""
    import numpy as np
    import torch
    from spadim.data.mvtec import read_rgb
    from spadim.inspect import predict_paths

    inspector = _load_inspector(cfg, model)
    point = inspector.operating_point()
    paths = [Path(p) for p in paths]
    bs = cfg["batch_size"]
    inspector.predict(
        [read_rgb(p) for p in paths[:bs]], [str(p) for p in paths[:bs]], point
    )  # warm-up, not timed
    loaded = _peak_rss_gib()
    r = predict_paths(inspector, paths, Path(out), point, batch_size=bs)
    peak = _peak_rss_gib()
    current = _current_rss_gib()
    # the backbone alone: the same frames (preprocessed once, outside the clock), the same batches
    frames: dict[Path, np.ndarray] = {}
    order = []
    for p in paths:
        src = p.resolve()
        if src not in frames:
            frames[src] = inspector.pre.image(read_rgb(src))
        order.append(src)
    backbone_s = 0.0
    with torch.inference_mode():
        for start in range(0, len(order), bs):
            batch = np.stack([frames[src] for src in order[start : start + bs]])
            t0 = time.perf_counter()
            inspector.extractor.frames(batch, "backbone")
            backbone_s += time.perf_counter() - t0
    n = r["new"]
    stream_rate, backbone_rate = n / r["seconds"], len(order) / backbone_s
    return {
        "n_images": len(paths),
        "predicted": r["images"],
        "new": n,
        "defect": r["defect"],
        "stream_s": r["seconds"],
        "stream_img_s": stream_rate,
        "backbone_s": backbone_s,
        "backbone_img_s": backbone_rate,
        "ratio": stream_rate / backbone_rate,
        "batch_size": bs,
        "last_layer": inspector.extractor.last,
        "peak_rss_gib": peak,
        "peak_rss_after_load_gib": loaded,
        "rss_end_gib": current,
    }


def _multipart(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = f"spadim-bench-{os.getpid()}-{time.perf_counter_ns()}"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


class _Client:
    """One keep-alive HTTP connection (standard library only: the bench needs no client package)."""

    def __init__(self, host: str, port: int):
        self.host, self.port, self.conn = host, port, None

    def post(self, body: bytes, kind: str) -> tuple[float, int, str]:
        """(seconds, status, error text or ''); a broken connection is reopened for the next call."""
        import http.client

        t0 = time.perf_counter()
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=600)
            self.conn.request("POST", "/predict", body, {"Content-Type": kind})
            resp = self.conn.getresponse()
            payload = resp.read()
            seconds = time.perf_counter() - t0
            if resp.status != 200:
                return seconds, resp.status, payload[:200].decode("utf-8", "replace")
            if b'"decision"' not in payload:
                return seconds, resp.status, "no decision in the answer"
            return seconds, resp.status, ""
        except Exception as e:  # noqa: BLE001 - counted as an error
            self.close()
            return time.perf_counter() - t0, 0, f"{type(e).__name__}: {e}"

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _serve_child(cfg: dict, model: str, images: list[str], requests: int, clients: int, total: int) -> dict:
    """``spadim serve`` (uvicorn on 127.0.0.1, an OS-picked port) in this process: warm single-image
    latency, interleaved with the backbone forward of one image (batch 1); then ``clients`` threads."""
    import statistics
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import torch
    from spadim.data.mvtec import read_rgb
    from spadim.serve import bind, serve

    inspector = _load_inspector(cfg, model)
    files = [Path(p) for p in images]
    bodies = [_multipart(p.name, p.read_bytes()) for p in files]
    frames = [inspector.pre.image(read_rgb(p))[None] for p in files]
    listener = bind("127.0.0.1", 0)
    host, port = listener.getsockname()[:2]
    box: dict = {}
    ready = threading.Event()

    def started(server, url):
        box.update(server=server, url=url)
        ready.set()

    options = {
        "inspectors": {"bench": inspector},
        "listener": listener,
        "say": lambda *a, **k: None,
        "started": started,
        "log_level": "warning",
    }
    thread = threading.Thread(target=serve, kwargs=options, daemon=True)
    thread.start()
    if not ready.wait(120):
        raise RuntimeError("the server did not start within 120 s")
    server = box["server"]
    deadline = time.perf_counter() + 120
    while not server.started and time.perf_counter() < deadline:
        time.sleep(0.01)
    try:
        client = _Client(host, port)
        for i in range(2):  # warm-up requests, not timed
            client.post(*bodies[i % len(bodies)])
        with torch.inference_mode():
            inspector.extractor.frames(frames[0], "backbone")  # warm-up, not timed
        latency, backbone, single_errors = [], [], []
        for i in range(requests):  # interleaved, so that both see the same load on the machine
            with torch.inference_mode():
                t0 = time.perf_counter()
                inspector.extractor.frames(frames[i % len(frames)], "backbone")
                backbone.append(time.perf_counter() - t0)
            seconds, status, error = client.post(*bodies[i % len(bodies)])
            latency.append(seconds)
            if error:
                single_errors.append(f"{status}: {error}")
        client.close()

        def worker(k: int) -> list[tuple[float, int, str]]:
            c = _Client(host, port)
            try:
                return [c.post(*bodies[i % len(bodies)]) for i in range(k, total, clients)]
            finally:
                c.close()

        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            results = [r for part in pool.map(worker, range(clients)) for r in part]
        wall = time.perf_counter() - t0
    finally:
        server.should_exit = True
        thread.join(60)
    errors = [f"{status}: {error}" for _, status, error in results if error]
    times = sorted(s for s, _, error in results if not error)
    med, bb = statistics.median(latency), statistics.median(backbone)
    return {
        "url": box["url"],
        "requests": requests,
        "latency_ms_median": 1000 * med,
        "latency_ms": [1000 * s for s in latency],
        "backbone_1_ms_median": 1000 * bb,
        "ratio": med / bb,
        "single_errors": len(single_errors),
        "clients": clients,
        "total": total,
        "concurrent_errors": len(errors),
        "concurrent_error_samples": errors[:5],
        "concurrent_wall_s": wall,
        "concurrent_req_s": total / wall,
        "concurrent_ms_p50": 1000 * times[len(times) // 2] if times else None,
        "concurrent_ms_p95": 1000 * times[min(len(times) - 1, int(0.95 * len(times)))] if times else None,
        "last_layer": inspector.extractor.last,
        "torch_threads": torch.get_num_threads(),
        "peak_rss_gib": _peak_rss_gib(),
    }


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


def _target(name: str, value, limit: float, unit: str = "", op: str = "<=") -> dict:
    bad = value is None or (isinstance(value, float) and math.isnan(value))
    ok = None if bad else bool(value <= limit if op == "<=" else value >= limit)
    return {
        "name": name,
        "value": None if bad else round(value, 4),
        "limit": limit,
        "unit": unit,
        "op": op,
        "pass": ok,
    }


def _get(r, key):
    return r[key] if _ok(r) else None


def _ratio(v, ref):
    return None if v is None or not ref else v / ref


def _targets(b: dict) -> list[dict]:
    """The targets of the cases that ran (issue 8: backbone and methods; issue 17: inspection path)."""
    cases = b["cases"]
    bb = b.get("backbone_ms_per_img")
    sp, pd = b.get("spade"), b.get("padim")
    d = b["padim_d"]
    t = []
    if "methods" in cases:
        if "backbone" in cases:
            t += [
                _target(
                    "PaDiM inference / backbone (per image)",
                    _ratio(_get(pd, "infer_ms_per_img"), bb),
                    1.5,
                    "x",
                ),
                _target(
                    "SPADE inference / backbone (per image, K=5)",
                    _ratio(_get(sp, "infer_ms_per_img"), bb),
                    4.0,
                    "x",
                ),
                _target(
                    "PaDiM fit / backbone over the training images",
                    _ratio(_get(pd, "fit_s"), bb and bb * b["n_train"] / 1000),
                    2.0,
                    "x",
                ),
            ]
        pc = b.get("patchcore")
        if pc is not None:  # against the backbone PatchCore runs (to layer 3), measured in the same process
            t += [
                _target(
                    "PatchCore inference / its backbone (per image, layers 2+3)",
                    _ratio(_get(pc, "infer_ms_per_img"), _get(pc, "backbone_ms_per_img")),
                    2.0,
                    "x",
                ),
                _target(
                    f"PatchCore coreset selection / its backbone over the {b['n_train']} training images",
                    _ratio(_get(pc, "coreset_s"), _get(pc, "backbone_train_s")),
                    2.0,
                    "x",
                ),
                _target(f"PatchCore peak RSS, N={b['n_train']}", _get(pc, "peak_rss_gib"), 4.0, "GiB"),
            ]
        t += [
            _target(f"SPADE peak RSS, N={b['n_train']}", _get(sp, "peak_rss_gib"), 6.0, "GiB"),
            _target(f"PaDiM peak RSS, N={b['n_train']}, d={d}", _get(pd, "peak_rss_gib"), 6.0, "GiB"),
        ]
        if "growth" in cases:
            n50 = b["n50"]
            p50, p200 = _get(n50["padim"], "peak_rss_gib"), _get(pd, "peak_rss_gib")
            growth = None if p50 is None or p200 is None else abs(p200 - p50) / p50
            t.append(
                _target(
                    f"PaDiM peak RSS change N={n50['n_train']} -> N={b['n_train']}", growth, 0.10, "fraction"
                )
            )
    big = b.get("large")
    if big is not None:
        for m in ("spade", "padim"):
            t.append(
                _target(
                    f"{m.upper() if m == 'spade' else 'PaDiM'} peak RSS, "
                    f"{big['n_train']} train / {big['n_test']} test",
                    _get(big[m], "peak_rss_gib"),
                    6.0,
                    "GiB",
                )
            )
    if "sweep" in cases:
        t.append(
            _target(
                "SPADE 15-subset sweep / one scoring with layers 1,2,3,4", _get(b["sweep"], "ratio"), 1.3, "x"
            )
        )
    if "calibration" in cases:
        for m in b["calibration"]:
            r = b["calibration"][m]
            label = {"spade": "SPADE", "padim": "PaDiM", "patchcore": "PatchCore"}[m]
            t.append(
                _target(
                    f"{label} fit_model calibration / (features + fit), "
                    f"N={_get(r, 'n_images') or b['n_train']}",
                    _get(r, "ratio"),
                    1.0,
                    "x",
                )
            )
    if "stream" in cases:
        runs = b["stream"]["runs"]
        for r in runs:
            t.append(
                _target(
                    f"predict stream / backbone-only rate, {r['n']} images", _get(r, "ratio"), 0.8, "x", ">="
                )
            )
        if len(runs) >= 2:
            small, large = runs[0], runs[-1]
            t.append(
                _target(
                    f"predict stream peak RSS, {large['n']} / {small['n']} images",
                    _ratio(_get(large, "peak_rss_gib"), _get(small, "peak_rss_gib")),
                    1.1,
                    "x",
                )
            )
    sv = b.get("serve")
    if sv is not None and sv.get("available"):
        t.append(
            _target(
                "serve median POST /predict latency / backbone forward of 1 image",
                _get(sv, "ratio"),
                1.5,
                "x",
            )
        )
        t.append(
            _target(
                f"serve errors, {sv.get('clients', '?')} concurrent clients x {sv.get('total', '?')} "
                f"requests",
                _get(sv, "concurrent_errors"),
                0,
                "errors",
            )
        )
    return t


def _fmt(v, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def _method_rows(b: dict) -> list[str]:
    bb = b.get("backbone_ms_per_img")
    runs = []
    if "methods" in b["cases"]:
        runs.append((f"N={b['n_train']}, {b['n_test']} test", b))
    if "growth" in b["cases"]:
        runs.append((f"N={b['n50']['n_train']}, {b['n50']['n_test']} test", b["n50"]))
    if b.get("large"):
        runs.append((f"N={b['large']['n_train']}, {b['large']['n_test']} test", b["large"]))
    if not runs:
        return []
    lines = [
        "| run | method | fit s | infer ms/img | infer / backbone | backbone ms/img in run | peak RSS GiB "
        "| total s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, block in runs:
        for name in METHODS:
            if name not in block:
                continue
            r = block[name]
            if not _ok(r):
                lines.append(f"| {label} | {name} | failed: {r.get('error', '?')[:60]} | | | | | |")
                continue
            lines.append(
                f"| {label} | {name} | {r['fit_s']:.2f} | {r['infer_ms_per_img']:.1f} | "
                f"{_fmt(r['infer_ms_per_img'] / bb if bb else None)}x | "
                f"{r['backbone_ms_per_img']:.1f} | "
                f"{r['peak_rss_gib']:.2f} | {r['total_s']:.1f} |"
            )
    pc = b.get("patchcore")
    if _ok(pc) and pc.get("coreset_s") is not None:
        layers = "+".join(map(str, pc["layers"]))
        lines += [
            "",
            f"PatchCore (layers {layers}): greedy selection of "
            f"{pc['coreset_kept']:,} of {pc['coreset_points']:,} patch vectors "
            f"{pc['coreset_s']:.1f} s; backbone over the {pc['n_train']} training images (to layer "
            f"{pc['last_layer']}) {pc['backbone_train_s']:.1f} s; infer / its own backbone "
            f"{pc['infer_ms_per_img'] / pc['backbone_ms_per_img']:.2f}x",
        ]
        used = pc.get("search") or {}
        if used.get("first_call_s"):
            lines.append(
                "PatchCore search: {} picked ({} on its first {} queries)".format(
                    used["choice"],
                    ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in used["first_call_s"].items()),
                    used["first_call_queries"],
                )
            )
    return lines


def _inspect_lines(b: dict) -> list[str]:
    """The issue-17 cases: fit_model's calibration cost, the predict stream, the server."""
    lines = []
    if "calibration" in b["cases"]:
        lines += [
            "",
            "fit_model (frame whole, the final fit, then its leave-one-out calibration):",
            "",
            "| method | images | folds | features s | calibration s | fit s | calibration / (features + fit) "
            "| peak RSS GiB |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for m in b["calibration"]:
            r = b["calibration"][m]
            if not _ok(r):
                lines.append(f"| {m} | failed: {r.get('error', '?')[:60]} | | | | | | |")
                continue
            lines.append(
                f"| {m} | {r['n_images']} | {r['folds']} | {r['features_s']:.1f} | {r['calibration_s']:.1f} "
                f"| {r['fit_s']:.1f} | {r['ratio']:.2f}x | {r['peak_rss_gib']:.2f} |"
            )
    if "stream" in b["cases"]:
        st = b["stream"]
        lines += [
            "",
            f"predict_paths (PaDiM, frame whole, batch {b['batch_size']}; JSON lines, CSV, mask, heatmap and "
            f"overlay per image), each size in a fresh process; backbone alone = the same frames and "
            f"batches through the model's extractor (to layer {st.get('last_layer', '?')}):",
            "",
            "| images | stream s | stream img/s | backbone-only s | backbone-only img/s | stream / backbone "
            "| peak RSS GiB |",
            "|---|---|---|---|---|---|---|",
        ]
        if not _ok(st.get("model")):
            lines.append(
                f"| failed to fit the model: {st.get('model', {}).get('error', '?')[:80]} | | | | | | |"
            )
        for r in st["runs"]:
            if not _ok(r):
                lines.append(f"| {r['n']} | failed: {r.get('error', '?')[:60]} | | | | | |")
                continue
            lines.append(
                f"| {r['n']} | {r['stream_s']:.1f} | {r['stream_img_s']:.2f} | {r['backbone_s']:.1f} | "
                f"{r['backbone_img_s']:.2f} | {r['ratio']:.2f}x | {r['peak_rss_gib']:.2f} |"
            )
    sv = b.get("serve")
    if sv is not None:
        lines.append("")
        if not sv.get("available"):
            lines.append(f"serve: not available ({sv.get('reason', '?')})")
        elif not _ok(sv):
            lines.append(f"serve: failed: {sv.get('error', '?')}")
        else:
            lines.append(
                f"serve (uvicorn at {sv['url']}, PaDiM, frame whole): median POST /predict "
                f"{sv['latency_ms_median']:.1f} ms over {sv['requests']} warm requests "
                f"({sv['single_errors']} errors) vs backbone forward of 1 image "
                f"{sv['backbone_1_ms_median']:.1f} ms = {sv['ratio']:.2f}x; {sv['clients']} concurrent "
                f"clients, {sv['total']} requests: "
                f"{sv['concurrent_errors']} errors, {sv['concurrent_req_s']:.2f} req/s, p50 "
                f"{_fmt(sv['concurrent_ms_p50'], '.0f')} ms, p95 {_fmt(sv['concurrent_ms_p95'], '.0f')} ms"
            )
    return lines


def _table(b: dict) -> str:
    bb = b.get("backbone_ms_per_img")
    m = b["machine"]
    w = f"ImageNet ({b['weights_source']})" if b["weights"] == "imagenet" else "RANDOM (untrained)"
    gpu = "GPU present, unused" if m["gpu"] else "no GPU"
    load = "/".join(f"{x:.2f}" for x in m["load_avg_start"])
    lines = [
        f"spadim benchmark: {m['nproc']} CPU cores, {gpu}, torch {m['torch']} ({m['torch_threads']} threads)",
        f"cpu {m['cpu_model']}; load average at start {load} (1/5/15 min)",
        f"arch {b['arch']}, weights {w}",
        f"data: synthetic '{CLASS}', {b['n_train']} train / {b['n_test']} test at {b['image_size']} px, "
        f"crop {b['crop']}; PaDiM d={b['padim_d']}, SPADE K={b['k']}, batch {b['batch_size']}",
        f"cases: {', '.join(b['cases'])}",
        "nearest-neighbour search: the probe picked {picked} ({probe}); SPADE layer-1 search "
        "(3136 x 15680 x 256): {full}; brute force at PatchCore's shape (784 x 15680 x 1024, random rows): "
        "{pc}".format(
            picked=b["search"]["picked"],
            probe=", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in b["search"]["seconds"].items()),
            full=", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in b["search"]["spade_layer1_s"].items()),
            pc=", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in b["search"]["patchcore_s"].items()),
        )
        if "search" in b
        else "",
    ]
    if "backbone" in b["cases"]:
        lines += [
            "",
            f"backbone alone (load + forward to layer 4): {_fmt(bb, '.1f')} ms/img "
            f"({b['backbone'].get('n_images', '-')} images)",
        ]
    rows = _method_rows(b)
    if rows:
        lines += [""] + rows
    if "sweep" in b["cases"]:
        sw = b["sweep"]
        if _ok(sw):
            lines += [
                "",
                f"SPADE layer sweep ({sw['n_combos']} subsets of layers 1-4): "
                f"one scoring {sw['one_score_s']:.1f} s;"
                f" sweep {sw['sweep_s']:.1f} s (neighbours + per-layer maps {sw['grids_s']:.1f} s, "
                f"fusions {sw['fuse_s']:.1f} s) = {sw['ratio']:.2f}x",
            ]
        lines.append(f"PaDiM layer sweep: {b['padim_sweep']['note']}")
    lines += _inspect_lines(b)
    lines += ["", "| target | value | limit | result |", "|---|---|---|---|"]
    for t in b["targets"]:
        res = "skipped/failed" if t["pass"] is None else ("PASS" if t["pass"] else "FAIL")
        unit = t["unit"]
        lines.append(
            f"| {t['name']} | {_fmt(t['value'], '.3f')} {unit} | {t['op']} {t['limit']} {unit} | {res} |"
        )
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


METHODS = ("spade", "padim", "patchcore")
CASES = ("backbone", "methods", "growth", "large", "sweep", "calibration", "stream", "serve")


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


def _serve_available() -> tuple[bool, str]:
    import importlib

    try:
        importlib.import_module("spadim.serve")
    except ImportError as e:
        return False, f"{type(e).__name__}: {e}"
    return True, ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _inspect_cases(b: dict, args, cfg: dict, main_cls: Path, data: Path, out: Path, t0: float) -> None:
    """Issue 17: fit_model's calibration cost, the predict stream and the server (PaDiM model shared)."""
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

    from spadim.run.pipeline import Settings

    cfg = {
        "arch": args.arch,
        "weights": weights,
        "resize": args.crop * 8 // 7,
        "crop": args.crop,
        "batch_size": args.batch_size,
        "class_dir": str(main_cls),
    }
    s = Settings(arch=args.arch, weights=weights, resize=cfg["resize"], crop=cfg["crop"])
    import torch

    b: dict = {
        "arch": args.arch,
        "weights": kind,
        "weights_source": weights if kind == "imagenet" else "random",
        "image_size": args.size,
        "crop": args.crop,
        "resize": cfg["resize"],
        "padim_d": s.padim_d,
        "k": s.k,
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


if __name__ == "__main__":
    main()
