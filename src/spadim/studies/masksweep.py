"""Proposal 1 study: keypoint object masks per detector, and the outside-multiplier sweep.

For each class, features and anomaly maps are computed once; every detector's masks
are computed once; each multiplier r then only rescales maps and re-scores them.
Outputs: the detector suitability table (the study's Table 2, with objective scores),
a mask picture grid per class, the multiplier sweep table and line plots (the
study's Figure 4), and example panels image | ground truth | map | mask | masked map.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import cv2
import numpy as np

from spadim.masks.auto import MaskPlanner, auto_masks
from spadim.metrics.ranking import undefined_notes
from spadim.masks.keypoints import MaskConfig, foreground_estimate, mask_quality
from spadim.run.pipeline import (
    Settings,
    class_object_masks,
    masked_result,
    evaluate_class,
    suppress_outside,
)
from spadim.report.html import html_table, write_report
from spadim.report.tables import METRIC_COLUMNS, markdown_table, with_means, write_table
from spadim.report.figures import colorize, panel_figure, pick_examples, save_figure, subplots
from spadim.run.session import class_summary, meta, report_header, say, staged, start_study

DEFAULT_MULTIPLIERS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def suitability_row(cls: str, det: str, obj, gt, fg, n_fallback: int) -> dict:
    """Mask quality pooled over a class's test images: area, GT and foreground (``fg``) coverage."""
    q = mask_quality(obj, gt if gt.any() else None, fg)
    rating = (
        2
        if q["fg_coverage"] >= 0.9 and (math.isnan(q["gt_coverage"]) or q["gt_coverage"] >= 0.9)
        else (1 if q["fg_coverage"] >= 0.6 else 0)
    )
    return {
        "class": cls,
        "detector": det,
        **q,
        "auto_rating": rating,
        "fallbacks": n_fallback,
        "n_test": len(obj),
    }


def comparison_rows(
    cls: str, methods, unmasked: dict, sweep: list[dict], dets: list[str], r_auto: float
) -> list[dict]:
    """Per method: no mask, then each mask at auto's r and at its own best r (by test AUPR)."""
    rows = []
    for name in methods:
        m = unmasked[name]
        rows.append(
            {
                "class": cls,
                "method": name,
                "mask": "none",
                "auto_r": 1.0,
                "pixel_aupr_at_auto_r": m["pixel_aupr"],
                "pixel_auroc_at_auto_r": m["pixel_auroc"],
                "best_r": 1.0,
                "pixel_aupr_at_best_r": m["pixel_aupr"],
                "pixel_auroc_at_best_r": m["pixel_auroc"],
            }
        )
        for det in dets:
            sel = [r for r in sweep if r["class"] == cls and r["method"] == name and r["detector"] == det]
            at = next(r for r in sel if r["multiplier"] == r_auto)
            best = max(sel, key=lambda r: (r["pixel_aupr"], r["multiplier"]))
            rows.append(
                {
                    "class": cls,
                    "method": name,
                    "mask": det,
                    "auto_r": r_auto,
                    "pixel_aupr_at_auto_r": at["pixel_aupr"],
                    "pixel_auroc_at_auto_r": at["pixel_auroc"],
                    "best_r": best["multiplier"],
                    "pixel_aupr_at_best_r": best["pixel_aupr"],
                    "pixel_auroc_at_best_r": best["pixel_auroc"],
                }
            )
    return rows


def mask_grid(
    path: Path, title: str, images: np.ndarray, masks: dict[str, np.ndarray], idx: list[int], banner: str
) -> None:
    """Rows: detectors; columns: test images with the mask outline (green) drawn on them."""
    fig, axes = subplots(len(masks), len(idx), figsize=(2.2 * len(idx), 2.3 * len(masks)), squeeze=False)
    for r, (det, obj) in enumerate(masks.items()):
        for c, i in enumerate(idx):
            img = images[i].copy()
            contours, _ = cv2.findContours(obj[i].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            shade = img.copy()
            shade[~obj[i]] = (shade[~obj[i]] * 0.35).astype(np.uint8)
            cv2.drawContours(shade, contours, -1, (0, 255, 0), 2)
            axes[r, c].imshow(shade)
            axes[r, c].set_xticks([]), axes[r, c].set_yticks([])
            if c == 0:
                axes[r, c].set_ylabel(det)
    save_figure(fig, path, title, banner, dpi=80)


def sweep_plot(path: Path, rows: list[dict], method: str, detectors: list[str], banner: str) -> None:
    """AUPR (top) and AUROC (bottom) against the multiplier, one panel per detector, a line per class."""
    fig, axes = subplots(2, len(detectors), figsize=(4 * len(detectors), 7), squeeze=False)
    classes = sorted({r["class"] for r in rows if r["class"] != "mean"}) + ["mean"]
    for j, det in enumerate(detectors):
        for i, metric in enumerate(("pixel_aupr", "pixel_auroc")):
            ax = axes[i, j]
            for cls in classes:
                sel = sorted(
                    (r for r in rows if r["class"] == cls and r["method"] == method and r["detector"] == det),
                    key=lambda r: r["multiplier"],
                )
                ax.plot(
                    [r["multiplier"] for r in sel],
                    [r[metric] for r in sel],
                    marker="o",
                    ms=3,
                    lw=2.5 if cls == "mean" else 1,
                    color="k" if cls == "mean" else None,
                    label=cls,
                )
            ax.set(
                title=f"{method} / {det}", xlabel="outside-mask multiplier r", ylabel=metric.replace("_", " ")
            )
            ax.grid(alpha=0.3)
    axes[0, -1].legend(fontsize=7)
    save_figure(fig, path, f"Outside-mask multiplier sweep ({method}; r = 1 is no mask)", banner, dpi=80)


def run(
    s: Settings,
    data: Path,
    out: Path,
    cfgs: dict[str, MaskConfig],
    methods: str = "spade,padim",
    classes: str | None = None,
    multipliers=DEFAULT_MULTIPLIERS,
    show_r: float = 0.6,
    examples: int = 4,
    command: str = "",
    learned=(),
    candidates: dict[str, MaskConfig] | None = None,
) -> None:
    """Mask every class of ``data`` with each detector's config in ``cfgs`` and sweep the
    outside multipliers; ``show_r`` is the multiplier drawn in the example panels.

    ``learned`` adds "features" (learned foreground) and/or "auto" (chosen per class from the
    training images; ``candidates``: the keypoint configs it may choose from)."""
    detectors, rs = list(cfgs) + list(learned), list(multipliers)
    methods, classes, fx = start_study(s, data, methods, classes)
    results = Path(out)
    banner = fx.weights.banner
    suit, sweep, warnings, summaries, unmasked, decisions, compare = [], [], [], [], [], [], []
    with staged(results) as out:
        for cdir in classes:
            t0 = time.perf_counter()
            planner = MaskPlanner(fx.layers, s.crop, s.seed, candidates) if learned else None
            cr, metrics = evaluate_class(fx, cdir, s, methods, observer=planner)
            t_eval = time.perf_counter() - t0
            unmasked += [{"class": cr.data.name, "method": name, **metrics[name]} for name in methods]
            for note in undefined_notes(cr.masks, cr.labels):
                say(f"warning: {cr.data.name}: {note}")
            summaries.append(class_summary(cr.data, cr.test.shapes))
            masks = {}
            fg = np.stack([foreground_estimate(im) for im in cr.test.images])
            kp_s = {}  # seconds of each detector's test masks (auto's overhead includes those it uses)
            for det, cfg in cfgs.items():
                t1 = time.perf_counter()
                obj, warn = class_object_masks(cr, cfg)
                kp_s[det] = time.perf_counter() - t1
                masks[det] = obj
                warnings += [f"{det}: {w}" for w in warn]
                suit.append(suitability_row(cr.data.name, det, obj, cr.masks, fg, len(warn)))
                for name in methods:
                    for r in rs:
                        masked = masked_result(cr, name, obj, r)[2]
                        sweep.append(
                            {
                                "class": cr.data.name,
                                "method": name,
                                "detector": det,
                                "multiplier": r,
                                **masked,
                            }
                        )
            if planner is not None:
                dec = planner.decide(fx, cr.train.images, rs)

                def detector_masks(d: str) -> np.ndarray:
                    if d not in masks and d not in only_auto:
                        t1 = time.perf_counter()
                        only_auto[d] = class_object_masks(cr, candidates[d])[0]
                        kp_s[d] = time.perf_counter() - t1
                    auto_kp.add(d)
                    return masks[d] if d in masks else only_auto[d]

                auto_kp: set[str] = set()
                only_auto: dict[str, np.ndarray] = {}  # candidates auto uses that are not swept
                extra = {"features": planner.test_masks, "auto": auto_masks(dec, planner, detector_masks)}
                auto_s = planner.seconds + sum(kp_s[d] for d in auto_kp)
                decisions.append(
                    {
                        **dec.row(cr.data.name),
                        "auto_s": round(auto_s, 2),
                        "evaluate_s": round(t_eval - planner.seconds, 2),
                        "overhead": round(auto_s / max(t_eval - planner.seconds, 1e-9), 4),
                    }
                )
                say(f"{cr.data.name}: auto -> {dec.mask}, r={dec.r} ({dec.reason})")
                for det in learned:
                    masks[det] = extra[det]
                    suit.append(suitability_row(cr.data.name, det, extra[det], cr.masks, fg, 0))
                    for name in methods:
                        for r in rs:
                            masked = masked_result(cr, name, extra[det], r)[2]
                            sweep.append(
                                {
                                    "class": cr.data.name,
                                    "method": name,
                                    "detector": det,
                                    "multiplier": r,
                                    **masked,
                                }
                            )
                compare += comparison_rows(cr.data.name, methods, metrics, sweep, list(masks), dec.r)
            idx = pick_examples(cr.data.defects, examples)
            if idx:  # --examples 0: no pictures
                mask_grid(
                    out / "mask_grids" / f"{cr.data.name}.png",
                    f"{cr.data.name}: keypoint object masks (green)",
                    cr.test.images,
                    masks,
                    idx,
                    banner,
                )
            show = detectors[0]
            ranges = {name: (float(cr.maps[name].min()), float(cr.maps[name].max())) for name in methods}
            shown = {
                name: suppress_outside(name, cr.maps[name], cr.scores[name], masks[show], show_r)[0]
                for name in methods
            }
            for i in idx:
                p = cr.data.test[i]
                for name in methods:
                    m, masked = cr.maps[name], shown[name]
                    lo, hi = ranges[name]
                    panel_figure(
                        out / "examples" / cr.data.name / f"{name}_{p.parent.name}_{p.stem}.png",
                        f"{cr.data.name}/{p.parent.name}/{p.name} - {name}, {show} mask, r={show_r}",
                        [
                            ("image", cr.test.images[i]),
                            ("ground truth", cr.masks[i]),
                            ("anomaly map", colorize(m[i], lo, hi)),
                            (f"{show} mask", masks[show][i]),
                            (f"masked (r={show_r})", colorize(masked[i], lo, hi)),
                        ],
                        banner,
                    )
            say(f"{cr.data.name}: done in {time.perf_counter() - t0:.1f} s")
        md = write_table(
            out,
            "suitability",
            suit,
            [
                "class",
                "detector",
                "area_fraction",
                "gt_coverage",
                "fg_coverage",
                "fg_precision",
                "auto_rating",
                "fallbacks",
                "n_test",
            ],
            "Detector suitability (study Table 2; auto_rating 2/1/0 from coverage, rate by eye in mask_grids/)",
            meta(s, fx, detectors=detectors, mask_warnings=warnings),
        )
        sweep = with_means(sweep, ["method", "detector", "multiplier"])
        cols = ["class", "method", "detector", "multiplier", *METRIC_COLUMNS]
        write_table(
            out,
            "multiplier_sweep",
            sweep,
            cols,
            "Outside-mask multiplier sweep (study Figure 4)",
            meta(s, fx, methods=methods, multipliers=rs),
        )
        md += "\n## Multiplier sweep, means over classes (per class: multiplier_sweep.md)\n\n"
        md += markdown_table([r for r in sweep if r["class"] == "mean"], cols) + "\n"
        for name in methods:
            sweep_plot(out / f"multiplier_sweep_{name}.png", sweep, name, detectors, banner)
        sections = []
        if decisions:
            dcols = list(dict.fromkeys(k for r in decisions for k in r))
            md += "\n" + write_table(
                out,
                "auto_decisions",
                decisions,
                dcols,
                "auto object mask: decisions per class (training images only)",
                meta(s, fx),
            )
            ccols = [
                "class",
                "method",
                "mask",
                "auto_r",
                "pixel_aupr_at_auto_r",
                "pixel_auroc_at_auto_r",
                "best_r",
                "pixel_aupr_at_best_r",
                "pixel_auroc_at_best_r",
            ]
            md += "\n" + write_table(
                out,
                "mask_comparison",
                compare,
                ccols,
                "Pixel AUPR/AUROC per mask: at auto's r and at each mask's best r",
                meta(s, fx),
            )
            sections = [
                {
                    "title": "Object mask chosen from normal images (auto)",
                    "html": "<h3>Decisions per class</h3>"
                    + html_table(decisions, dcols, "")
                    + "<h3>Masks compared (at auto's r; best r uses test labels)</h3>"
                    + html_table(compare, ccols, ""),
                }
            ]
        write_report(
            out,
            {
                **report_header("spadim mask-sweep", command, s, fx, Path(data), summaries),
                "results": with_means(unmasked, ["method"]),
                "extra_sections": sections,
                "mask_sweep": {
                    "suitability": suit,
                    "sweep": sweep,
                    "plots": [f"multiplier_sweep_{name}.png" for name in methods],
                },
            },
        )
    print(md)
    for w in warnings:
        say(f"warning: object mask fell back to the full frame: {w}")
    say(f"results in {results}/ (suitability.*, multiplier_sweep.*, mask_grids/, examples/)")
