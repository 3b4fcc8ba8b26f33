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
from dataclasses import dataclass
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
from spadim.report.tables import METRIC_COLUMNS, SUITABILITY_COLUMNS, markdown_table, with_means, write_table
from spadim.report.figures import colorize, panel_figure, pick_examples, save_figure, subplots
from spadim.run.session import QUIET, Output, class_summary, meta, report_header, staged, start_study

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


COMPARISON_COLUMNS = [
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


@dataclass(frozen=True)
class SweepOptions:
    """What the sweep does apart from the data and the keypoint configs.

    ``show_r`` is the multiplier drawn in the example panels; ``learned`` adds "features" (learned
    foreground) and/or "auto" (chosen per class from the training images; ``candidates``: the keypoint
    configs it may choose from)."""

    methods: str = "spade,padim"
    classes: str | None = None
    multipliers: tuple[float, ...] = DEFAULT_MULTIPLIERS
    show_r: float = 0.6
    examples: int = 4
    command: str = ""
    learned: tuple[str, ...] = ()
    candidates: dict[str, MaskConfig] | None = None


def run(
    s: Settings,
    data: Path,
    out: Path,
    cfgs: dict[str, MaskConfig],
    options: SweepOptions = SweepOptions(),
    output: Output = QUIET,
) -> None:
    """Mask every class of ``data`` with each detector's config in ``cfgs`` and sweep the outside
    multipliers; everything is written into ``out`` (staged: a failure leaves earlier results). Lines,
    tables and progress go to ``output``."""
    MaskSweep(s, cfgs, options, output).run(data, Path(out))


class MaskSweep:
    """One sweep: per class the unmasked evaluation, then every mask at every r; the tables at the end.

    Rows accumulate over the classes in the lists below (``sweep``: one row per class, method, mask and
    r), in the order the classes, the keypoint detectors and then the learned masks come."""

    def __init__(
        self, s: Settings, cfgs: dict[str, MaskConfig], options: SweepOptions, output: Output = QUIET
    ):
        self.s, self.cfgs, self.o, self.output = s, cfgs, options, output
        self.say = output.say
        self.detectors = list(cfgs) + list(options.learned)
        self.rs = list(options.multipliers)
        self.suit: list[dict] = []
        self.sweep: list[dict] = []
        self.warnings: list[str] = []
        self.summaries: list[dict] = []
        self.unmasked: list[dict] = []
        self.decisions: list[dict] = []
        self.compare: list[dict] = []

    def run(self, data: Path, results: Path) -> None:
        self.methods, classes, self.fx = start_study(
            self.s, data, self.o.methods, self.o.classes, output=self.output
        )
        with staged(results) as out:
            for source in classes:
                self.add_class(source, out)
            md = self.write_tables(out)
            self.write_report(out, Path(data))
        self.output.show(md)
        for w in self.warnings:
            self.say(f"warning: object mask fell back to the full frame: {w}")
        self.say(f"results in {results}/ (suitability.*, multiplier_sweep.*, mask_grids/, examples/)")

    # ---------------------------------------------------------------- one class
    def add_class(self, source, out: Path) -> None:
        t0 = time.perf_counter()
        learned = bool(self.o.learned)
        planner = (
            MaskPlanner(self.fx.layers, self.s.backbone.crop, self.s.seed, self.o.candidates)
            if learned
            else None
        )
        cr, metrics = evaluate_class(self.fx, source, self.s, self.methods, observer=planner)
        t_eval = time.perf_counter() - t0
        self.unmasked += [{"class": cr.data.name, "method": name, **metrics[name]} for name in self.methods]
        for note in undefined_notes(cr.masks, cr.labels):
            self.say(f"warning: {cr.data.name}: {note}")
        self.summaries.append(class_summary(cr.data, cr.test.shapes))
        fg = np.stack([foreground_estimate(im) for im in cr.test.images])
        masks, seconds = self.keypoint_masks(cr, fg)
        if planner is not None:
            self.learned_masks(cr, fg, planner, masks, seconds, metrics, t_eval)
        self.pictures(cr, masks, out)
        self.say(f"{cr.data.name}: done in {time.perf_counter() - t0:.1f} s")

    def sweep_mask(self, cr, detector: str, obj: np.ndarray) -> None:
        """The rows of one mask: every method at every r."""
        for name in self.methods:
            for r in self.rs:
                masked = masked_result(cr, name, obj, r)[2]
                self.sweep.append(
                    {"class": cr.data.name, "method": name, "detector": detector, "multiplier": r, **masked}
                )

    def keypoint_masks(self, cr, fg: np.ndarray) -> tuple[dict, dict]:
        """Each keypoint detector's test masks, their suitability and sweep rows -> (masks, seconds each
        took; ``auto``'s overhead includes those it uses)."""
        masks, seconds = {}, {}
        for det, cfg in self.cfgs.items():
            t1 = time.perf_counter()
            obj, warn = class_object_masks(cr, cfg)
            seconds[det] = time.perf_counter() - t1
            masks[det] = obj
            self.warnings += [f"{det}: {w}" for w in warn]
            self.suit.append(suitability_row(cr.data.name, det, obj, cr.masks, fg, len(warn)))
            self.sweep_mask(cr, det, obj)
        return masks, seconds

    def learned_masks(
        self, cr, fg, planner: MaskPlanner, masks: dict, seconds: dict, metrics, t_eval
    ) -> None:
        """The learned foreground and ``auto``'s choice: their rows, and auto's decision and cost. A keypoint
        candidate auto uses that is not swept is computed here, and its time counts towards auto's."""
        decision = planner.decide(self.fx, cr.train.images, self.rs)
        used: set[str] = set()
        only_auto: dict[str, np.ndarray] = {}

        def detector_masks(d: str) -> np.ndarray:
            if d not in masks and d not in only_auto:
                t1 = time.perf_counter()
                only_auto[d] = class_object_masks(cr, self.o.candidates[d])[0]
                seconds[d] = time.perf_counter() - t1
            used.add(d)
            return masks[d] if d in masks else only_auto[d]

        extra = {"features": planner.test_masks, "auto": auto_masks(decision, planner, detector_masks)}
        auto_s = planner.seconds + sum(seconds[d] for d in used)
        evaluate_s = t_eval - planner.seconds
        self.decisions.append(
            {
                **decision.row(cr.data.name),
                "auto_s": round(auto_s, 2),
                "evaluate_s": round(evaluate_s, 2),
                "overhead": round(auto_s / max(evaluate_s, 1e-9), 4),
            }
        )
        self.say(f"{cr.data.name}: auto -> {decision.mask}, r={decision.r} ({decision.reason})")
        for det in self.o.learned:
            masks[det] = extra[det]
            self.suit.append(suitability_row(cr.data.name, det, extra[det], cr.masks, fg, 0))
            self.sweep_mask(cr, det, extra[det])
        self.compare += comparison_rows(
            cr.data.name, self.methods, metrics, self.sweep, list(masks), decision.r
        )

    def pictures(self, cr, masks: dict, out: Path) -> None:
        """The mask grid and, per example image and method: image | truth | map | mask | masked map at
        ``show_r`` with the first detector's mask (none with ``examples`` 0)."""
        idx = pick_examples(cr.data.defects, self.o.examples)
        if not idx:
            return
        banner, show, show_r = self.fx.weights.banner, self.detectors[0], self.o.show_r
        title = f"{cr.data.name}: keypoint object masks (green)"
        mask_grid(out / "mask_grids" / f"{cr.data.name}.png", title, cr.test.images, masks, idx, banner)
        for name in self.methods:
            m = cr.maps[name]
            lo, hi = float(m.min()), float(m.max())
            masked = suppress_outside(name, m, cr.scores[name], masks[show], show_r)[0]
            for i in idx:
                p = cr.data.test[i]
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

    # ---------------------------------------------------------------- the whole run
    def write_tables(self, out: Path) -> str:
        """suitability, multiplier_sweep (with means) and, with auto, its decisions and the mask
        comparison; the sweep plots. -> the markdown printed at the end."""
        s, fx = self.s, self.fx
        md = write_table(
            out,
            "suitability",
            self.suit,
            SUITABILITY_COLUMNS,
            "Detector suitability (study Table 2; auto_rating 2/1/0 from coverage, rate by eye in mask_grids/)",
            meta(s, fx, detectors=self.detectors, mask_warnings=self.warnings),
        )
        self.sweep = with_means(self.sweep, ["method", "detector", "multiplier"])
        cols = ["class", "method", "detector", "multiplier", *METRIC_COLUMNS]
        write_table(
            out,
            "multiplier_sweep",
            self.sweep,
            cols,
            "Outside-mask multiplier sweep (study Figure 4)",
            meta(s, fx, methods=self.methods, multipliers=self.rs),
        )
        md += "\n## Multiplier sweep, means over classes (per class: multiplier_sweep.md)\n\n"
        md += markdown_table([r for r in self.sweep if r["class"] == "mean"], cols) + "\n"
        for name in self.methods:
            sweep_plot(
                out / f"multiplier_sweep_{name}.png", self.sweep, name, self.detectors, fx.weights.banner
            )
        if self.decisions:
            md += "\n" + write_table(
                out,
                "auto_decisions",
                self.decisions,
                self.decision_columns,
                "auto object mask: decisions per class (training images only)",
                meta(s, fx),
            )
            md += "\n" + write_table(
                out,
                "mask_comparison",
                self.compare,
                COMPARISON_COLUMNS,
                "Pixel AUPR/AUROC per mask: at auto's r and at each mask's best r",
                meta(s, fx),
            )
        return md

    @property
    def decision_columns(self) -> list[str]:
        return list(dict.fromkeys(k for r in self.decisions for k in r))

    def write_report(self, out: Path, data: Path) -> None:
        sections = []
        if self.decisions:
            sections = [
                {
                    "title": "Object mask chosen from normal images (auto)",
                    "html": "<h3>Decisions per class</h3>"
                    + html_table(self.decisions, self.decision_columns, "")
                    + "<h3>Masks compared (at auto's r; best r uses test labels)</h3>"
                    + html_table(self.compare, COMPARISON_COLUMNS, ""),
                }
            ]
        write_report(
            out,
            {
                **report_header("spadim mask-sweep", self.o.command, self.s, self.fx, data, self.summaries),
                "results": with_means(self.unmasked, ["method"]),
                "extra_sections": sections,
                "mask_sweep": {
                    "suitability": self.suit,
                    "sweep": self.sweep,
                    "plots": [f"multiplier_sweep_{name}.png" for name in self.methods],
                },
            },
        )
