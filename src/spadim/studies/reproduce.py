"""The study in one run: Table 1, proposal 1 and proposal 2 per class, beside the published numbers.

Per class every image passes the backbone once and its train and test features are held for the
class: SPADE's per-layer maps are computed once and give all 15 layer subsets; PaDiM is fitted per
subset; the maps of the study's layers (Table 1) are then masked by each keypoint detector's object
mask at every multiplier (proposal 1). A finished class is saved to ``per_class/<class>.json``
(atomically) with its pictures, so an interrupted run resumes at the first unfinished class. The
tables, figures and ``report.html`` are rebuilt from every saved class at the end.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from spadim.features.extractor import ALL_COMBOS
from .layersweep import best_rows, combo_name, compares_study_pair, correlation, figure5, table3
from .masksweep import sweep_plot, suitability_row
from spadim.metrics.ranking import evaluate_maps, undefined_notes
from spadim.masks.keypoints import MaskConfig, foreground_estimate
from spadim.run.calibration import image_count_check
from spadim.run.pipeline import Settings, class_object_masks, masked_result, prepare_class
from spadim.report.tables import METRIC_COLUMNS, SUITABILITY_COLUMNS, with_means, write_table
from spadim.report.figures import best_worst_gallery, plot_curves
from spadim.run.session import (
    QUIET,
    Output,
    check_out_dir,
    class_summary,
    load_resumable,
    meta,
    quiet,
    report_header,
    save_atomic,
    start_study,
)

DEFAULT_MULTIPLIERS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
FORMAT = 1


def _signature(
    s: Settings, weights_id: str, methods, cfgs: dict[str, MaskConfig], multipliers, auto: bool = False
) -> dict:
    return {
        "format": FORMAT,
        "arch": s.backbone.arch,
        "weights": weights_id,
        "resize": s.backbone.resize,
        "crop": s.backbone.crop,
        "seed": s.seed,
        **s.result_options(methods),
        "layers": list(s.layers),
        "methods": list(methods),
        "multipliers": list(multipliers),
        "masks": {det: dataclasses.asdict(cfg) for det, cfg in cfgs.items()},
        **({"auto_layers": True} if auto else {}),
    }


def layer_subsets(cr, s: Settings, methods, bar) -> tuple[dict, dict]:
    """Metrics of every layer subset per method, and the maps/scores of the study's layers."""
    results, kept = {}, {}

    def record(method: str, combo, maps, scores):
        results[f"{combo_name(combo)}/{method}"] = evaluate_maps(maps, cr.masks, scores, cr.labels)
        if tuple(combo) == s.method_layers(method):  # Table 1: the method's own layers (PatchCore: 2+3)
            kept[method] = (maps, scores)
        bar.update(1)

    for method in methods:  # each method's own way through the subsets (SPADE: per-layer grids once)
        for combo, maps, scores in s.method(method, (1, 2, 3, 4)).subset_scores(
            cr.train, cr.test, ALL_COMBOS, s.backbone.crop
        ):
            record(method, combo, maps, scores)
    return results, kept


def auto_choice(fx, cr, s: Settings, methods, layers: dict) -> dict:
    """Per method, the ``--layers auto`` subset chosen from the held training features alone, its
    synthetic AUPR and its real AUPR (looked up among the 15 subsets already scored)."""
    from spadim.run.layerchoice import select_many, selection_seconds

    sels = select_many(fx, cr.train, s, methods)
    return {
        m: {
            "layers": sel.name,
            "synthetic_aupr": sel.aupr,
            "pixel_aupr": layers[f"{sel.name}/{m}"]["pixel_aupr"],
            "selection_s": selection_seconds(sels),
        }
        for m, sel in sels.items()
    }


AUTO_MEANS = ("auto_pixel_aupr", "auto_synthetic_aupr")


def _auto_columns(result: dict, method: str) -> dict:
    a = (result.get("auto") or {}).get(method)
    return (
        {
            "auto_layers": a["layers"],
            "auto_pixel_aupr": a["pixel_aupr"],
            "auto_synthetic_aupr": a["synthetic_aupr"],
        }
        if a
        else {}
    )


def _layers_used(s: Settings, methods) -> str:
    """'1+2+3' when every method runs the same layers, else 'spade 1+2+3, patchcore 2+3'."""
    used = {m: combo_name(s.method_layers(m)) for m in methods}
    if len(set(used.values())) == 1:
        return next(iter(used.values()))
    return ", ".join(f"{method} {combo}" for method, combo in used.items())


def reproduce_class(
    fx,
    cdir: Path,
    s: Settings,
    methods,
    cfgs: dict[str, MaskConfig],
    multipliers,
    out: Path,
    bar,
    auto: bool = False,
    say=quiet,
) -> dict:
    """Everything the study measures on one class; pictures are written into ``out``, lines to ``say``."""
    cr = prepare_class(fx, cdir)
    notes = undefined_notes(cr.masks, cr.labels)
    for note in notes:
        say(f"warning: {cr.data.name}: {note}")
    layers, kept = layer_subsets(cr, s, methods, bar)
    cr.maps = {m: kept[m][0] for m in methods}
    cr.scores = {m: kept[m][1] for m in methods}
    table1 = {m: layers[f"{combo_name(s.method_layers(m))}/{m}"] for m in methods}
    choice = auto_choice(fx, cr, s, methods, layers) if auto else None
    fg = np.stack([foreground_estimate(im) for im in cr.test.images])
    suitability, sweep, warnings, first_mask = [], [], [], None
    for det, cfg in cfgs.items():
        obj, warn = class_object_masks(cr, cfg)
        first_mask = obj if first_mask is None else first_mask
        warnings += [f"{det}: {w}" for w in warn]
        suitability.append(suitability_row(cr.data.name, det, obj, cr.masks, fg, len(warn)))
        for m in methods:
            for r in multipliers:
                sweep.append(
                    {
                        "class": cr.data.name,
                        "method": m,
                        "detector": det,
                        "multiplier": r,
                        **masked_result(cr, m, obj, r)[2],
                    }
                )
        bar.update(1)
    banner = fx.weights.banner
    used = _layers_used(s, methods)
    plot_curves(
        out / "curves" / f"{cr.data.name}.png",
        f"{cr.data.name}: pixel ROC and PR (layers: {used})",
        cr.maps,
        cr.masks,
        banner,
    )
    gallery = best_worst_gallery(out, cr, methods, first_mask, next(iter(cfgs), None), banner)
    return {
        "summary": class_summary(cr.data, cr.test.shapes),
        "table1": table1,
        "layers": layers,
        "suitability": suitability,
        "sweep": sweep,
        "warnings": warnings,
        "notes": notes,
        "gallery": gallery,
        "curves": f"curves/{cr.data.name}.png",
        **({"auto": choice} if auto else {}),
    }


def run(
    s: Settings,
    data: Path,
    out: Path,
    cfgs: dict[str, MaskConfig],
    methods: str = "spade,padim",
    classes: str | None = None,
    multipliers=DEFAULT_MULTIPLIERS,
    command: str = "",
    auto: bool = False,
    output: Output = QUIET,
) -> dict:
    """Run (or resume) the study on ``data`` into ``out``; returns the report context. Lines, tables and
    progress go to ``output``.

    ``auto`` also records, per class, the ``--layers auto`` choice and its real AUPR (Table 1 keeps
    ``s.layers``)."""
    out = Path(out)
    check_out_dir(out)
    counts = image_count_check(calibrate=False, choose_layers=auto)
    methods, class_dirs, fx = start_study(
        s, data, methods, classes, ALL_COMBOS, check_counts=counts, output=output
    )
    sig = _signature(s, fx.weights.sha256, methods, cfgs, multipliers, auto)
    done = {c.name: load_resumable(out / "per_class" / f"{c.name}.json", sig) for c in class_dirs}
    todo = [c for c in class_dirs if done[c.name] is None]
    output.say(f"{len(class_dirs) - len(todo)} of {len(class_dirs)} classes already done")
    steps = len(ALL_COMBOS) * len(methods) + len(cfgs)
    bar = output.bar(len(todo) * steps, "reproduce", "step")
    t0 = time.perf_counter()
    for n, cdir in enumerate(todo, start=1):
        result = reproduce_class(fx, cdir, s, methods, cfgs, multipliers, out, bar, auto, output.say)
        save_atomic(out / "per_class" / f"{cdir.name}.json", {"signature": sig, **result})
        done[cdir.name] = result
        left = (time.perf_counter() - t0) / n * (len(todo) - n)
        output.say(f"{cdir.name}: done; {n}/{len(todo)} classes, about {left / 60:.1f} min left")
    bar.close()
    results = [done[c.name] for c in class_dirs]
    return write_outputs(out, s, fx, methods, results, list(cfgs), multipliers, Path(data), command, output)


def write_outputs(
    out: Path,
    s: Settings,
    fx,
    methods,
    results: list[dict],
    detectors,
    multipliers,
    data: Path,
    command: str,
    output: Output = QUIET,
) -> dict:
    """Tables (CSV/JSON/MD), figures and report.html from the per-class results."""
    from spadim.report.html import write_report

    info = meta(s, fx, methods=methods, detectors=detectors, multipliers=list(multipliers))
    names = [r["summary"]["name"] for r in results]
    banner = fx.weights.banner
    table1 = with_means(
        [
            {
                "class": name,
                "method": m,
                **r["table1"][m],
                **_auto_columns(r, m),
                "n_train": r["summary"]["n_train"],
                "n_test": r["summary"]["n_test_good"] + r["summary"]["n_test_anomalous"],
                **({"note": "; ".join(r["notes"])} if r["notes"] else {}),
            }
            for name, r in zip(names, results)
            for m in methods
        ],
        ["method"],
    )
    table1 = (
        with_means([r for r in table1 if r["class"] != "mean"], ["method"], [*METRIC_COLUMNS, *AUTO_MEANS])
        if any("auto_layers" in r for r in table1)
        else table1
    )
    auto_cols = (
        ["auto_layers", "auto_pixel_aupr", "auto_synthetic_aupr"]
        if any("auto_layers" in r for r in table1)
        else []
    )
    cols = ["class", "method", *METRIC_COLUMNS, *auto_cols, "n_train", "n_test"]
    md = write_table(
        out,
        "table1",
        table1,
        cols + (["note"] if any("note" in r for r in table1) else []),
        f"Table 1: layers {_layers_used(s, methods)}",
        info,
    )
    layer_rows = [
        {
            "class": name,
            "layers": combo_name(c),
            "n_layers": len(c),
            "method": m,
            **r["layers"][f"{combo_name(c)}/{m}"],
        }
        for name, r in zip(names, results)
        for c in ALL_COMBOS
        for m in methods
    ]
    corr = correlation(layer_rows) if compares_study_pair(methods) else {}
    best, counts = best_rows(layer_rows, methods)
    t3 = table3(layer_rows, methods)
    write_table(
        out,
        "layer_sweep",
        with_means(layer_rows, ["layers", "method"]),
        ["class", "layers", "method", *METRIC_COLUMNS],
        "Layer-combination sweep",
        info,
    )
    md += "\n" + write_table(
        out,
        "table3",
        t3,
        ["method", "combinations", "n", "mean_pixel_aupr", "mean_pixel_auroc"],
        "Mean AUPR with vs without layer 4 (study Table 3)",
        info,
    )
    write_table(
        out,
        "best",
        best,
        ["class", "method", "best_layers", "n_layers", "pixel_aupr", "pixel_auroc"],
        "Best combination per class",
        {**info, "counts": counts, "correlation": corr},
    )
    figure5(out / "figure5.png", layer_rows, methods, corr, banner)
    suitability = [row for r in results for row in r["suitability"]]
    sweep = with_means([row for r in results for row in r["sweep"]], ["method", "detector", "multiplier"])
    plots = []
    if detectors:
        write_table(
            out,
            "suitability",
            suitability,
            SUITABILITY_COLUMNS,
            "Detector suitability (study Table 2)",
            info,
        )
        write_table(
            out,
            "multiplier_sweep",
            sweep,
            ["class", "method", "detector", "multiplier", *METRIC_COLUMNS],
            "Outside-mask multiplier sweep (study Figure 4)",
            info,
        )
        for m in methods:
            sweep_plot(out / f"multiplier_sweep_{m}.png", sweep, m, list(detectors), banner)
            plots.append(f"multiplier_sweep_{m}.png")
    context = {
        **report_header("spadim reproduce", command, s, fx, data, [r["summary"] for r in results]),
        "results": table1,
        "curves": {name: r["curves"] for name, r in zip(names, results)},
        "galleries": {name: r["gallery"] for name, r in zip(names, results)},
        "mask_sweep": {"suitability": suitability, "sweep": sweep, "plots": plots} if detectors else None,
        "layer_sweep": {
            "rows": layer_rows,
            "table3": t3,
            "best": best,
            "counts": counts,
            "correlation": corr,
            "figure5": "figure5.png",
        },
    }
    if auto_cols:
        from spadim.report.html import html_table

        context["extra_sections"] = [
            {
                "title": "Layers chosen from normal images (--layers auto)",
                "html": html_table(
                    table1,
                    ["class", "method", "pixel_aupr", *auto_cols],
                    f"pixel AUPR of the study's layers ({_layers_used(s, methods)}) beside the auto choice's real "
                    f"AUPR",
                ),
            }
        ]
    write_report(out, context)
    (out / "summary.md").write_text(md)
    output.show(md)
    for r in results:
        for w in r["warnings"]:
            output.say(f"warning: object mask fell back to the full frame: {w}")
    output.say(
        f"results in {out}/ (report.html, table1.*, layer_sweep.*, table3.*, best.*, suitability.*, "
        f"multiplier_sweep.*, figure5.png, curves/, gallery/, per_class/)"
    )
    return context
