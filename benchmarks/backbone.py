"""The backbone alone: features of the training and test images, to layer 4."""

from __future__ import annotations

import time
from pathlib import Path

from .common import _peak_rss_gib, _settings


def _backbone_child(cfg: dict) -> dict:
    """The backbone alone, as SPADE+PaDiM extract (layers 1-3 kept, forward to layer 4)."""
    import torch
    from spadim.data.mvtec import load_class
    from spadim.run.pipeline import make_extractor

    s = _settings(cfg)
    fx = make_extractor(s, methods=["spade", "padim"], layer_sets=[s.layers])
    data = load_class(Path(cfg["class_dir"]))
    fx(data.train[: s.backbone.batch_size])  # warm-up batch, not timed
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
