"""Ray jobs: ``predict --ray`` on Ray Data and one Ray task per class for ``evaluate --ray``/``fit --ray``.

Each worker loads the model once (an actor's constructor) and runs the very function the single process
runs (:func:`spadim.inspect.stream.predict_records`), so records, pictures and resuming are the same. The
driver keeps writing predictions.jsonl/.csv in input order. Workers write pictures into ``--out``
directly, so on a cluster of several machines ``--out``, the model and the images must be on a shared
file system (docs/deploy.md).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from spadim.errors import SpadimError

LOCAL = "local"  # --ray with no address: a one-machine cluster started here, bound to 127.0.0.1


def require_ray():
    try:
        import ray
    except ImportError:
        raise SpadimError("running on Ray needs Ray installed: pip install 'spadim[ray]'") from None
    return ray


def quieten() -> None:
    """The run's own lines, not the engine's progress chatter (Ray Data sets its loggers when imported)."""
    for name in ("ray", "ray.data", "ray.serve"):
        logging.getLogger(name).setLevel(logging.WARNING)


def connect(address: str | None = LOCAL, cpus: int | None = None):
    """Join the cluster at ``address`` ("auto": the one ``ray start`` made; ``local``: start one on
    loopback with ``cpus`` CPUs). A session already connected is reused."""
    ray = require_ray()
    quieten()
    if ray.is_initialized():
        return ray
    quiet = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address in (None, "", LOCAL):
        ray.init(num_cpus=cpus or os.cpu_count(), _node_ip_address="127.0.0.1", **quiet)
    else:
        try:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        except ConnectionError as exc:
            raise SpadimError(
                f"no Ray cluster answers at {address!r} ({exc}): start one with `ray start` or give its address"
            ) from None
    return ray


class PredictWorker:
    """A Ray Data actor: the model loaded once, then batches of {index, path} -> their JSON records."""

    def __init__(self, model, weights, runtime, device, batch_size, out, point, object_mask):
        import torch

        from spadim.inspect.inspector import Inspector

        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        self.inspector = Inspector.load(
            model,
            weights=weights,
            batch_size=batch_size,
            object_mask=object_mask,
            runtime=runtime,
            device=device,
        )
        self.out, self.point, self.object_mask = Path(out), point, object_mask

    def __call__(self, batch: dict) -> dict:
        import json

        from spadim.inspect.stream import predict_records

        work = [(int(i), Path(p)) for i, p in zip(batch["index"], batch["path"])]
        min_area = float(batch["min_area"][0])
        save_maps = bool(batch["save_maps"][0])
        records = predict_records(
            self.inspector, work, self.out, self.point, min_area, save_maps, self.object_mask
        )
        return {"index": batch["index"], "record": [json.dumps(r, allow_nan=False) for r in records]}


def ray_runner(model: Path, weights, runtime: str, device: str, batch_size: int, workers: int | None):
    """A ``runner`` for :func:`spadim.inspect.stream.predict_paths` that maps the batches over Ray Data
    actors (``workers`` of them, one CPU each by default) and yields their records in input order."""

    def run(batches, out, point, min_area, save_maps, object_mask):
        import json

        require_ray()
        import ray
        import ray.data

        quieten()
        rows = [
            {"index": index, "path": str(path), "min_area": min_area, "save_maps": save_maps}
            for batch in batches
            for index, path in batch
        ]
        if not rows:
            return
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # records arrive in input order, as locally
        cpus = cluster_cpus(ray)
        count = workers or cpus
        blocks = max(count, -(-len(rows) // batch_size))
        predicted = ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
            PredictWorker,
            fn_constructor_args=(
                str(model),
                weights,
                runtime,
                device,
                batch_size,
                str(out),
                point,
                object_mask,
            ),
            batch_size=batch_size,
            compute=ray.data.ActorPoolStrategy(size=count),
            num_cpus=min(1.0, cpus / count),  # more workers than CPUs share them rather than wait forever
        )
        for batch in predicted.iter_batches(batch_size=batch_size, batch_format="numpy"):
            yield [json.loads(text) for text in batch["record"]]

    return run


def cluster_cpus(ray) -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def in_order(address: str, workers: int | None, task_function, items: list, *args):
    """``task_function(item, threads, *args)`` for each item as one Ray task, ``workers`` at a time (default
    one per CPU); yields the results in input order, as a local loop would."""
    ray = connect(address)
    threads = max(1, cluster_cpus(ray) // workers) if workers else 1
    task = ray.remote(num_cpus=threads)(task_function)
    refs = [task.remote(item, threads, *args) for item in items]
    for ref in refs:
        yield ray.get(ref)


def _class_task(source, threads: int, settings, plan, out: str, say):
    """One class of ``evaluate --ray`` on a worker: its own backbone, then the single-process function."""
    import torch

    from spadim.run.evaluate import evaluate_source
    from spadim.run.pipeline import make_extractor

    torch.set_num_threads(threads)
    fx = make_extractor(settings, None, plan.methods)
    return evaluate_source(fx, source, settings, plan, Path(out), say)


def class_runner(address: str, workers: int | None):
    """A ``per_class`` for :func:`spadim.run.evaluate.run`: each class as one Ray task."""
    return lambda settings, plan, out, sources, say: in_order(
        address, workers, _class_task, sources, settings, plan, str(out), say
    )


def _fit_task(source, threads: int, job):
    import torch

    torch.set_num_threads(threads)
    return job(source, say=lambda _: None)


def fit_runner(address: str, workers: int | None):
    """A ``runner`` for :func:`spadim.inspect.fit_classes`: each class fitted as one Ray task."""
    return lambda job, sources: in_order(address, workers, _fit_task, sources, job)
