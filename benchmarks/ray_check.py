"""Ray against one process on this machine: predict throughput and identity, and serve under 4 clients.

Usage: python -m benchmarks.ray_check MODEL IMAGES_DIR [--copies 20] [--clients 4] [--requests 80]
Builds a folder of the images repeated ``copies`` times (symbolic links), then runs, each as its own
``spadim`` process: ``predict`` and ``predict --ray`` (wall time, Ray's start included, and whether the
records agree), and ``serve`` and ``serve --ray`` with ``clients`` concurrent clients posting ``requests``
images in all (images per second). Everything binds 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .serving import _Client, _multipart, concurrent_posts

SPADIM = [str(Path(sys.executable).with_name("spadim"))]  # the console script beside this Python


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _predict(model: Path, folder: Path, out: Path, extra: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([*SPADIM, "predict", str(model), str(folder), "--out", str(out), *extra], check=True)
    return time.perf_counter() - started


def _serve_rate(model: Path, images: list[Path], clients: int, requests: int, extra: list[str]) -> float:
    port = _free_port()
    server = subprocess.Popen([*SPADIM, "serve", str(model), "--port", str(port), *extra])
    try:
        deadline = time.time() + 300
        client = _Client("127.0.0.1", port)
        bodies = [_multipart(p.name, p.read_bytes()) for p in images]
        while time.time() < deadline:  # ready once a prediction comes back (models and replicas loaded)
            if client.post(*bodies[0])[1] == 200:
                break
            time.sleep(1)
        for body in bodies[: 2 * clients]:
            client.post(*body)  # warm-up
        client.close()

        results, wall = concurrent_posts("127.0.0.1", port, bodies, clients, requests)
        errors = [r for r in results if r[2]]
        if errors:
            raise RuntimeError(f"{len(errors)} failed requests, first: {errors[0]}")
        return requests / wall
    finally:
        server.terminate()
        server.wait(60)


def _batching_bound(model: Path, images: list[Path], batch: int, rounds: int = 5) -> dict:
    """Scoring throughput (backbone + method, this process, all cores) at batch 1 and at ``batch``: the most
    any batching server can gain over one-at-a-time scoring on this machine."""
    from spadim.data.mvtec import read_rgb
    from spadim.inspect import Inspector

    inspector = Inspector.load(model)
    frames = [inspector.pre.image(read_rgb(p)) for p in images]
    import numpy as np

    stacked = np.stack((frames * batch)[:batch])
    inspector.score_frames(stacked)  # warm-up
    rates = {}
    for size in (1, batch):
        started = time.perf_counter()
        for _ in range(rounds):
            for start in range(0, batch, size):
                inspector.score_frames(stacked[start : start + size])
        rates[size] = rounds * batch / (time.perf_counter() - started)
    return {"score_batch1_per_s": round(rates[1], 2), f"score_batch{batch}_per_s": round(rates[batch], 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("images", type=Path)
    parser.add_argument("--copies", type=int, default=20)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=80)
    parser.add_argument("--skip-predict", action="store_true")
    parser.add_argument("--skip-serve", action="store_true")
    args = parser.parse_args()
    images = sorted(p for p in args.images.rglob("*.png"))
    work = Path(tempfile.mkdtemp(prefix="spadim-ray-check-"))
    row = {"model": str(args.model), "images": len(images) * args.copies}
    if not args.skip_predict:
        folder = work / "images"
        folder.mkdir()
        for copy in range(args.copies):
            for i, path in enumerate(images):
                (folder / f"{copy:03d}_{i:04d}.png").symlink_to(path.resolve())
        local = _predict(args.model, folder, work / "local", [])
        remote = _predict(args.model, folder, work / "ray", ["--ray"])
        lines = {
            side: (work / side / "predictions.jsonl").read_text().splitlines() for side in ("local", "ray")
        }
        pairs = [(json.loads(a), json.loads(b)) for a, b in zip(lines["local"], lines["ray"])]
        row.update(
            predict_s=round(local, 1),
            predict_ray_s=round(remote, 1),
            predict_ray_throughput_ratio=round(local / remote, 2),
            same_decisions=all(a["decision"] == b["decision"] for a, b in pairs)
            and len(pairs) == row["images"],
            same_regions=all(
                [(r["x"], r["y"], r["area"]) for r in a["regions"]]
                == [(r["x"], r["y"], r["area"]) for r in b["regions"]]
                for a, b in pairs
            ),
            max_score_relative=max(abs(a["score"] - b["score"]) / abs(a["score"]) for a, b in pairs),
        )
    if not args.skip_serve:
        row.update(_batching_bound(args.model, images, args.clients))
        single = _serve_rate(args.model, images, args.clients, args.requests, [])
        ray = _serve_rate(args.model, images, args.clients, args.requests, ["--ray"])
        row.update(
            serve_images_per_s=round(single, 2),
            serve_ray_images_per_s=round(ray, 2),
            serve_ray_ratio=round(ray / single, 2),
            clients=args.clients,
        )
    print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
