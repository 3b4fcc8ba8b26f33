"""Result tables as CSV, JSON and Markdown, with per-group means.

A metric is a float, NaN when undefined on the labels (no anomalous pixel, say) or None when it was
not measured at all (no ground-truth masks): "nan" and "n/a" in CSV/Markdown; null in JSON either way, with the reason in ``null_reasons``.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

METRIC_COLUMNS = ("pixel_auroc", "pixel_aupr", "image_auroc", "aupro")
#: the mask-suitability table of proposal 1 (mask sweep, reproduce, report.html)
SUITABILITY_COLUMNS = [
    "class",
    "detector",
    "area_fraction",
    "gt_coverage",
    "fg_coverage",
    "fg_precision",
    "auto_rating",
    "fallbacks",
    "n_test",
]


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def markdown_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def with_means(rows: list[dict], group: Sequence[str], metrics: Sequence[str] = METRIC_COLUMNS) -> list[dict]:
    """Append one 'mean' row per value of ``group`` columns (class column set to 'mean').

    A mean is over the defined values; NaN when none is, None (n/a) when none was measured."""
    keys = list(dict.fromkeys(tuple(r[g] for g in group) for r in rows))
    means = []
    for key in keys:
        sel = [r for r in rows if tuple(r[g] for g in group) == key]
        m = {"class": "mean", **dict(zip(group, key))}
        for c in metrics:
            measured = [r[c] for r in sel if r[c] is not None]
            vals = [v for v in measured if not math.isnan(v)]
            m[c] = float(np.mean(vals)) if vals else float("nan") if measured else None
        means.append(m)
    return rows + means


#: why a metric can be undefined (JSON null), by the word it ends with
NULL_REASONS = {
    "precision": "nothing was flagged, so precision is undefined",
    "recall": "no defective image or pixel to recall",
    "f1": "no defect and nothing flagged",
    "false_alarm_rate": "no normal image or pixel to falsely flag",
    "iou": "no defect and nothing flagged",
    "ratio": "the yardstick it divides by is zero or undefined",
    "auroc": "needs both normal and defective samples",
    "aupr": "needs defective samples",
}


def json_ready(value, reasons: dict | None = None, key: str = ""):
    """``value`` with every NaN or infinity replaced by null (strict JSON, which browsers parse); each row
    (a dict) that had one gains ``null_reasons``: column -> why it is undefined."""
    if isinstance(value, dict):
        own: dict[str, str] = {}
        out = {k: json_ready(v, own, k) for k, v in value.items()}
        if own:
            out["null_reasons"] = own
        return out
    if isinstance(value, (list, tuple)):
        return [json_ready(v, reasons, key) for v in value]
    if isinstance(value, (float, np.floating)) and not np.isfinite(value):
        if reasons is not None:
            word = next((w for w in NULL_REASONS if str(key).endswith(w)), None)
            reasons[key] = NULL_REASONS[word] if word else f"undefined ({value})"
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_table(
    out: Path, stem: str, rows: list[dict], columns: Sequence[str], title: str, meta: dict
) -> str:
    """Write ``stem``.csv/.json/.md; returns the Markdown text (title, banner, table)."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        w.writerows({c: _fmt(r.get(c, "")) for c in columns} for r in rows)
    (out / f"{stem}.json").write_text(
        json.dumps(json_ready({"meta": meta, "rows": rows}), indent=2, default=str, allow_nan=False)
    )
    md = f"# {title}\n\n{meta.get('weights', '')}\n\n{markdown_table(rows, columns)}\n"
    (out / f"{stem}.md").write_text(md)
    return md
