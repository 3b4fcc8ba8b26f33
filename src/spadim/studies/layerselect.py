"""``spadim layer-select``: the ``--layers auto`` choice per class beside the best subset on the
real test set (its regret), the fixed 1+2+3 and the cost of choosing.

The choice itself lives in :mod:`spadim.run.layerchoice`, which ``fit`` and ``evaluate`` use; this
study only measures it against the test labels.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

from spadim.data.mvtec import load_class, load_masks
from spadim.errors import SpadimError
from spadim.features.extractor import ALL_COMBOS, combo_name
from spadim.metrics.ranking import undefined_notes
from spadim.run.calibration import image_count_check
from spadim.run.layerchoice import COPIES, DEFECTS, FOLDS, TOLERANCE, VALIDATED, Selection, select_many
from spadim.run.pipeline import ClassRun, Settings, class_metrics, evaluate_class, make_extractor
from spadim.run.session import read_saved


REGRET_COLUMNS = [
    "class",
    "method",
    "chosen",
    "synthetic_aupr",
    "auto_aupr",
    "oracle_layers",
    "oracle_aupr",
    "regret",
    "fixed_aupr",
    "selection_s",
    "evaluate_s",
    "cost_ratio",
]
MEAN_COLUMNS = (
    "synthetic_aupr",
    "auto_aupr",
    "oracle_aupr",
    "regret",
    "fixed_aupr",
    "selection_s",
    "evaluate_s",
    "cost_ratio",
)


def _sweep_results(sweep: Path | None, name: str, s: Settings, weights_id: str) -> dict:
    """A layer sweep's stored per-class results ("1+2/padim" -> metrics), checked against our settings."""
    if sweep is None:
        return {}
    path = Path(sweep) / "per_class" / f"{name}.json"
    if not path.is_file():
        return {}
    saved = read_saved(path)
    sig = saved.get("signature") or {}
    ours = {
        "arch": s.backbone.arch,
        "weights": weights_id,
        "resize": s.backbone.resize,
        "crop": s.backbone.crop,
        "seed": s.seed,
        **s.result_options(sig.get("methods") or []),
    }
    diff = {k: (sig.get(k), v) for k, v in ours.items() if sig.get(k) != v}
    if diff:
        raise SpadimError(
            f"`sweep` {path} was run with other settings {diff}: give the same settings or drop `sweep`"
        )
    return saved.get("results", {})


def real_subsets(cr: ClassRun, s: Settings, methods, stored: dict) -> dict[str, dict]:
    """Real-test metrics of every subset per method ("1+2/padim" -> metrics), from the sweep where stored."""
    out = dict(stored)
    for m in methods:
        todo = [c for c in ALL_COMBOS if f"{combo_name(c)}/{m}" not in out]
        if not todo:
            continue
        used = tuple(sorted({layer for c in todo for layer in c}))
        for c, maps, scores in s.method(m, used).subset_scores(cr.train, cr.test, todo, s.backbone.crop):
            out[f"{combo_name(c)}/{m}"] = class_metrics(cr.data, maps, cr.masks, scores)
    return out


def regret_rows(name: str, sels: dict[str, Selection], real: dict[str, dict], fixed=(1, 2, 3)) -> list[dict]:
    rows = []
    for m, sel in sels.items():
        aupr = {combo_name(c): real[f"{combo_name(c)}/{m}"]["pixel_aupr"] for c in ALL_COMBOS}
        defined = {k: v for k, v in aupr.items() if not math.isnan(v)}
        oracle = max(defined, key=defined.get) if defined else ""
        rows.append(
            {
                "class": name,
                "method": m,
                "chosen": sel.name,
                "synthetic_aupr": sel.aupr,
                "auto_aupr": aupr[sel.name],
                "oracle_layers": oracle,
                "oracle_aupr": defined.get(oracle, float("nan")),
                "regret": defined.get(oracle, float("nan")) - aupr[sel.name],
                "fixed_aupr": aupr[combo_name(fixed)],
            }
        )
    return rows


def run(
    s: Settings,
    data: Path,
    out: Path,
    methods: str = "spade,padim",
    classes: str | None = None,
    sweep: Path | None = None,
    command: str = "",
    time_evaluate: bool = True,
    output=None,
) -> list[dict]:
    """``spadim layer-select``: per class and method the auto choice, and with real masks its regret.

    Each finished class is saved to ``out/per_class/<class>.json``; a rerun with the same settings
    resumes after it. Lines, tables and progress go to ``output`` (quiet by default)."""
    from spadim.report.html import html_table, write_report
    from spadim.report.tables import METRIC_COLUMNS, with_means, write_table
    from spadim.run.session import (
        QUIET,
        check_out_dir,
        class_summary,
        load_resumable,
        meta,
        report_header,
        save_atomic,
        staged,
        start_study,
    )

    output = output or QUIET
    say = output.say

    s = dataclasses.replace(s, layers=(1, 2, 3)) if s.auto_layers else s  # the fixed baseline
    check_out_dir(out)
    counts = image_count_check(calibrate=False, choose_layers=True)
    methods, dirs, fx = start_study(s, data, methods, classes, ALL_COMBOS, check_counts=counts, output=output)
    sig = {
        "arch": s.backbone.arch,
        "weights": fx.weights.sha256,
        "resize": s.backbone.resize,
        "crop": s.backbone.crop,
        "seed": s.seed,
        **s.result_options(methods),
        "methods": methods,
        "folds": FOLDS,
        "validated": VALIDATED,
        "copies": COPIES,
        "defects": {**dataclasses.asdict(DEFECTS), "kinds": list(DEFECTS.kinds)},  # as JSON reads it back
        "time_evaluate": time_evaluate,
        "sweep": str(sweep) if sweep else None,
    }
    regret, results, subsets, summaries, choices = [], [], [], [], {}
    for cdir in dirs:
        data_c = load_class(cdir)
        saved = load_resumable(Path(out) / "per_class" / f"{data_c.name}.json", sig, "layer-select run")
        if saved:  # finished by an earlier, interrupted run with the same settings
            say(f"{data_c.name}: already done")
            regret += saved["regret"]
            results += saved["results"]
            subsets += saved["subsets"]
            summaries.append(saved["summary"])
            choices[data_c.name] = saved["choices"]
            continue
        n_rows = (len(regret), len(results), len(subsets))
        t0 = time.perf_counter()
        train = fx(data_c.train, f"{data_c.name} train")  # held: selection and the oracle share it
        sels = select_many(fx, train, s, methods)  # training features only
        t_sel = time.perf_counter() - t0
        choices[data_c.name] = {m: sel.to_json() for m, sel in sels.items()}
        say(
            f"{data_c.name}: chose "
            + ", ".join(f"{m} {sel.name} (synthetic AUPR {sel.aupr:.3f})" for m, sel in sels.items())
            + f" in {t_sel:.1f} s"
        )
        stored = _sweep_results(sweep, data_c.name, s, fx.weights.sha256)
        t_eval = float("nan")
        if time_evaluate:  # one plain evaluate of the class, as `spadim evaluate` runs it
            efx = make_extractor(s, output.progress, methods)
            t1 = time.perf_counter()
            evaluate_class(efx, cdir, s, methods)
            t_eval = time.perf_counter() - t1
            del efx
        has_masks = bool(data_c.labels.any())
        summaries.append(class_summary(data_c))
        if has_masks:
            need = any(f"{combo_name(c)}/{m}" not in stored for c in ALL_COMBOS for m in methods)
            cr = None
            if need:
                te = fx(data_c.test, f"{data_c.name} test")
                cr = ClassRun(data_c, train, te, load_masks(data_c, fx.pre, te.shapes))
                for note in undefined_notes(cr.masks, cr.labels):
                    say(f"warning: {data_c.name}: {note}")
            real = real_subsets(cr, s, methods, stored) if need else stored
            rows = regret_rows(data_c.name, sels, real)
            for r in rows:
                results.append(
                    {
                        "class": data_c.name,
                        "method": r["method"],
                        "layers": r["chosen"],
                        **real[f"{r['chosen']}/{r['method']}"],
                    }
                )
            for m, sel in sels.items():
                subsets += [
                    {
                        "class": data_c.name,
                        "method": m,
                        "layers": combo_name(c),
                        "synthetic_aupr": sel.synthetic_aupr[combo_name(c)],
                        "real_aupr": real[f"{combo_name(c)}/{m}"]["pixel_aupr"],
                    }
                    for c in ALL_COMBOS
                ]
        else:
            rows = [
                {"class": data_c.name, "method": m, "chosen": sel.name, "synthetic_aupr": sel.aupr}
                for m, sel in sels.items()
            ]
        for r in rows:
            r.update({"selection_s": t_sel, "evaluate_s": t_eval, "cost_ratio": t_sel / t_eval})
        regret += rows
        save_atomic(
            Path(out) / "per_class" / f"{data_c.name}.json",
            {
                "signature": sig,
                "regret": regret[n_rows[0] :],
                "results": results[n_rows[1] :],
                "subsets": subsets[n_rows[2] :],
                "summary": summaries[-1],
                "choices": choices[data_c.name],
            },
        )
        say(
            f"{data_c.name}: "
            + "; ".join(f"{r['method']} regret {r.get('regret', float('nan')):.4f}" for r in rows)
            + f"; selection/evaluate = {t_sel / t_eval:.2f}"
        )
    regret = with_means(regret, ["method"], MEAN_COLUMNS)
    for r in regret:
        if r["class"] == "mean":
            r["chosen"] = r["oracle_layers"] = ""
    info = meta(
        s,
        fx,
        methods=methods,
        layer_choice="auto",
        folds=FOLDS,
        validated=VALIDATED,
        copies=COPIES,
        tolerance=TOLERANCE,
        sweep=str(sweep) if sweep else None,
        choices=choices,
    )
    with staged(out) as stage:
        md = write_table(
            stage,
            "layer_select",
            regret,
            REGRET_COLUMNS,
            "Layer subset chosen from normal images (--layers auto) and its regret",
            info,
        )
        if subsets:
            write_table(
                stage,
                "subsets",
                subsets,
                ["class", "method", "layers", "synthetic_aupr", "real_aupr"],
                "Synthetic vs real pixel AUPR of every subset",
                info,
            )
        results = with_means(results, ["method"]) if results else []
        if results:
            write_table(
                stage,
                "results",
                results,
                ["class", "method", "layers", *METRIC_COLUMNS],
                "Real test metrics of the chosen subsets",
                info,
            )
        (stage / "summary.md").write_text(md)
        html = html_table(
            regret,
            REGRET_COLUMNS,
            "regret = oracle AUPR - AUPR of the auto choice (real test masks); "
            "fixed = layers 1,2,3; cost_ratio = selection time / one evaluate of the class",
        )
        header = report_header("spadim layer-select", command, s, fx, Path(data), summaries)
        header["settings"]["layers"] = "auto"
        write_report(
            stage,
            {
                **header,
                "results": results,
                "extra_sections": [
                    {"title": "Layer subset chosen from normal images (regret)", "html": html}
                ],
            },
        )
    output.show(md)
    say(f"results in {out}/ (report.html, layer_select.*, subsets.*, results.*, summary.md, per_class/)")
    return regret
