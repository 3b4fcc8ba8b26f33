"""``spadim serve --ray``: the models' scoring on Ray Serve replicas with dynamic batching.

spadim's own HTTP app stays the front (API key, upload limits, header checks, decisions, pictures: the
same code as without Ray). Only the scoring (backbone and method, the part that wants cores and
batches) moves to a Ray Serve deployment per model with ``replicas`` replicas. Each request's frame is
sent alone; ``serve.batch`` gathers the frames of concurrent requests into one batch per replica, so
four clients cost one backbone pass of four images rather than four passes of one. Ray Serve's own HTTP
proxy is not started: nothing but spadim's port listens.
"""

from __future__ import annotations

import numpy as np

from .ray_jobs import cluster_cpus, connect

MAX_BATCH = 8
BATCH_WAIT_S = 0.01  # how long a replica waits for more frames before it scores a partial batch


def _deployment():
    from ray import serve

    @serve.deployment(max_ongoing_requests=2 * MAX_BATCH)
    class ScoringReplica:
        def __init__(self, model: str, weights, runtime: str, device: str, threads: int):
            import torch

            from spadim.inspect.inspector import Inspector

            torch.set_num_threads(threads)
            self.inspector = Inspector.load(
                model, weights=weights, batch_size=MAX_BATCH, runtime=runtime, device=device
            )

        @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=BATCH_WAIT_S)
        async def score(self, frames: list[np.ndarray]) -> list[tuple[np.ndarray, float]]:
            maps, scores, _ = self.inspector.score_frames(np.stack(frames))
            return [(frame_map, float(score)) for frame_map, score in zip(maps, scores)]

    return ScoringReplica


class RayScorer:
    """frames -> (maps, scores) through a deployment handle: one request per frame, batched by Serve."""

    def __init__(self, handle, name: str):
        self.handle, self.name = handle, name

    def __call__(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        responses = [self.handle.score.remote(frame) for frame in frames]
        results = [response.result() for response in responses]
        return np.stack([r[0] for r in results]), np.asarray([r[1] for r in results])


def deploy(inspectors: dict, address: str, replicas: int | None, weights, device: str) -> None:
    """Start one deployment per model and point each loaded inspector's scoring at it; the replicas load
    the inspector's own file with its runtime."""
    ray = connect(address)
    from ray import serve

    serve.start(proxy_location="Disabled")
    cpus = cluster_cpus(ray)
    count = replicas or max(1, cpus // len(inspectors))  # per model
    share = cpus / (count * len(inspectors))  # CPUs per replica, so every replica of every model fits
    threads = max(1, int(share))
    replica = _deployment()
    for name, inspector in inspectors.items():
        app = replica.options(num_replicas=count, ray_actor_options={"num_cpus": share}).bind(
            str(inspector.model_path), weights, inspector.runtime, device, threads
        )
        handle = serve.run(app, name=f"spadim-{name}", route_prefix=None)
        inspector.scorer, inspector.runtime = RayScorer(handle, name), f"{inspector.runtime}+ray"
        inspector.concurrent = True  # the front need not hold a per-model lock: Serve queues and batches


def shutdown() -> None:
    from ray import serve

    serve.shutdown()
