"""Pictures of a run: ROC/PR curves, heatmaps, overlays, panels and the best/worst gallery."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from matplotlib.figure import Figure

from spadim.metrics.ranking import pixel_aupr, pixel_auroc, pr_points, roc_points


def subplots(*grid, figsize=None, **kwargs):
    """(figure, axes) as ``pyplot.subplots``, drawn off-screen: a bare :class:`~matplotlib.figure.Figure`
    saves to files without pyplot, so no picture touches matplotlib's backend or its list of open
    figures, and the figure is freed with its last reference."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*grid, **kwargs)


def save_figure(fig, path: Path, title: str, banner: str = "", dpi: int = 90) -> None:
    """Title (with the weights banner when there is one), tight layout, save."""
    fig.suptitle(f"{title}\n{banner}" if banner else title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)


def plot_curves(
    path: Path, title: str, maps: dict[str, np.ndarray], masks: np.ndarray, banner: str = ""
) -> None:
    """Pixel-level ROC and PR curves of each method on one figure."""
    fig, (a, b) = subplots(1, 2, figsize=(10, 4.5))
    y = masks.ravel()
    for name, m in maps.items():
        fpr, tpr = roc_points(m.ravel(), y)
        rec, prec = pr_points(m.ravel(), y)
        a.plot(fpr, tpr, label=f"{name} (AUROC {pixel_auroc(m, masks):.3f})")
        b.plot(rec, prec, label=f"{name} (AP {pixel_aupr(m, masks):.3f})")
    base = y.mean() if y.size else 0.0
    a.plot([0, 1], [0, 1], "k:", lw=0.8)
    b.axhline(base, color="k", ls=":", lw=0.8, label=f"chance ({base:.3f})")
    a.set(xlabel="false positive rate", ylabel="true positive rate", title="pixel ROC")
    b.set(xlabel="recall", ylabel="precision", title="pixel PR", ylim=(0, 1.02))
    a.legend(), b.legend()
    save_figure(fig, path, title, banner)


def colorize(m: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """Float map -> uint8 RGB with the JET colour map on [vmin, vmax]."""
    x = np.clip((m - vmin) / max(vmax - vmin, 1e-12), 0, 1)
    return cv2.cvtColor(cv2.applyColorMap((x * 255).astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    return cv2.addWeighted(image, 1 - alpha, heat, alpha, 0)


def save_rgb(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def panel_figure(path: Path, title: str, panels: Sequence[tuple[str, np.ndarray]], banner: str = "") -> None:
    """A row of images (RGB uint8, or bool masks) with captions."""
    fig, axes = subplots(1, len(panels), figsize=(2.4 * len(panels), 2.8))
    for ax, (cap, img) in zip(np.atleast_1d(axes), panels):
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1 if img.dtype == bool else None)
        ax.set_title(cap, fontsize=8)
        ax.axis("off")
    save_figure(fig, path, title, banner, dpi=80)


def pick_examples(defects: Sequence[str], n: int) -> list[int]:
    """Up to ``n`` test indices: one per defect type in turn, then a good image."""
    by_type: dict[str, list[int]] = {}
    for i, d in enumerate(defects):
        by_type.setdefault(d, []).append(i)
    order = [t for t in by_type if t != "good"] + (["good"] if "good" in by_type else [])
    picked: list[int] = []
    while len(picked) < min(n, len(defects)):
        for t in order:
            if by_type[t] and len(picked) < n:
                picked.append(by_type[t].pop(0))
    return picked


def best_worst_gallery(
    out: Path, cr, methods, obj: np.ndarray | None, detector: str | None, banner: str
) -> list[dict]:
    """Panels (image | ground truth | each method's map | object mask) of the best and worst anomalous
    test image by pixel AUPR (mean over methods), written under ``out/gallery``; -> report entries."""
    scored = [i for i in range(len(cr.masks)) if cr.masks[i].any()]
    if not scored:
        return []
    per_image = {i: float(np.mean([pixel_aupr(cr.maps[m][i], cr.masks[i]) for m in methods])) for i in scored}
    ranges = {m: (float(cr.maps[m].min()), float(cr.maps[m].max())) for m in methods}
    picks = [("best", max(per_image, key=per_image.get)), ("worst", min(per_image, key=per_image.get))]
    entries = []
    for label, i in picks[: 1 if len(scored) == 1 else 2]:
        p = cr.data.test[i]
        panels = [("image", cr.test.images[i]), ("ground truth", cr.masks[i])]
        panels += [(f"{m} map", colorize(cr.maps[m][i], *ranges[m])) for m in methods]
        if obj is not None:
            panels.append((f"{detector} object mask", obj[i]))
        rel = f"gallery/{cr.data.name}_{label}.png"
        caption = f"{label}: {p.parent.name}/{p.name} (pixel AUPR {per_image[i]:.3f}, mean over methods)"
        panel_figure(out / rel, f"{cr.data.name}/{p.parent.name}/{p.name}", panels, banner)
        entries.append({"caption": caption, "path": rel})
    return entries
