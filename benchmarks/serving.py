"""spadim serve on 127.0.0.1 at an OS-picked port: latency and concurrent clients."""

from __future__ import annotations

import os
import time
from pathlib import Path

from .common import _peak_rss_gib
from .inspection import _load_inspector


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


def concurrent_posts(host: str, port: int, bodies: list, clients: int, total: int) -> tuple[list, float]:
    """``clients`` keep-alive connections posting ``total`` bodies in all, round robin ->
    ((seconds, status, error) per request, wall seconds)."""
    from concurrent.futures import ThreadPoolExecutor

    def worker(k: int) -> list[tuple[float, int, str]]:
        client = _Client(host, port)
        try:
            return [client.post(*bodies[i % len(bodies)]) for i in range(k, total, clients)]
        finally:
            client.close()

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [r for part in pool.map(worker, range(clients)) for r in part]
    return results, time.perf_counter() - started


def _serve_child(cfg: dict, model: str, images: list[str], requests: int, clients: int, total: int) -> dict:
    """``spadim serve`` (uvicorn on 127.0.0.1, an OS-picked port) in this process: warm single-image
    latency, interleaved with the backbone forward of one image (batch 1); then ``clients`` threads."""
    import statistics
    import threading

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

        results, wall = concurrent_posts(host, port, bodies, clients, total)
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


def _serve_available() -> tuple[bool, str]:
    import importlib

    try:
        importlib.import_module("spadim.serve")
    except ImportError as e:
        return False, f"{type(e).__name__}: {e}"
    return True, ""
