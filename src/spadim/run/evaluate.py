"""``spadim evaluate`` as a function: fit and evaluate the methods on every class of a data set.

The data is an MVTec AD root or class folder, or one class of plain folders (a ClassData from
:func:`spadim.data.folders.load_plain`); both take the same path from here on. Per class: fit
(choosing the layers from normal images with ``--layers auto``), stream the test set, optionally
suppress scores outside an object mask (keypoints, learned, or chosen automatically), then the
tables, ROC/PR curves, the best/worst gallery, heatmap panels and ``report.html``. With both automatic
choices the layers come first and the mask multiplies the chosen layers' maps: neither choice reads the
other's result (docs/masks-and-layers.md, "Both at once").
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from . import layerchoice
import numpy as np

from spadim.decision.conformal import DEFAULT_FAR
from .calibration import DEFAULT_FOLDS, calibrate_held_out, image_count_check
from spadim.decision.regions import Verdict, find_regions, judge, min_area_pixels
from spadim.methods.registry import METHODS
from spadim.metrics.operating_point import at_threshold, best_f1, best_recall
from spadim.masks.auto import LEARNED, MaskPlanner, auto_masks
from spadim.masks.keypoints import MaskConfig
from spadim.data.mvtec import ClassData
from .pipeline import Settings, class_object_masks, evaluate_class, masked_result, metric_notes
from spadim.report.html import html_table, write_report
from spadim.report.tables import METRIC_COLUMNS, with_means, write_table
from spadim.report.figures import (
    best_worst_gallery,
    colorize,
    overlay,
    panel_figure,
    pick_examples,
    plot_curves,
)
from .session import QUIET, Output, class_summary, meta, quiet, report_header, staged, start_study


def run(
    s: Settings,
    data: Path | ClassData,
    out_dir: Path,
    *,
    methods: str = "spade,padim",
    classes: str | None = None,
    object_mask: str | None = None,
    cfg: MaskConfig | None = None,
    candidates: dict | None = None,
    r: float = 0.6,
    examples: int = 4,
    command: str = "",
    far: float | None = DEFAULT_FAR,
    folds: int = DEFAULT_FOLDS,
    per_class=None,
    output: Output = QUIET,
) -> list[dict]:
    """Evaluate and write everything into ``out_dir`` (staged: a failure leaves earlier results);
    returns the result rows, class means included. ``cfg`` configures a keypoint ``object_mask``;
    ``candidates`` are the keypoint configs ``object_mask="auto"`` chooses from. With ``far``, each
    method is also calibrated as ``fit`` calibrates it and its decisions are scored beside the best
    threshold with no more false alarms (``operating_point.*``); ``far=None`` skips it.
    ``per_class(settings, plan, out, classes, say)``, when given, yields each class's :func:`evaluate_source`
    result from elsewhere, in order (one Ray task per class: :func:`spadim.scale.ray_jobs.class_runner`).
    Lines, tables and progress go to ``output`` (quiet by default)."""
    check_counts = image_count_check(calibrate=far is not None, choose_layers=s.auto_layers)
    names, sources, fx = start_study(s, data, methods, classes, check_counts=check_counts, output=output)
    plan = ClassPlan(names, object_mask, cfg, candidates or {}, r, examples, far, folds)
    evaluation = Evaluation(s, fx, plan, command)
    with staged(out_dir) as out:
        results = (
            (evaluate_source(fx, source, s, plan, out, output.say) for source in sources)
            if per_class is None
            else per_class(s, plan, out, sources, output.say)
        )
        for result in results:
            evaluation.add(result)
        md = evaluation.write(out, data)
    output.show(md)
    for w in evaluation.warnings:
        output.say(f"warning: object mask fell back to the full frame: {w}")
    output.say(f"results in {out_dir}/ (report.html, results.csv/.json/.md, curves/, gallery/, heatmaps/)")
    return evaluation.rows


class Evaluation:
    """What ``evaluate`` writes, gathered class by class from :func:`evaluate_source` results: the result
    rows, the operating-point rows, the automatic choices and the report's pictures."""

    def __init__(self, s: Settings, fx, plan: "ClassPlan", command: str):
        self.s, self.fx, self.plan, self.command = s, fx, plan, command
        self.rows: list[dict] = []
        self.warnings: list[str] = []
        self.summaries: list[dict] = []
        self.curves: dict = {}
        self.galleries: dict = {}
        self.choices: list[dict] = []  # the layers --layers auto chose
        self.decisions: list[dict] = []  # what --object-mask auto chose
        self.points: list[dict] = []  # the calibrated operating point per class and method

    def add(self, result: dict) -> None:
        self.rows += result["rows"]
        self.warnings += result["warnings"]
        self.summaries.append(result["summary"])
        self.curves.update(result["curves"])
        self.galleries.update(result["galleries"])
        self.choices += result["choices"]
        self.decisions += result["decisions"]
        self.points += result["points"]

    def write(self, out: Path, data: Path | ClassData) -> str:
        """The tables and report.html into ``out`` (``rows`` gain their class means) -> the results
        table as markdown."""
        s, fx, plan = self.s, self.fx, self.plan
        self.rows = with_means(self.rows, ["method"])
        sections = self.layer_sections() + self.mask_sections()
        if self.points:
            self.points = with_means(self.points, ["method"], POINT_MEANS)
            write_table(
                out,
                "operating_point",
                self.points,
                POINT_COLUMNS,
                "spadim evaluate: the calibrated decision vs the best threshold with no more false alarms",
                meta(s, fx, methods=plan.methods, far=plan.far, folds=plan.folds),
            )
            sections.append(
                {
                    "title": f"At the operating point (calibrated at far={plan.far:g} from normal "
                    f"images) vs the best threshold with as few false alarms",
                    "html": html_table(self.points, POINT_COLUMNS, POINT_CAPTION),
                }
            )
        md = write_table(
            out,
            "results",
            self.rows,
            self.columns(),
            "spadim evaluate",
            meta(s, fx, methods=plan.methods, **self.meta()),
        )
        where = (data.origin or str(data.root)) if isinstance(data, ClassData) else Path(data)
        write_report(
            out,
            {
                **report_header("spadim evaluate", self.command, s, fx, where, self.summaries),
                "results": self.rows,
                "curves": self.curves,
                "galleries": self.galleries,
                "extra_sections": sections,
            },
        )
        return md

    def columns(self) -> list[str]:
        cols = [
            "class",
            "method",
            *(["layers"] if self.s.auto_layers else []),
            *METRIC_COLUMNS,
            "n_train",
            "n_test",
        ]
        return cols + (["note"] if any("note" in r for r in self.rows) else [])

    def meta(self) -> dict:
        """The results' metadata beside the settings: the mask used and the automatic choices."""
        learned = self.plan.object_mask in LEARNED
        extra = {
            "object_mask": self.plan.object_mask,
            "outside_multiplier": self.plan.r if self.plan.cfg or learned else None,
            "mask_warnings": self.warnings,
        }
        if self.s.auto_layers:
            extra["layer_choices"] = self.choices
        if self.decisions:
            extra["mask_decisions"] = self.decisions
        return extra

    def layer_sections(self) -> list[dict]:
        if not self.s.auto_layers:
            return []
        columns = ["class", "method", "layers", "synthetic_aupr", "selection_s"]
        caption = (
            "subset with the highest pixel AUPR on synthetic defects on held-out training images; then "
            "refitted on all of them"
        )
        return [
            {
                "title": "Layers chosen from normal images (--layers auto)",
                "html": html_table(self.choices, columns, caption),
            }
        ]

    def mask_sections(self) -> list[dict]:
        if not self.decisions:
            return []
        columns = list(dict.fromkeys(k for d in self.decisions for k in d))
        caption = "mask type, reason and outside multiplier r per class, from the training images only"
        return [
            {
                "title": "Object mask chosen from normal images (--object-mask auto)",
                "html": html_table(self.decisions, columns, caption),
            }
        ]


POINT_COLUMNS = [
    "class",
    "method",
    "n_calibration",
    "calibration",
    "guaranteed",
    "region_threshold",
    "mask_level",
    "good_test",
    "false_alarms",
    "defective_test",
    "recall",
    "best_recall",
    "recall_ratio",
    "image_precision",
    "contradictions",
    "best_recall_image_score",
    "image_rule_false_alarms",
    "image_rule_recall",
    "image_rule_contradictions",
    "mask_alarm_rate",
    "pixel_f1",
    "pixel_iou",
    "oracle_pixel_f1",
    "pixel_f1_ratio",
]
POINT_MEANS = (
    "recall",
    "best_recall",
    "recall_ratio",
    "image_precision",
    "best_recall_image_score",
    "image_rule_recall",
    "pixel_f1",
    "pixel_iou",
    "oracle_pixel_f1",
    "pixel_f1_ratio",
)
POINT_CAPTION = (
    "levels from the training images only (SPADE and PatchCore leave-one-out, PaDiM out-of-fold): an image "
    "is a defect when its map, on the original pixels, has a region of min_area above region_threshold, "
    "the split-conformal quantile for far of the held-out normal images' region statistic; regions are drawn "
    "from mask_level. best_recall: the highest recall of any threshold on the same statistic that makes "
    "no more false alarms on the good test images (chosen with the test labels); recall_ratio = recall / "
    "best_recall. image_rule_*: the image-score rule (image score above its own conformal threshold, mask "
    "at the pixel quantile), measured on the same maps for comparison. contradictions: images whose decision and regions "
    "disagree. Pixel metrics pool every test pixel at the frame's resolution"
)


@dataclass
class ClassPlan:
    """What evaluate does with each class, apart from the data: picklable, so a Ray task can carry it."""

    methods: list[str]
    object_mask: str | None = None
    cfg: MaskConfig | None = None
    candidates: dict | None = None
    r: float = 0.6
    examples: int = 4
    far: float | None = DEFAULT_FAR
    folds: int = DEFAULT_FOLDS


def evaluate_source(fx, source, s: Settings, plan: ClassPlan, out: Path, say=quiet) -> dict:
    """One class: fit, score, masks, operating point, and its pictures written into ``out``; -> its rows and
    the report's pieces (``say`` gets its lines). The unit of both evaluate's loop and a Ray task
    (``evaluate --ray``)."""
    methods, t0 = plan.methods, time.perf_counter()
    learned = plan.object_mask in LEARNED
    planner = MaskPlanner(fx.layers, s.backbone.crop, s.seed, plan.candidates or {}) if learned else None
    choices, sels = [], {}
    if s.auto_layers:  # choose per method from the training images, then refit on all of them
        run, metrics, sels = layerchoice.evaluate_auto(fx, source, s, methods, observer=planner)
        choices = _choice_rows(run.data.name, sels)
        say(f"{run.data.name}: layers auto chose " + ", ".join(f"{m} {sel.name}" for m, sel in sels.items()))
    else:
        run, metrics = evaluate_class(
            fx, source, s, methods, observer=planner, hold_train=plan.far is not None
        )
    notes = metric_notes(run.data, run.masks)
    for n in notes:
        say(f"warning: {run.data.name}: {n}")
    obj, warnings, decisions = _apply_object_mask(fx, run, metrics, plan, planner, say)
    points = []
    if plan.far is not None:
        for name in methods:
            layers = sels[name].chosen if s.auto_layers else s.method_layers(name)
            points.append(operating_point_row(run, name, layers, s, plan.far, plan.folds))
    note = {"note": "; ".join(notes)} if notes else {}
    rows = []
    for name in methods:
        chosen = {"layers": sels[name].name} if s.auto_layers else {}
        rows.append(
            {
                "class": run.data.name,
                "method": name,
                **chosen,
                **metrics[name],
                "n_train": len(run.train),
                "n_test": len(run.test),
                **note,
            }
        )
        say(
            f"{run.data.name:>12} {name:>6}: "
            + "  ".join(f"{c}={_shown(metrics[name][c])}" for c in METRIC_COLUMNS)
        )
    curves = {}
    if run.data.has_masks:  # pixel curves need pixel labels
        curves[run.data.name] = f"curves/{run.data.name}.png"
        plot_curves(
            out / curves[run.data.name],
            f"{run.data.name}: pixel ROC and PR",
            run.maps,
            run.masks,
            fx.weights.banner,
        )
    gallery = best_worst_gallery(out, run, methods, obj, plan.object_mask, fx.weights.banner)
    _heatmaps(out / "heatmaps" / run.data.name, run, methods, plan.examples, fx)
    say(f"{run.data.name}: done in {time.perf_counter() - t0:.1f} s")
    return {
        "rows": rows,
        "warnings": warnings,
        "summary": class_summary(run.data, run.test.shapes),
        "curves": curves,
        "galleries": {run.data.name: gallery},
        "choices": choices,
        "decisions": decisions,
        "points": points,
    }


def _choice_rows(name: str, sels: dict) -> list[dict]:
    """The layers ``--layers auto`` chose for each method of one class, for the report."""
    return [
        {
            "class": name,
            "method": m,
            "layers": sel.name,
            "synthetic_aupr": sel.aupr,
            "selection_s": layerchoice.selection_seconds(sels),
        }
        for m, sel in sels.items()
    ]


def _apply_object_mask(fx, run, metrics: dict, plan: ClassPlan, planner, say=quiet) -> tuple:
    """Scores outside the class's object mask multiplied by r, in ``run`` and ``metrics`` -> (the masks or
    None, keypoint fallback warnings, the ``auto`` decision rows). A keypoint mask (``plan.cfg``) or a
    learned one; ``auto`` chooses the mask and r from the training images."""
    if plan.cfg:
        obj, warnings = class_object_masks(run, plan.cfg)
        r, decisions = plan.r, []
    elif planner is not None:
        obj, r, warnings, decisions = planner.test_masks, plan.r, [], []
        if plan.object_mask == "auto":
            dec = planner.decide(fx, run.train.images)
            t_masks = time.perf_counter()  # the test masks auto asks for are part of its cost
            candidates = plan.candidates or {}
            obj = auto_masks(dec, planner, lambda d: class_object_masks(run, candidates[d])[0])
            r = dec.r
            auto_s = planner.seconds + time.perf_counter() - t_masks
            decisions.append({**dec.row(run.data.name), "auto_s": round(auto_s, 2)})
            say(f"{run.data.name}: object mask auto chose {dec.mask}, r={dec.r} ({dec.reason})")
    else:
        return None, [], []
    for name in plan.methods:
        run.maps[name], run.scores[name], metrics[name] = masked_result(run, name, obj, r)
    return obj, warnings, decisions


def judged(maps, shapes, pre, cal) -> list[tuple[Verdict, bool]]:
    """``predict``'s rule on evaluate's maps, on the original pixels: per image the verdict, and whether
    the image-score rule's mask (regions at the pixel quantile, whatever the decision) would draw a region."""
    out = []
    for score_map, shape in zip(maps, shapes):
        full = pre.to_original(score_map, shape)
        area = min_area_pixels(cal.min_area, *full.shape[:2])
        verdict = judge(full, cal.region_threshold, cal.mask_level, area)
        out.append((verdict, bool(find_regions(full, cal.pixel_threshold, area)[0])))
    return out


def frame_masks(maps: np.ndarray, flagged: np.ndarray, level: float, min_area: float) -> np.ndarray:
    """The defect masks at the frame's resolution: regions from ``level`` on flagged images, else empty."""
    masks = np.zeros(maps.shape, bool)
    area = min_area_pixels(min_area, *maps.shape[1:3])
    for i in np.flatnonzero(flagged):
        masks[i] = find_regions(maps[i], level, area)[1]
    return masks


def operating_point_row(run, name: str, layers, s: Settings, far: float, folds: int) -> dict:
    """One method on one class at its calibrated levels, beside the best threshold with as few false alarms."""
    fitted = run.left_out.get(name)
    if fitted is None and METHODS[name].abilities.leave_one_out:
        fitted = s.method(name, tuple(layers)).fit(run.train)
    cal, _ = calibrate_held_out(name, s, layers, run.train, far, folds, fitted=fitted)
    labels = run.labels.astype(bool)
    verdicts = judged(run.maps[name], run.test.shapes, s.backbone.pre, cal)
    statistic = np.array([verdict.region_score for verdict, _ in verdicts])
    flagged = statistic > cal.region_threshold
    row = {
        "class": run.data.name,
        "method": name,
        "n_calibration": cal.n_images,
        "calibration": cal.how,
        "guaranteed": cal.guaranteed,
        "region_threshold": cal.region_threshold,
        "mask_level": cal.mask_level,
        "mask_alarm_rate": cal.mask_alarm_rate,
        "good_test": int((~labels).sum()),
        "false_alarms": int((flagged & ~labels).sum()),
        "defective_test": int(labels.sum()),
        "contradictions": int(sum(bool(v.regions) != f for (v, _), f in zip(verdicts, flagged))),
    }
    image_flagged = run.scores[name] > cal.image_threshold
    row["image_rule_contradictions"] = int(sum(f != r for f, (_, r) in zip(image_flagged, verdicts)))
    if labels.any():
        best = best_recall(statistic, labels, row["false_alarms"])
        recall = float(np.mean(flagged[labels]))
        row.update(
            {
                "recall": recall,
                "best_recall": best["recall"],
                "recall_ratio": recall / best["recall"] if best["recall"] > 0 else float("nan"),
                "image_precision": at_threshold(flagged, labels, 0.5)["precision"],
                "image_rule_false_alarms": int((image_flagged & ~labels).sum()),
                "image_rule_recall": float(np.mean(image_flagged[labels])),
                "best_recall_image_score": best_recall(run.scores[name], labels, row["false_alarms"])[
                    "recall"
                ],
            }
        )
    if run.data.has_masks and run.masks.any():
        masks = frame_masks(run.maps[name], flagged, cal.mask_level, cal.min_area)
        pixel, oracle = at_threshold(masks, run.masks, 0.5), best_f1(run.maps[name], run.masks)
        row.update(
            {
                "pixel_f1": pixel["f1"],
                "pixel_iou": pixel["iou"],
                "oracle_pixel_f1": oracle["f1"],
                "pixel_f1_ratio": pixel["f1"] / oracle["f1"] if oracle["f1"] > 0 else float("nan"),
            }
        )
    return {column: row.get(column) for column in POINT_COLUMNS}


def _shown(value) -> str:
    """A metric for the log line: 3 decimals, 'nan' when undefined, 'n/a' when not measured."""
    return "n/a" if value is None else f"{value:.3f}"


def _heatmaps(folder: Path, run, methods: list[str], n: int, fx) -> None:
    ranges = {name: (float(run.maps[name].min()), float(run.maps[name].max())) for name in methods}
    for i in pick_examples(run.data.defects, n):
        panels = [("image", run.test.images[i])]
        if run.data.has_masks:  # an all-black "ground truth" would claim there is no defect
            panels.append(("ground truth", run.masks[i]))
        for name in methods:
            heat = colorize(run.maps[name][i], *ranges[name])
            panels += [(f"{name} map", heat), (f"{name} overlay", overlay(run.test.images[i], heat))]
        p = run.data.test[i]
        panel_figure(
            folder / f"{p.parent.name}_{p.stem}.png",
            f"{run.data.name}/{p.parent.name}/{p.name}",
            panels,
            fx.weights.banner,
        )
