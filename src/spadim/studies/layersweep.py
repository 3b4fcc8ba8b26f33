"""Proposal 2 study: all 15 non-empty subsets of layers 1-4, for SPADE and PaDiM.

Each image goes through the backbone once; every combination is built from the
cached layer maps. Results are written per class as combinations finish
(``per_class/<class>.json``, atomically), so an interrupted run resumes where it
stopped. Outputs: the full table, the study's Table 3 (mean AUPR with vs without
layer 4), Figure 5 (AUPR per combination, both methods, and the Pearson
correlation between SPADE and PaDiM across combinations) and the best combination
per class with how often it uses exactly two layers.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
from scipy.stats import pearsonr

from spadim.errors import SpadimError
from spadim.features.extractor import ALL_COMBOS, combo_name
from spadim.metrics.ranking import undefined_notes
from spadim.methods.padim import DEFAULT_D
from spadim.run.pipeline import Settings, class_metrics, prepare_class
from spadim.report.html import write_report
from spadim.report.tables import METRIC_COLUMNS, markdown_table, with_means, write_table
from spadim.report.figures import save_figure, subplots
from spadim.data.mvtec import load_class
from spadim.run.session import (
    QUIET,
    Output,
    class_summary,
    meta,
    read_saved,
    report_header,
    save_atomic,
    start_study,
)


def _signature(s, methods: list[str], weights_id: str) -> dict:
    """What must match for stored results to be reused: the backbone, the seed and the options of the
    methods swept (PaDiM's d the effective one, so that the default and the same value given explicitly
    resume each other)."""
    return {
        "arch": s.backbone.arch,
        "weights": weights_id,
        "resize": s.backbone.resize,
        "crop": s.backbone.crop,
        "seed": s.seed,
        "methods": methods,
        **s.result_options(methods),
    }


def _load_partial(path: Path, sig: dict) -> dict:
    if not path.is_file():
        return {}
    try:
        d = read_saved(path)
    except json.JSONDecodeError:
        return {}  # a damaged partial file is recomputed
    saved = d.get("signature") or {}
    if saved.get("d") is None and saved.get("arch") in DEFAULT_D:  # d = None is the arch's default d
        saved = {**saved, "d": DEFAULT_D[saved["arch"]]}
    if saved != sig:
        raise SpadimError(
            f"{path} holds a sweep with other settings ({d.get('signature')}): use another `out` or delete it"
        )
    return d.get("results", {})


def _save_partial(path: Path, sig: dict, results: dict) -> None:
    save_atomic(path, {"signature": sig, "results": results})


def table3(rows: list[dict], methods: list[str]) -> list[dict]:
    """Mean AUPR/AUROC of combinations with layer 4 vs without, per method (over classes and combos)."""
    out = []
    for m in methods:
        for has4 in (True, False):
            sel = [r for r in rows if r["method"] == m and ("4" in r["layers"].split("+")) == has4]
            out.append(
                {
                    "method": m,
                    "combinations": "with layer 4" if has4 else "without layer 4",
                    "n": len(sel),
                    "mean_pixel_aupr": float(np.nanmean([r["pixel_aupr"] for r in sel])),
                    "mean_pixel_auroc": float(np.nanmean([r["pixel_auroc"] for r in sel])),
                }
            )
    return out


def combo_means(rows: list[dict], method: str) -> list[float]:
    return [
        float(
            np.nanmean(
                [r["pixel_aupr"] for r in rows if r["method"] == method and r["layers"] == combo_name(c)]
            )
        )
        for c in ALL_COMBOS
    ]


#: The two methods whose AUPR over layer subsets the published study correlates (its Figure 5, r = 0.70).
STUDY_PAIR = ("spade", "padim")


def compares_study_pair(methods) -> bool:
    """Whether a sweep of ``methods`` holds both methods of the study's correlation (:data:`STUDY_PAIR`)."""
    return set(STUDY_PAIR) <= set(methods)


def correlation(rows: list[dict], pair: tuple[str, str] = STUDY_PAIR) -> dict:
    """Pearson r between the two methods' AUPR across combinations (class means), and over class x
    combination; by default the study's pair, SPADE and PaDiM."""
    first, second = pair
    a, b = combo_means(rows, first), combo_means(rows, second)
    other = {(r["class"], r["layers"]): r["pixel_aupr"] for r in rows if r["method"] == second}
    pairs = [
        (r["pixel_aupr"], other[(r["class"], r["layers"])])
        for r in rows
        if r["method"] == first and (r["class"], r["layers"]) in other
    ]
    r_mean = pearsonr(a, b)[0] if np.std(a) > 0 and np.std(b) > 0 else float("nan")
    pa, pb = np.array(pairs).T if pairs else (np.zeros(0), np.zeros(0))
    r_all = pearsonr(pa, pb)[0] if len(pa) > 2 and pa.std() > 0 and pb.std() > 0 else float("nan")
    return {
        "pearson_r_combination_means": float(r_mean),
        "pearson_r_class_x_combination": float(r_all),
        "n_combinations": len(a),
        "n_pairs": len(pairs),
    }


def best_rows(rows: list[dict], methods: list[str]) -> tuple[list[dict], dict]:
    best, counts = [], {}
    for m in methods:
        classes = sorted({r["class"] for r in rows if r["method"] == m})
        for c in classes:
            sel = [
                r for r in rows if r["method"] == m and r["class"] == c and not math.isnan(r["pixel_aupr"])
            ]
            if not sel:
                continue
            b = max(sel, key=lambda r: r["pixel_aupr"])
            best.append(
                {
                    "class": c,
                    "method": m,
                    "best_layers": b["layers"],
                    "n_layers": len(b["layers"].split("+")),
                    "pixel_aupr": b["pixel_aupr"],
                    "pixel_auroc": b["pixel_auroc"],
                }
            )
        mine = [b for b in best if b["method"] == m]
        counts[m] = {"classes": len(mine), "best_uses_two_layers": sum(b["n_layers"] == 2 for b in mine)}
    return best, counts


def figure5(path: Path, rows: list[dict], methods: list[str], corr: dict, banner: str) -> None:
    names = [combo_name(c) for c in ALL_COMBOS]
    fig, (a, b) = subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [2.2, 1]})
    x = np.arange(len(names))
    for m in methods:
        a.plot(x, combo_means(rows, m), marker="o", label=f"{m} (mean over classes)")
    a.set_xticks(x, names, rotation=45)
    a.set(xlabel="layers", ylabel="pixel AUPR", title="AUPR per layer combination")
    a.grid(alpha=0.3)
    a.legend()
    if compares_study_pair(methods):
        sa, pa = (combo_means(rows, method) for method in STUDY_PAIR)
        b.scatter(sa, pa)
        for n, u, v in zip(names, sa, pa):
            b.annotate(n, (u, v), fontsize=7)
        b.set(
            xlabel="SPADE AUPR",
            ylabel="PaDiM AUPR",
            title=f"Pearson r = {corr['pearson_r_combination_means']:.2f} (study: 0.70)",
        )
        b.grid(alpha=0.3)
    else:
        b.axis("off")
    save_figure(fig, path, "Layer-combination study (study Figure 5)", banner)


def subset_maps(cr, s: Settings, method: str, combos):
    """(combo, maps, image scores) of ``method`` for each layer subset, as the method computes them
    together (:meth:`~spadim.methods.base.Method.subset_scores`: SPADE's mean fusion builds every subset
    from one set of per-layer grids, identical to scoring each alone; the others fit each subset)."""
    used = tuple(sorted({layer for combo in combos for layer in combo}))
    yield from s.method(method, used).subset_scores(cr.train, cr.test, combos, s.backbone.crop)


def subset_results(cr, s: Settings, method: str, combos):
    """(combo, metrics) of ``method`` for each layer subset, as :func:`subset_maps` yields them."""
    for combo, maps, scores in subset_maps(cr, s, method, combos):
        yield combo, class_metrics(cr.data, maps, cr.masks, scores)


def run(
    s: Settings,
    data: Path,
    out: Path,
    methods: str = "spade,padim",
    classes: str | None = None,
    command: str = "",
    output: Output = QUIET,
) -> None:
    """Sweep every layer combination of ``methods`` over the classes of ``data`` into ``out``
    (resuming results already there); ``classes`` is a comma list, None for all. Lines, tables and
    progress go to ``output``."""
    say = output.say
    methods, classes, fx = start_study(s, data, methods, classes, ALL_COMBOS, output=output)
    sig = _signature(s, methods, fx.weights.sha256)
    out = Path(out)
    partial = {c.name: _load_partial(out / "per_class" / f"{c.name}.json", sig) for c in classes}
    jobs = [
        (c, combo, m)
        for c in classes
        for combo in ALL_COMBOS
        for m in methods
        if f"{combo_name(combo)}/{m}" not in partial[c.name]
    ]
    say(
        f"{len(classes) * len(ALL_COMBOS) * len(methods) - len(jobs)} results already done, {len(jobs)} to go"
    )
    bar = output.bar(len(jobs), "layer sweep", "run")
    t0, done = time.perf_counter(), 0
    for cdir in classes:
        todo = [(combo, m) for c, combo, m in jobs if c == cdir]
        if not todo:
            continue
        cr = prepare_class(fx, cdir)
        for note in undefined_notes(cr.masks, cr.labels):
            say(f"warning: {cr.data.name}: {note}")
        results = partial[cdir.name]
        for m in methods:
            combos = [combo for combo, method in todo if method == m]
            for combo, metrics in subset_results(cr, s, m, combos) if combos else ():
                results[f"{combo_name(combo)}/{m}"] = metrics
                _save_partial(out / "per_class" / f"{cdir.name}.json", sig, results)
                bar.update(1)
                done += 1
        rate = (time.perf_counter() - t0) / done
        say(
            f"{cdir.name}: done; {done}/{len(jobs)} runs, about {rate * (len(jobs) - done) / 60:.1f} min left"
        )
    bar.close()
    info = meta(s, fx, methods=methods, combinations=[combo_name(c) for c in ALL_COMBOS])
    header = report_header(
        "spadim layer-sweep", command, s, fx, Path(data), [class_summary(load_class(c)) for c in classes]
    )
    _report(out, classes, partial, methods, info, fx.weights.banner, header, output)


def _report(
    out: Path,
    classes,
    partial: dict,
    methods: list[str],
    info: dict,
    banner: str,
    header: dict,
    output: Output,
) -> None:
    rows = [
        {
            "class": c.name,
            "layers": combo_name(combo),
            "n_layers": len(combo),
            "method": m,
            **partial[c.name][f"{combo_name(combo)}/{m}"],
        }
        for c in classes
        for combo in ALL_COMBOS
        for m in methods
    ]
    corr = correlation(rows) if compares_study_pair(methods) else {}
    best, counts = best_rows(rows, methods)
    t3 = table3(rows, methods)
    md = write_table(
        out,
        "layer_sweep",
        with_means(rows, ["layers", "method"]),
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
    md += "\n" + write_table(
        out,
        "best",
        best,
        ["class", "method", "best_layers", "n_layers", "pixel_aupr", "pixel_auroc"],
        "Best combination per class",
        {**info, "counts": counts, "correlation": corr},
    )
    summary = [{"method": m, **c} for m, c in counts.items()]
    md += "\n" + markdown_table(summary, ["method", "classes", "best_uses_two_layers"]) + "\n"
    if corr:
        md += (
            f"\nPearson r between SPADE and PaDiM AUPR across the 15 combinations (class means): "
            f"{corr['pearson_r_combination_means']:.3f}; over class x combination pairs: "
            f"{corr['pearson_r_class_x_combination']:.3f} (the study found 0.70)\n"
        )
    (out / "summary.md").write_text(md)
    figure5(out / "figure5.png", rows, methods, corr, banner)
    default = with_means([r for r in rows if r["layers"] == "1+2+3"], ["method"])
    write_report(
        out,
        {
            **header,
            "results": default,
            "layer_sweep": {
                "rows": rows,
                "table3": t3,
                "best": best,
                "counts": counts,
                "correlation": corr,
                "figure5": "figure5.png",
            },
        },
    )
    output.show(md)
    output.say(
        f"results in {out}/ (report.html, layer_sweep.*, table3.*, best.*, figure5.png, summary.md, per_class/)"
    )
