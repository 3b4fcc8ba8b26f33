"""The inspection path: fit_model's calibration, the predict stream."""

from __future__ import annotations

import time
from pathlib import Path

from .common import _current_rss_gib, _peak_rss_gib


def _inspect_settings(cfg: dict):
    """As ``spadim fit`` / ``predict`` / ``serve``: the whole image squashed to the crop (frame="whole")."""
    from spadim.features.config import BackboneConfig
    from spadim.run.pipeline import Settings

    backbone = BackboneConfig(
        arch=cfg["arch"],
        weights=cfg["weights"],
        resize=cfg["resize"],
        crop=cfg["crop"],
        batch_size=cfg["batch_size"],
        frame="whole",
    )
    return Settings(backbone=backbone, layers=(1, 2, 3))


def _calibration_child(cfg: dict, method: str, model: str) -> dict:
    """``fit_model`` (features once, final fit, leave-one-out calibration, save) with its own stage clock."""
    from spadim.data.mvtec import load_class
    from spadim.inspect import fit_model
    from spadim.run.pipeline import make_extractor

    s = _inspect_settings(cfg)
    warm = make_extractor(s, methods=[method], layer_sets=[s.layers])
    warm(load_class(Path(cfg["class_dir"])).train[: s.backbone.batch_size])  # warm-up batch, not timed
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


def _load_inspector(cfg: dict, model: str):
    from spadim.inspect import Inspector

    return Inspector.load(Path(model), weights=cfg["weights"], batch_size=cfg["batch_size"])


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
    inspector.predict_batch(
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
