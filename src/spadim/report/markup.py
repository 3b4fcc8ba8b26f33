"""HTML building blocks for the report: escaping, number formatting, tables, figures, source notes.

Shared by the report page and any study that adds a section of its own; standard library only.
"""

from __future__ import annotations

import math
from html import escape
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import quote, urlsplit

from . import published

METRICS = ("pixel_auroc", "pixel_aupr", "image_auroc", "aupro")
METRIC_LABELS = {
    "pixel_auroc": "pixel AUROC",
    "pixel_aupr": "pixel AUPR",
    "image_auroc": "image AUROC",
    "aupro": "AUPRO",
    "mean_pixel_aupr": "mean pixel AUPR",
    "mean_pixel_auroc": "mean pixel AUROC",
}
PAPER_ARCH = "wide_resnet50_2"
RANDOM_BANNER = "RANDOM UNTRAINED WEIGHTS — NOT IMAGENET-PRETRAINED; numbers are not comparable to the papers"
VERBATIM = {"multiplier", "layers", "best_layers"}  # shown as given, not as 3-decimal numbers

# Published per-class tables compared with each of our methods: (metric, method key, label).
REFERENCES = {
    "spade": [("pixel_auroc", "spade_paper", "SPADE paper")],
    "padim": [
        ("pixel_auroc", "padim_paper_wr50", "PaDiM paper WR50-Rd550"),
        ("pixel_auroc", "padim_paper_r18", "PaDiM paper R18-Rd100"),
        ("pixel_aupr", "padim_draem", "PaDiM re-run in DRAEM"),
    ],
    "patchcore": [("pixel_auroc", "patchcore_reference_wr50", "PatchCore reference code WR50, coreset 10%")],
}
# Our metric name -> the reference file's name for the same quantity.
REF_METRIC = {"pixel_auroc": "pixel_auroc", "pixel_aupr": "pixel_ap"}


# ---------------------------------------------------------------- small helpers


def _e(value: Any) -> str:
    """Escaped text; None becomes empty so absent fields never print 'None'."""
    return "" if value is None else escape(str(value))


def _num(value: Any) -> float | None:
    """A finite float or None: missing, NaN and non-numbers all render as '–'."""
    if value is None or isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) or math.isinf(x) else x


def _fmt(value: Any, digits: int = 3) -> str:
    x = _num(value)
    return "–" if x is None else f"{x:.{digits}f}"


def _data_value(value: Any) -> str:
    """Full value for ``data-value`` (``repr`` round-trips a float exactly)."""
    if value is None:
        return "nan"
    try:
        return repr(float(value))
    except (TypeError, ValueError):
        return escape(str(value))


def _delta(ours: Any, ref: Any) -> str:
    """Ours − published, green when ≥ 0 and red when < 0; '–' when either is missing."""
    a, b = _num(ours), _num(ref)
    if a is None or b is None:
        return '<span class="muted">–</span>'
    d = a - b
    cls = "pos" if d >= 0 else "neg"
    return f'<span class="{cls}" data-delta="{d!r}">{d:+.3f}</span>'


def _cell(value: Any, attrs: str = "") -> str:
    """A value cell: 3 decimals shown, full value kept in data-value; None (not measured, e.g. pixel
    metrics without ground-truth masks) shows "n/a", unlike NaN (undefined), which shows "–"."""
    if value is None:
        return f'<td class="num muted"{attrs} data-value="n/a">n/a</td>'
    return f'<td class="num"{attrs} data-value="{_data_value(value)}">{_fmt(value)}</td>'


def html_table(rows: Sequence[dict], columns: Sequence[str], caption: str = "") -> str:
    """A generic table; floats get 3 decimals with the full value in data-value."""
    if not rows:
        return ""
    head = "".join(f"<th>{_e(METRIC_LABELS.get(c, c.replace('_', ' ')))}</th>" for c in columns)
    body = []
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c)
            if c not in VERBATIM and (isinstance(v, float) or (c in METRIC_LABELS and v is None)):
                cells.append(_cell(v))
            elif isinstance(v, (list, tuple)):
                cells.append(f"<td>{_e(', '.join(str(x) for x in v))}</td>")
            else:
                cells.append(f"<td>{_e(v)}</td>")
        cls = ' class="mean"' if "class" in columns and r.get("class") == "mean" else ""
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    cap = f"<caption>{_e(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _local(out: Path, rel: Any) -> str | None:
    """URL-quoted relative link to an existing file inside ``out``, or None (link left out)."""
    if not rel or not isinstance(rel, (str, Path)):
        return None
    rel = str(rel)
    if urlsplit(rel).scheme or rel.startswith(("/", "\\")) or Path(rel).is_absolute():
        return None
    root = out.resolve()
    target = (root / rel).resolve()
    if not target.is_file() or (target != root and root not in target.parents):
        return None
    return quote(target.relative_to(root).as_posix())


def _figure(out: Path, rel: Any, caption: str = "", cls: str = "") -> str:
    """An image wrapped in a link to itself (full size on click); empty when the file is missing."""
    href = _local(out, rel)
    if href is None:
        return ""
    alt = _e(caption or rel)
    cap = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    c = f' class="{cls}"' if cls else ""
    return f'<figure{c}><a href="{href}"><img src="{href}" alt="{alt}" loading="lazy"></a>{cap}</figure>'


class _Notes:
    """Footnotes for published sources: each source (or missing-data reason) numbered once."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def ref(self, key: str, text: str) -> str:
        ids = [k for k, _ in self.items]
        if key not in ids:
            self.items.append((key, text))
            ids.append(key)
        n = ids.index(key) + 1
        return f'<a class="ref" href="#note-{n}">[{n}]</a>'

    def source(self, source_id: str) -> str:
        src = published.source(source_id)
        text = (
            f"{_e(src['citation'])}. {_e(src['table'])}. Backbone: {_e(src['backbone'])}. "
            f'<span class="muted">{_e(src["url"])}'
            f"{'; ' + _e(published.text(src.get('note'))) if src.get('note') else ''}</span>"
        )
        return self.ref("src:" + source_id, text)

    def html(self) -> str:
        if not self.items:
            return ""
        lis = "".join(f'<li id="note-{i}">{t}</li>' for i, (_, t) in enumerate(self.items, 1))
        return f'<h3>Sources of the published numbers</h3><ol class="notes">{lis}</ol>'


def _missing_reason(table: str) -> str:
    """Why the reference file has no numbers for ``table`` (empty if it does not say)."""
    for item in published.missing():
        if item.get("table") == table:
            return published.text(item.get("reason"))
    return ""


def _reference(method: str, metric: str) -> list[tuple[str, str, dict]]:
    """Published per-class tables for our ``method``/``metric``: (method key, label, values)."""
    out = []
    for m, key, label in REFERENCES.get(method, []):
        if m != metric:
            continue
        try:
            values = published.per_class(REF_METRIC[m], key)
        except KeyError:
            continue
        out.append((key, label, values))
    return out


def _source_id(method_key: str, metric: str) -> str:
    for key in published.tables():
        t = published.table(key)
        if t["method"] == method_key and t["metric"] == REF_METRIC[metric]:
            return t["source"]
    raise KeyError(method_key)


# ---------------------------------------------------------------- sections
