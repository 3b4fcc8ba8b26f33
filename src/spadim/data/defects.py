"""Synthetic defects on normal images, with exact masks, for choices made without test labels.

A user has no defect masks for a new product, so layer subsets and outside-mask multipliers are
chosen on normal validation images with pasted defects, in the style of CutPaste (Li et al. 2021)
and DRAEM (Zavrtanik et al. 2021). Six kinds, four of appearance and two of structure:

- ``cutpaste``: a random irregular patch of another normal image, pasted at another place;
- ``noise``: a blob filled with smoothed colour noise, blended over the image;
- ``colour``: a blob whose brightness and colour are shifted;
- ``scratch``: a thin random polyline of a contrasting colour;
- ``shift``: the image itself, displaced by a few to 30 pixels inside the blob (a misaligned or
  bent part: structure breaks while colours stay those of the product);
- ``missing``: the blob inpainted from its surroundings (cv2.inpaint, Telea), as a missing or
  cut part of the product.

"Exact" means the returned mask is precisely the set of pixels whose value changed: every kind
writes only inside its mask, and mask pixels where the write happened to leave the value unchanged
are removed from the mask. Defects lie inside the frame and, when ``region`` is given, inside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

KINDS = ("cutpaste", "noise", "colour", "scratch", "shift", "missing")
APPEARANCE_KINDS = KINDS[:4]  # changes of colour and texture only


@dataclass(frozen=True)
class DefectConfig:
    kinds: tuple[str, ...] = APPEARANCE_KINDS
    min_size: float = 0.04  # blob diameter as a fraction of the frame side
    max_size: float = 0.18
    max_tries: int = 20  # placements tried before a defect that fits ``region`` is given up


def _blob(rng: np.random.Generator, shape: tuple[int, int], centre, radius: float) -> np.ndarray:
    """An irregular filled polygon around ``centre`` (bool mask)."""
    n = int(rng.integers(6, 12))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = radius * rng.uniform(0.5, 1.0, n)
    pts = np.stack([centre[0] + radii * np.cos(angles), centre[1] + radii * np.sin(angles)], 1)
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    return mask.astype(bool)


def _scratch(rng: np.random.Generator, shape: tuple[int, int], centre, length: float) -> np.ndarray:
    n = int(rng.integers(2, 5))
    steps = rng.normal(0, 1, (n, 2))
    steps *= length / max(np.linalg.norm(steps, axis=1).sum(), 1e-6)
    pts = np.vstack([centre, centre + np.cumsum(steps, 0)])
    mask = np.zeros(shape, np.uint8)
    cv2.polylines(mask, [np.round(pts).astype(np.int32)], False, 1, thickness=int(rng.integers(1, 4)))
    return mask.astype(bool)


def _shape(rng: np.random.Generator, kind: str, hw: tuple[int, int], cfg: DefectConfig,
           region: np.ndarray | None) -> np.ndarray | None:
    """A defect footprint inside the frame (and ``region``), or None when none fits."""
    h, w = hw
    allowed = np.argwhere(region) if region is not None else None
    if allowed is not None and not len(allowed):
        return None
    for _ in range(cfg.max_tries):
        size = rng.uniform(cfg.min_size, cfg.max_size) * min(h, w)
        if allowed is not None:
            cy, cx = allowed[rng.integers(len(allowed))]
        else:
            cy, cx = rng.uniform(size / 2, h - size / 2), rng.uniform(size / 2, w - size / 2)
        footprint = (_scratch(rng, hw, np.array([cx, cy]), 2 * size) if kind == "scratch"
                     else _blob(rng, hw, (cx, cy), size / 2))
        if region is not None:
            footprint &= region
        if footprint.sum() >= 4:
            return footprint
    return None


def _smooth_noise(rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
    coarse = rng.uniform(0, 255, (max(2, hw[0] // 8), max(2, hw[1] // 8), 3)).astype(np.float32)
    return cv2.resize(coarse, (hw[1], hw[0]), interpolation=cv2.INTER_CUBIC)


def _paint(rng: np.random.Generator, kind: str, image: np.ndarray, footprint: np.ndarray,
           sources: np.ndarray) -> np.ndarray:
    """The image with the defect written inside ``footprint`` only."""
    out = image.astype(np.float32)
    h, w = footprint.shape
    if kind == "cutpaste":
        src = sources[rng.integers(len(sources))].astype(np.float32)
        shift = rng.integers(-h // 3, h // 3 + 1), rng.integers(-w // 3, w // 3 + 1)
        patch = np.roll(src, shift, axis=(0, 1))
        out[footprint] = patch[footprint]
    elif kind == "noise":
        alpha = rng.uniform(0.5, 1.0)
        out[footprint] = (1 - alpha) * out[footprint] + alpha * _smooth_noise(rng, (h, w))[footprint]
    elif kind == "colour":
        gain = rng.uniform(0.5, 1.5, 3) if rng.random() < 0.5 else np.full(3, rng.choice([0.6, 1.4]))
        out[footprint] = out[footprint] * gain + rng.uniform(-25, 25, 3)
    elif kind == "shift":
        step = rng.integers(4, max(5, min(h, w) // 8), 2) * rng.choice([-1, 1], 2)
        shifted = cv2.warpAffine(image, np.float32([[1, 0, step[1]], [0, 1, step[0]]]), (w, h),
                                 borderMode=cv2.BORDER_REFLECT)
        out[footprint] = shifted[footprint]
    elif kind == "missing":
        filled = cv2.inpaint(np.ascontiguousarray(image), footprint.astype(np.uint8), 5, cv2.INPAINT_TELEA)
        out[footprint] = filled[footprint]
    elif kind == "scratch":
        mean = out[footprint].mean(0) if footprint.any() else np.full(3, 128.0)
        out[footprint] = np.where(mean > 127, rng.uniform(0, 60), rng.uniform(195, 255))
    else:
        raise ValueError(f"unknown defect kind {kind!r}: choose from {', '.join(KINDS)}")
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def make_defects(images: np.ndarray, sources: np.ndarray, seed: int, cfg: DefectConfig = DefectConfig(),
                 regions: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One defect per image -> (defective images uint8 [N,H,W,3], exact masks bool [N,H,W], kinds).

    ``sources`` are normal images to cut patches from (others than ``images`` where possible);
    ``regions`` (bool [N,H,W]) confine each defect, e.g. to an object mask. Kinds cycle through
    ``cfg.kinds`` in a seeded random order; an image where no defect fits keeps an empty mask.
    """
    rng = np.random.default_rng(seed)
    out, masks, kinds = images.copy(), np.zeros(images.shape[:3], bool), []
    order = rng.permutation(len(images))
    for rank, i in enumerate(order):
        kind = cfg.kinds[rank % len(cfg.kinds)]
        footprint = _shape(rng, kind, images.shape[1:3], cfg, None if regions is None else regions[i])
        kinds.append(kind)
        if footprint is None:
            continue
        painted = _paint(rng, kind, images[i], footprint, sources)
        changed = (painted != images[i]).any(axis=2)
        out[i], masks[i] = painted, changed & footprint
    return out, masks, [kinds[list(order).index(i)] for i in range(len(images))]
