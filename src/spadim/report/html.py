"""One self-contained ``report.html`` per run.

The page is read by a person who wants our numbers beside the published ones, so every section
states where a number comes from. It has inline CSS only, no scripts, fonts or external URLs, and
links images by relative path: the caller writes the PNGs into ``out`` and a link is left out when
its file is missing, so the page never shows a broken image. Standard library only (no template
engine), one plain function per section.

``context`` keys (all but ``title``, ``command``, ``weights`` and ``results`` may be absent/None):
``created``, ``data``, ``settings``, ``curves``, ``galleries``, ``mask_sweep``, ``layer_sweep``,
``extra_sections``; see :func:`write_report`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

from . import published
from .markup import (  # noqa: F401 - callers import html_table and RANDOM_BANNER from here
    METRICS,
    METRIC_LABELS,
    PAPER_ARCH,
    RANDOM_BANNER,
    REF_METRIC,
    REFERENCES,
    _cell,
    _data_value,
    _delta,
    _e,
    _figure,
    _fmt,
    _missing_reason,
    _Notes,
    _num,
    _reference,
    _source_id,
    html_table,
)

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
 margin:0;color:#1d1d1f;background:#fff;line-height:1.45}
main{max-width:1200px;margin:0 auto;padding:0 24px 48px}
h1{font-size:1.7em;margin:.8em 0 .2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
h3{margin-bottom:.3em}
.banner{background:#c00;color:#fff;font-weight:700;text-align:center;padding:14px;font-size:1.15em}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.92em}
th,td{border:1px solid #d0d0d0;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#eef1f5}tbody tr:nth-child(even){background:#f7f7f9}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.mean td{font-weight:600;border-top:2px solid #999}
.pos{color:#0a7a2a;font-weight:600}.neg{color:#c0161d;font-weight:600}
.muted{color:#666;font-size:.9em}.ref{font-size:.75em;vertical-align:super}
pre{background:#f4f4f4;padding:8px 10px;white-space:pre-wrap;word-break:break-all;font-size:.88em}
.caveats{background:#fff8e1;border-left:4px solid #f0b400;padding:6px 14px;margin:.6em 0}
dl.kv{display:grid;grid-template-columns:max-content auto;gap:2px 14px;margin:.4em 0}
dl.kv dt{font-weight:600}dl.kv dd{margin:0}
figure{display:inline-block;margin:6px 10px 12px 0;vertical-align:top}
figure img{max-width:100%;border:1px solid #ccc}figcaption{font-size:.85em;color:#444}
.wide img{max-width:1150px}.half img{max-width:560px}
.cols{display:flex;flex-wrap:wrap;gap:0 48px}.cols>div{flex:1 1 240px}.cols>div:first-child{flex:3 1 480px}
nav{font-size:.92em}nav a{margin-right:12px}
ol.notes{font-size:.88em}details summary{cursor:pointer;font-weight:600}
"""


def section_banner(context: dict) -> str:
    """Red banner when the backbone is untrained: its numbers mean nothing against the papers."""
    weights = context.get("weights") or {}
    if weights.get("pretrained") is False:
        return f'<div class="banner" role="alert">{_e(RANDOM_BANNER)}</div>'
    return ""


def section_header(context: dict) -> str:
    """Title, data, weights, settings and the command, so the page says exactly what was run."""
    parts = [f"<h1>{_e(context.get('title') or 'spadim report')}</h1>"]
    if context.get("created"):
        parts.append(f'<p class="muted">Created {_e(context["created"])}</p>')
    parts.append(section_data(context.get("data")))
    weights = context.get("weights") or {}
    sha = str(weights.get("sha256") or "")
    kv = [
        ("arch", weights.get("arch")),
        ("file", weights.get("source")),
        ("sha256", sha[:12] if sha else None),
        ("pretrained", weights.get("pretrained")),
        ("description", weights.get("describe")),
    ]
    boxes = ["<div><h3>Weights</h3>" + _kv(kv) + "</div>"]
    settings = context.get("settings") or {}
    if settings:
        order = ["seed"] + [k for k in settings if k != "seed"]
        boxes.append(
            "<div><h3>Settings</h3>" + _kv([(k, settings.get(k)) for k in order if k in settings]) + "</div>"
        )
    parts.append(f'<div class="cols">{"".join(boxes)}</div>')
    parts.append(f"<h3>Command</h3><pre>{_e(context.get('command'))}</pre>")
    return "<header>" + "".join(parts) + "</header>"


def _kv(pairs: Iterable[tuple[str, Any]]) -> str:
    items = []
    for k, v in pairs:
        if v is None or v == "":
            continue
        if isinstance(v, (list, tuple)):
            v = ", ".join(str(x) for x in v)
        items.append(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>")
    return f'<dl class="kv">{"".join(items)}</dl>' if items else ""


def section_data(data: dict | None) -> str:
    """Data root and per-class image counts; notes say when a class is a subset or resized."""
    if not data:
        return ""
    parts = ["<h3>Data</h3>"]
    if data.get("root"):
        parts.append(f"<p>Root: <code>{_e(data['root'])}</code></p>")
    classes = data.get("classes") or []
    cols = ["name", "n_train", "n_test_good", "n_test_anomalous", "image_size", "note"]
    parts.append(html_table([{c: r.get(c) for c in cols} for r in classes], cols))
    return "".join(parts)


def caveats(context: dict) -> list[str]:
    """Plain statements of why our numbers may differ from the papers'."""
    out = []
    weights = context.get("weights") or {}
    if weights.get("pretrained") is False:
        out.append("The backbone has random, untrained weights: the comparison is meaningless.")
    arch = weights.get("arch")
    if arch and arch != PAPER_ARCH:
        out.append(
            f"Our backbone is <b>{_e(arch)}</b>; the papers use Wide ResNet-50-2 (<code>{PAPER_ARCH}</code>)."
        )
    for c in (context.get("data") or {}).get("classes") or []:
        note = c.get("note")
        if note:
            size = c.get("image_size")
            size = f", images {_e(size)}" if size and str(size) not in str(note) else ""
            out.append(f"<b>{_e(c.get('name'))}</b>: {_e(note)}{size}.")
    classes = [r.get("class") for r in context.get("results") or [] if r.get("class") != "mean"]
    n = len(set(classes))
    if n and n < len(published.MVTEC_CLASSES):
        out.append(
            f"Our mean row is over {n} class{'es' if n != 1 else ''}; "
            f"the study's Table 1 means are over all {len(published.MVTEC_CLASSES)} MVTec AD classes."
        )
    return out


def section_results(context: dict, notes: _Notes) -> str:
    """Our metrics per class and method beside the published ones, with the difference coloured."""
    rows = context.get("results") or []
    if not rows:
        return ""
    study_means = published.study_means()
    study_src = published.study()["source"]
    head = (
        "<tr><th rowspan=2>class</th><th rowspan=2>method</th><th colspan=4>ours</th>"
        "<th colspan=3>published pixel AUROC</th><th colspan=3>published pixel AUPR</th>"
        "<th rowspan=2>note</th></tr><tr>"
        + "".join(f"<th>{METRIC_LABELS[m]}</th>" for m in METRICS)
        + "<th>value</th><th>Δ ours</th><th>source</th>" * 2
        + "</tr>"
    )
    body = []
    for r in rows:
        cls_name, method = r.get("class"), r.get("method")
        is_mean = cls_name == "mean"
        cells = [f"<td>{_e(cls_name)}</td>", f"<td>{_e(method)}</td>"]
        cells += [_cell(r.get(m), f' data-metric="{m}"') for m in METRICS]
        for metric in ("pixel_auroc", "pixel_aupr"):
            if is_mean:
                ref = (study_means.get(str(method)) or {}).get(metric)
                label = "study Table 1 (15-class mean)"
                refs = [(ref, label, notes.source(study_src))] if ref is not None else []
            else:
                refs = []
                for key, label, values in _reference(str(method), metric):
                    v = values.get(str(cls_name))
                    if v is None and key == "padim_paper_r18":
                        continue  # a partial table: show it only where it has the class
                    refs.append((v, label, notes.source(_source_id(key, metric))))
                if not refs and method in REFERENCES:
                    reason = _missing_reason(f"{method}_paper_{REF_METRIC[metric]}")
                    if reason:
                        refs = [(None, "not published", notes.ref(f"miss:{method}:{metric}", _e(reason)))]
            cells.append(_ref_cells(r.get(metric), refs))
        note = r.get("note") or ""
        if any(_num(r.get(m)) is None for m in METRICS) and not note:
            note = "–: metric undefined here (e.g. no anomalous or no good test image)"
        cells.append(f'<td class="muted">{_e(note)}</td>')
        attrs = f' data-class="{_e(cls_name)}" data-method="{_e(method)}"'
        attrs = (' class="mean"' if is_mean else "") + attrs
        body.append(f"<tr{attrs}>{''.join(cells)}</tr>")
    table = f'<table id="results-table"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>'
    cav = caveats(context)
    cav_html = (
        (
            '<div class="caveats"><b>Read the comparison with care:</b><ul>'
            + "".join(f"<li>{c}</li>" for c in cav)
            + "</ul></div>"
        )
        if cav
        else ""
    )
    return (
        f'<section id="results"><h2>Results and published numbers</h2>{cav_html}{table}'
        '<p class="muted">Values shown with 3 decimals; Δ = ours − published '
        '(<span class="pos">green ≥ 0</span>, <span class="neg">red &lt; 0</span>); '
        "“–” = not available or undefined; “n/a” = not measured (no ground-truth masks).</p></section>"
    )


def _ref_cells(ours: Any, refs: list[tuple[Any, str, str]]) -> str:
    """Three cells (value, Δ, source); several references stack as lines in the same cells."""
    if not refs:
        return '<td class="num muted">–</td><td class="num muted">–</td><td></td>'
    vals = "<br>".join(f'<span data-ref-value="{_data_value(v)}">{_fmt(v)}</span>' for v, _, _ in refs)
    deltas = "<br>".join(_delta(ours, v) for v, _, _ in refs)
    srcs = "<br>".join(f"{_e(label)} {ref}" for _, label, ref in refs)
    return f'<td class="num">{vals}</td><td class="num">{deltas}</td><td class="muted">{srcs}</td>'


def _sweep_means(rows: list[dict]) -> list[dict]:
    """Mean-over-classes sweep rows: the 'mean' rows when given, else means computed here."""
    means = [r for r in rows if r.get("class") == "mean"]
    if means or not rows:
        return means
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r.get("method"), r.get("detector"), r.get("multiplier")), []).append(r)
    out = []
    for (method, det, mult), sel in groups.items():
        m = {"class": "mean", "method": method, "detector": det, "multiplier": mult}
        for c in METRICS:
            vals = [x for x in (_num(s.get(c)) for s in sel) if x is not None]
            m[c] = sum(vals) / len(vals) if vals else None
        out.append(m)
    return out


def section_mask_sweep(out: Path, sweep: dict | None) -> str:
    """Proposal 1: how well each object mask fits, and what the outside multiplier changes."""
    if not sweep:
        return ""
    parts = ['<section id="proposal1"><h2>Proposal 1: object mask × outside multiplier</h2>']
    suit = sweep.get("suitability") or []
    if suit:
        cols = [
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
        parts.append("<h3>Mask suitability per class and detector</h3>" + html_table(suit, cols))
    rows = sweep.get("sweep") or []
    if rows:
        cols = ["method", "detector", "multiplier", *METRICS]
        parts.append("<h3>Multiplier sweep, mean over classes</h3>" + html_table(_sweep_means(rows), cols))
        per_class = [r for r in rows if r.get("class") != "mean"]
        if per_class:
            parts.append(
                "<details><summary>Full sweep, per class</summary>"
                + html_table(per_class, ["class", *cols])
                + "</details>"
            )
    plots = sweep.get("plots") or []
    figs = "".join(_figure(out, p, Path(str(p)).stem.replace("_", " "), "half") for p in plots)
    parts.append(f"<div>{figs}</div></section>")
    return "".join(parts)


def section_layer_sweep(out: Path, sweep: dict | None) -> str:
    """Proposal 2: which backbone layers matter, set beside the study's Table 3, share and Figure 5."""
    if not sweep:
        return ""
    study = published.study()
    parts = ['<section id="proposal2"><h2>Proposal 2: layer subsets</h2>']
    parts.append(_table3(sweep.get("table3") or [], study))
    best = sweep.get("best") or []
    if best:
        cols = ["class", "method", "best_layers", "n_layers", "pixel_aupr", "pixel_auroc"]
        parts.append("<h3>Best layer subset per class (by pixel AUPR)</h3>" + html_table(best, cols))
    counts = sweep.get("counts") or {}
    share = study.get("two_layer_best_class_share") or {}
    items = []
    for method, c in counts.items():
        n, two = c.get("classes") or 0, c.get("best_uses_two_layers") or 0
        frac = f"{two / n:.0%}" if n else "–"
        theirs = ""
        if _num(share.get("value")) is not None:
            theirs = f"; study: {_e(share.get('relation', ''))} {share['value']:.0%} of classes"
        items.append(f"<li>{_e(method)}: two layers best in {two} of {n} classes ({frac}){theirs}</li>")
    corr = sweep.get("correlation") or {}
    r_study = study.get("spade_padim_aupr_correlation_over_layer_subsets")
    if corr:
        r1 = corr.get("pearson_r_combination_means")
        r2 = corr.get("pearson_r_class_x_combination")
        items.append(
            f"<li>SPADE vs PaDiM pixel AUPR over layer subsets: Pearson r = {_fmt(r1, 2)} "
            f"(subset means), {_fmt(r2, 2)} (class × subset); study: {_fmt(r_study, 2)} "
            f"{_delta(r1, r_study)}</li>"
        )
    if items:
        parts.append("<h3>Two-layer share and correlation</h3><ul>" + "".join(items) + "</ul>")
    parts.append(
        _figure(out, sweep.get("figure5"), "Figure 5: SPADE vs PaDiM pixel AUPR per layer subset", "half")
    )
    rows = sweep.get("rows") or []
    if rows:
        cols = list(dict.fromkeys(k for r in rows for k in r))
        parts.append("<details><summary>Full layer sweep</summary>" + html_table(rows, cols) + "</details>")
    parts.append("</section>")
    return "".join(parts)


def _table3(rows: list[dict], study: dict) -> str:
    """Our Table 3 (mean AUPR with/without layer 4) with the study's column beside it."""
    if not rows:
        return ""
    ref = study.get("table3_aupr_layer4") or {}
    body = []
    for r in rows:
        combo = str(r.get("combinations") or "")
        key = "without_layer4" if combo.startswith("without") else "with_layer4"
        theirs = (ref.get(str(r.get("method"))) or {}).get(key)
        ours = r.get("mean_pixel_aupr")
        body.append(
            f"<tr><td>{_e(r.get('method'))}</td><td>{_e(combo)}</td>"
            f'<td class="num">{_e(r.get("n"))}</td>{_cell(ours)}{_cell(r.get("mean_pixel_auroc"))}'
            f'<td class="num">{_fmt(theirs)}</td><td class="num">{_delta(ours, theirs)}</td></tr>'
        )
    head = (
        "<tr><th>method</th><th>combinations</th><th>n</th><th>ours: mean pixel AUPR</th>"
        "<th>ours: mean pixel AUROC</th><th>study: mean pixel AUPR</th><th>Δ AUPR</th></tr>"
    )
    return (
        f"<h3>Table 3: with vs without layer 4</h3><table><thead>{head}</thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def section_per_class(out: Path, context: dict) -> str:
    """ROC/PR curves and the best/worst gallery per class: where the maps fire."""
    curves = context.get("curves") or {}
    galleries = context.get("galleries") or {}
    order = [r.get("class") for r in context.get("results") or []]
    names = [c for c in dict.fromkeys([*order, *curves, *galleries]) if c in curves or c in galleries]
    blocks = []
    for name in names:
        figs = _figure(out, curves.get(name), "ROC and PR curves", "half")
        figs += "".join(
            _figure(out, g.get("path"), g.get("caption") or "", "wide") for g in galleries.get(name) or []
        )
        if figs:
            blocks.append(f'<h3 id="class-{_e(name)}">{_e(name)}</h3><div>{figs}</div>')
    if not blocks:
        return ""
    return '<section id="per-class"><h2>Per class: curves and gallery</h2>' + "".join(blocks) + "</section>"


def section_extra(extra: Sequence[dict] | None) -> str:
    """Caller-provided sections, already escaped HTML, appended as given."""
    return "".join(
        f"<section><h2>{_e(s.get('title'))}</h2>{s.get('html') or ''}</section>" for s in extra or []
    )


def _nav(body: str) -> str:
    links = [
        ("results", "Results"),
        ("proposal1", "Proposal 1"),
        ("proposal2", "Proposal 2"),
        ("per-class", "Per class"),
        ("notes", "Sources"),
    ]
    found = [f'<a href="#{i}">{t}</a>' for i, t in links if f'id="{i}"' in body]
    return f"<nav>{''.join(found)}</nav>" if found else ""


def render(out: Path, context: dict) -> str:
    """The whole page as a string (links checked against the files in ``out``)."""
    out = Path(out)
    notes = _Notes()
    sections = [
        section_results(context, notes),
        section_mask_sweep(out, context.get("mask_sweep")),
        section_layer_sweep(out, context.get("layer_sweep")),
        section_per_class(out, context),
        section_extra(context.get("extra_sections")),
    ]
    foot = notes.html()
    body = "".join(sections) + (f'<section id="notes">{foot}</section>' if foot else "")
    title = _e(context.get("title") or "spadim report")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title>'
        f"<style>{CSS}</style></head><body>{section_banner(context)}<main>"
        f"{section_header(context)}{_nav(body)}{body}</main></body></html>\n"
    )


def write_report(out: Path, context: dict) -> Path:
    """Write ``out/report.html`` from ``context`` and return its path.

    Images are linked relative to ``out`` and only when the file exists there, so the page can be
    moved or archived with its folder and never shows a broken image.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.html"
    path.write_text(render(out, context), encoding="utf-8")
    return path
