"""SPADE's 15-subset layer sweep against one scoring (and PaDiM's sweep)."""

from __future__ import annotations

import time
from pathlib import Path

from .common import _peak_rss_gib, _settings


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
    spade.score(test, s.backbone.crop)
    one = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, idx = spade.neighbours(test)
    grids = spade.layer_grids(test, idx)
    t1 = time.perf_counter()
    for combo in ALL_COMBOS:
        spade.fuse([grids[layer] for layer in combo], s.backbone.crop)
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
        s.method("padim", combo).fit(train).score(test, s.backbone.crop)
        per["+".join(map(str, combo))] = time.perf_counter() - t0
    return {"per_combo_s": per, "sweep_s": sum(per.values()), "peak_rss_gib": _peak_rss_gib()}


# ---------------------------------------------------------------- inspection path (fit, predict, serve)
