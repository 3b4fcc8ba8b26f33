"""Published reference numbers for MVTec AD, with a source for every number.

The numbers live in ``published.json`` next to this module (package data). All values are fractions
in [0, 1]; the papers print percent. ``None`` (JSON ``null``) means the number could not be found in
a source that could be read; the reason is in the file's ``missing`` list. Nothing is guessed.

File layout::

    {
      "format": 1, "units": "...", "classes": [15 MVTec AD classes],
      "sources": {id: {"citation", "table", "backbone", "url", "read_at"?, "title"?, "note"?}},
      "per_class": {table_key: {"source": id, "method": key, "metric": key,
                                "values": {class: value | null}, "reported_mean", "mean_note"}},
      "study": {"source": "study", "table1_means": {method: {"pixel_auroc", "pixel_aupr"}},
                "table3_aupr_layer4": {method: {"with_layer4", "without_layer4"}},
                "spade_padim_aupr_correlation_over_layer_subsets": r,
                "two_layer_best_class_share": {"relation": ">", "value": 0.6}},
      "missing": [{"table", "classes": [...] | "all", "reason"}]
    }

``note``, ``read_at`` and ``reason`` are a string or a list of strings (lines of one text).

Per-class tables (``method`` / ``metric``):

- ``spade_paper_pixel_auroc``: SPADE paper (Cohen & Hoshen 2020), ``spade_paper`` / ``pixel_auroc``
- ``padim_paper_r18_pixel_auroc``: PaDiM paper, R18-Rd100 (partial), ``padim_paper_r18``
- ``padim_paper_wr50_pixel_auroc``: PaDiM paper, WR50-Rd550, ``padim_paper_wr50``
- ``draem_padim_pixel_ap`` and ``draem_padim_pixel_auroc``: PaDiM as re-run in DRAEM (Table 2),
  ``padim_draem`` / ``pixel_ap`` or ``pixel_auroc``
- ``patchcore_reference_wr50_pixel_auroc``: PatchCore (Roth et al. 2022), the reference code's released
  results in the paper's WR50 / coreset 10% setting, ``patchcore_reference_wr50`` / ``pixel_auroc``

Use :func:`per_class` for one table's values, :func:`study_means` for the study's Table 1 means,
:func:`study` for all the study's numbers and :func:`problems` to check the file.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

MVTEC_CLASSES = (
    "bottle",
    "cable",
    "capsule",
    "carpet",
    "grid",
    "hazelnut",
    "leather",
    "metal_nut",
    "pill",
    "screw",
    "tile",
    "toothbrush",
    "transistor",
    "wood",
    "zipper",
)

DATA_FILE = "published.json"


@lru_cache(maxsize=1)
def _text() -> str:
    return resources.files(__package__).joinpath(DATA_FILE).read_text(encoding="utf-8")


def load() -> dict:
    """The whole reference file as a fresh dict (callers may modify it)."""
    return json.loads(_text())


def text(value: str | list[str] | None) -> str:
    """A ``note``/``read_at``/``reason`` field as one string (lists are lines of one text)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return " ".join(value)


def tables() -> list[str]:
    """Keys of the per-class tables."""
    return list(load()["per_class"])


def table(key: str) -> dict:
    """One per-class table entry (source, method, metric, values, reported_mean)."""
    data = load()["per_class"]
    if key not in data:
        raise KeyError(f"no per-class table {key!r}; known: {', '.join(data)}")
    return data[key]


def per_class(metric: str, method_key: str) -> dict[str, float | None]:
    """Per-class values of ``metric`` (e.g. ``pixel_auroc``) for ``method_key`` (e.g.
    ``padim_paper_wr50``), one entry per MVTec AD class; ``None`` where no number was found."""
    data = load()["per_class"]
    for entry in data.values():
        if entry["metric"] == metric and entry["method"] == method_key:
            return dict(entry["values"])
    known = sorted(f"{e['method']}/{e['metric']}" for e in data.values())
    raise KeyError(f"no published {metric!r} for {method_key!r}; known: {', '.join(known)}")


def methods(metric: str | None = None) -> list[str]:
    """Method keys with a per-class table (for ``metric`` only when given)."""
    return [e["method"] for e in load()["per_class"].values() if metric in (None, e["metric"])]


def source(source_id: str) -> dict:
    """One source entry: citation, table, backbone, url and notes."""
    data = load()["sources"]
    if source_id not in data:
        raise KeyError(f"no source {source_id!r}; known: {', '.join(data)}")
    return data[source_id]


def study() -> dict:
    """All the study's numbers (Table 1 means, Table 3 layer-4 AUPR, correlation, two-layer share)."""
    return load()["study"]


def study_means() -> dict[str, dict[str, float]]:
    """The study's Table 1 15-class means: ``{method: {"pixel_auroc": x, "pixel_aupr": y}}``."""
    return {m: dict(v) for m, v in study()["table1_means"].items()}


def missing() -> list[dict]:
    """What could not be found, with the reason."""
    return list(load()["missing"])


def problems(data: dict | None = None) -> list[str]:
    """Everything wrong with the reference data (empty when it is sound): unknown or incomplete
    sources, tables that do not cover exactly the 15 classes, values outside [0, 1] and nulls
    without an entry in ``missing``."""
    data = load() if data is None else data
    out: list[str] = []
    sources = data.get("sources", {})
    for sid, src in sources.items():
        for field in ("citation", "table", "backbone", "url"):
            if not (isinstance(src.get(field), str) and src[field].strip()):
                out.append(f"source {sid}: empty {field}")
    if sorted(data.get("classes", [])) != sorted(MVTEC_CLASSES):
        out.append("classes: not the 15 MVTec AD classes")
    missing_map: dict[str, set[str]] = {}
    for item in data.get("missing", []):
        if not text(item.get("reason")).strip():
            out.append(f"missing {item.get('table')}: no reason")
        classes = item.get("classes")
        missing_map[item.get("table")] = set(MVTEC_CLASSES if classes == "all" else classes or ())
    for key, entry in data.get("per_class", {}).items():
        if entry.get("source") not in sources:
            out.append(f"{key}: unknown source {entry.get('source')!r}")
        for field in ("method", "metric"):
            if not entry.get(field):
                out.append(f"{key}: no {field}")
        values = entry.get("values", {})
        if sorted(values) != sorted(MVTEC_CLASSES):
            out.append(f"{key}: classes differ from the 15 MVTec AD classes")
        for cls, v in values.items():
            if v is None:
                if cls not in missing_map.get(key, set()):
                    out.append(f"{key}/{cls}: null without a 'missing' entry")
            elif isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                out.append(f"{key}/{cls}: {v!r} not in [0, 1]")
        mean = entry.get("reported_mean")
        if mean is not None and not (isinstance(mean, (int, float)) and 0.0 <= mean <= 1.0):
            out.append(f"{key}: reported_mean {mean!r} not in [0, 1]")
    st = data.get("study", {})
    if st.get("source") not in sources:
        out.append(f"study: unknown source {st.get('source')!r}")
    return out
