"""The fit report: how the good images scored held out, the level they set, and the ones to check.

Written beside the model (``MODEL.report/index.html``) by ``spadim fit``. A user with 25-50 good images
needs to see whether one image sets the level (the audit) and what it looks like, before trusting it.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from .figures import colorize, overlay, panel_figure, save_figure, subplots

SHOWN = 4  # the highest-scoring good images shown when none is flagged


def _histogram(path: Path, statistic: np.ndarray, level: float, flagged: list[int], banner: str) -> None:
    fig, ax = subplots(figsize=(6.4, 2.8))
    ax.hist(statistic, bins=max(10, len(statistic) // 3), color="#4a78b5")
    ax.axvline(level, color="#c0392b", lw=2, label=f"region level {level:.4g}")
    for i in flagged:
        ax.axvline(statistic[i], color="#e67e22", ls="--", lw=1)
    ax.set_xlabel("held-out region statistic of each good image")
    ax.set_ylabel("images")
    ax.legend(fontsize=8)
    save_figure(fig, path, "good images, scored by the model without them", banner)


def write_fit_report(
    model: Path,
    method: str,
    calibration,
    held,
    names: list[str],
    frames: np.ndarray,
    flagged: list[dict],
    banner: str = "",
) -> Path:
    """``MODEL.report/index.html`` with the histogram, the audit and each listed image with its map."""
    folder = Path(f"{model}.report")
    folder.mkdir(parents=True, exist_ok=True)
    statistic = np.asarray(held.region_scores)
    order = {name: i for i, name in enumerate(names)}
    flagged_rows = [order[entry["image"]] for entry in flagged]
    _histogram(folder / "histogram.png", statistic, calibration.region_threshold, flagged_rows, banner)
    shown = flagged_rows or [int(i) for i in np.argsort(-statistic)[:SHOWN]]
    low = calibration.pixel_median
    high = low + 2.0 * (calibration.mask_level - low)
    pictures = []
    for rank, i in enumerate(shown):
        heat = colorize(held.maps[i], low, high)
        path = folder / f"image_{rank:02d}.png"
        panel_figure(
            path,
            Path(names[i]).name,
            [("good image", frames[i]), ("held-out map", heat), ("overlay", overlay(frames[i], heat))],
            banner,
        )
        pictures.append((i, path.name))
    rows = "".join(
        f"<tr><td>{html.escape(e['image'])}</td><td>{e['region_score']:.4g}</td><td>{e['robust_z']:.1f}</td>"
        f"<td>{e['level']:.4g}</td><td>{e['level_without_it']:.4g}</td></tr>"
        for e in flagged
    )
    audit = (
        "<p>These good images stand apart from the others (modified z-score of the held-out region statistic "
        "above 3.5). Each is a defect filed as good, or a rare variant that needs more examples like it. "
        "Check them; removing one changes the level as shown.</p><table><tr><th>image</th><th>region "
        "statistic</th><th>robust z</th><th>level</th><th>level without it</th></tr>" + rows + "</table>"
        if flagged
        else f"<p>No good image stands apart (modified z-score above 3.5). The {len(shown)} highest-scoring ones are "
        "shown below.</p>"
    )
    advice = calibration.advice() or ""
    warning = calibration.warning() or ""
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>spadim fit: {html.escape(str(model))}</title>
<style>body{{font-family:sans-serif;max-width:60rem;margin:2rem auto}}td,th{{padding:2px 8px;text-align:left}}
.warn{{color:#a04000}}</style></head><body>
<h1>{html.escape(method)} fitted on {calibration.n_images} good images</h1>
<p>{html.escape(banner)}</p>
<p>An image is a defect when a region of at least {calibration.min_area:.2%} of it lies above the region level
<b>{calibration.region_threshold:.4g}</b>, the split-conformal quantile at far = {calibration.far:g} of the
{html.escape(calibration.how)} region statistics below; regions are drawn from {calibration.mask_level:.4g}.</p>
<p class="warn">{html.escape(warning)}</p><p class="warn">{html.escape(advice)}</p>
<img src="histogram.png" alt="histogram of the held-out region statistics">
<h2>Audit of the good images</h2>{audit}
{"".join(f'<p><img src="{name}" alt="{html.escape(names[i])}"></p>' for i, name in pictures)}
{UPDATES}
</body></html>"""
    (folder / "index.html").write_text(page)
    return folder / "index.html"


UPDATES = "<!-- updates -->"  # where note_update adds its lines, newest last


def note_update(model: Path, entry: dict, calibration, stood_apart: list[str]) -> Path | None:
    """Add one version's growth to ``MODEL.report/index.html``, so the report never shows a level that is
    no longer in force without saying so. None when the model has no report (fitted from Python)."""
    index = Path(f"{model}.report") / "index.html"
    if not index.is_file():
        return None
    page = index.read_text()
    if UPDATES not in page:
        page = page.replace("</body>", f"{UPDATES}\n</body>")
    if "<h2>Updates</h2>" not in page:
        page = page.replace(
            UPDATES,
            f"<h2>Updates</h2><p>The level above is the one this report was written with. Each update "
            f"since added good images, each scored before it joined:</p>\n{UPDATES}",
        )
    apart = f"; stood apart: {', '.join(map(html.escape, stood_apart))}" if stood_apart else ""
    line = (
        f"<p>version {html.escape(entry['id'])} ({html.escape(entry['created_at'][:19])} UTC): "
        f"+{len(entry.get('images_added') or [])} images, n = {entry['n_images']}, region level "
        f"{entry['level_before']:.4g} &rarr; <b>{entry['level_after']:.4g}</b> at far = {calibration.far:g}, "
        f"resting on {calibration.n_deciding} of {calibration.n_images} held-out statistics{apart}</p>"
    )
    index.write_text(page.replace(UPDATES, f"{line}\n{UPDATES}"))
    return index
