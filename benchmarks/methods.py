"""Each method end to end (extract, fit, stream the test set), with its own backbone time."""

from __future__ import annotations

import time
from dataclasses import fields
from pathlib import Path

from .common import _Clock, _TimedExtractor, _TimedMethod, _peak_rss_gib, _settings


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
    raw(load_class(Path(cfg["class_dir"])).train[: s.backbone.batch_size])  # warm-up batch, not timed
    fx = _TimedExtractor(raw, clock)
    searches = []  # the search objects only: holding the fitted method would keep PaDiM's Gaussians alive

    class TimedSettings(Settings):
        """The run's settings whose every new method reports its fit and scoring to the clock."""

        def method(self, name, layers=None):
            fitted = super().method(name, layers)
            searches.append(getattr(fitted, "search", None))
            return _TimedMethod(fitted, clock)

    timed = TimedSettings(**{f.name: getattr(s, f.name) for f in fields(s)})
    t0 = time.perf_counter()
    run, metrics = evaluate_class(fx, Path(cfg["class_dir"]), timed, [method])
    total = time.perf_counter() - t0
    one_image = load_class(Path(cfg["class_dir"])).test[:1]
    backbone_one = []
    for _ in range(3):  # the backbone on one image, as a single request runs it
        started = time.perf_counter()
        raw(one_image)
        backbone_one.append(time.perf_counter() - started)
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
        "one_image_ms": 1000 * clock.s["score one"] / clock.n["score one"]
        if "score one" in clock.n
        else None,
        "backbone_one_ms": 1000 * min(backbone_one),
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
