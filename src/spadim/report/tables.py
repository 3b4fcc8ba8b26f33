"""Result tables as CSV, JSON and Markdown, with per-group means.

A metric is a float, NaN when undefined on the labels (no anomalous pixel, say) or None when it was
not measured at all (no ground-truth masks): "nan" and "n/a" in CSV/Markdown, NaN and null in JSON.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

METRIC_COLUMNS = ("pixel_auroc", "pixel_aupr", "image_auroc", "aupro")


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


def write_table(out: Path, stem: str, rows: list[dict], columns: Sequence[str], title: str, meta: dict) -> str:
    """Write ``stem``.csv/.json/.md; returns the Markdown text (title, banner, table)."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        w.writerows({c: _fmt(r.get(c, "")) for c in columns} for r in rows)
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2, default=str, allow_nan=True))
    md = f"# {title}\n\n{meta.get('weights', '')}\n\n{markdown_table(rows, columns)}\n"
    (out / f"{stem}.md").write_text(md)
    return md
