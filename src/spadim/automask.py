"""``--object-mask features|auto``: masks learned and chosen from the normal images alone.

:class:`MaskPlanner` rides along :func:`spadim.pipeline.evaluate_class` (its ``observer``): while the
training images stream through the backbone it keeps one layer's features of a few of them, and
while the test images stream it computes each test image's learned foreground mask from that
image's features, so no image passes the backbone twice. :meth:`MaskPlanner.decide` then makes the
``auto`` choice with no test label:

1. texture or object: no mask when the normal images' learned foreground covers almost the whole
   frame (``TEXTURE_AREA``) or its split has no spatial layout, i.e. the normal images are
   statistically homogeneous over positions (:func:`spadim.foreground.spatial_structure` <
   ``TEXTURE_STRUCTURE``);
2. which mask: on held-back normal images (not used to fit the projection, not used as keypoint
   references), each candidate's masks are compared with every other candidate's (the learned
   foreground is one candidate); the one with the highest mean IoU wins if it never fell back and
   its agreement is at least ``MIN_AGREEMENT``, else the full frame;
3. which r: one synthetic defect per held-back image (:func:`spadim.defects.make_defects`, placed
   inside the chosen mask of the clean image), the chosen mask recomputed on the defective image as
   at test time, and a nearest-neighbour scorer on the mask layer (SPADE's pixel step against the
   training images not held back; the fitted methods cannot score images they were fitted on). The
   largest r within ``R_TOLERANCE`` of the best pixel AUPR is taken (ties go to the milder r).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import time

import numpy as np
import torch

from .defects import make_defects
from .features import FeatureSet
from .foreground import Foreground, ForegroundConfig, fit_foreground
from .metrics import pixel_aupr
from .objmask import MaskConfig, apply_outside_multiplier
from .spade import Spade

LEARNED = ("features", "auto")  # mask types beside the keypoint detectors of objmask.DETECTORS
MULTIPLIERS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
TEXTURE_AREA = 0.85  # learned foreground share of the frame above which a class is a texture
TEXTURE_STRUCTURE = 0.25  # foreground.spatial_structure below which a class is a texture
MIN_AGREEMENT = 0.5  # mean IoU a mask needs with the other candidates to be used
R_TOLERANCE = 0.005  # AUPR within this of the best counts as a tie; the largest such r is taken


@dataclass
class Decision:
    """What ``auto`` chose for a class, and why."""

    mask: str  # "none", "features" or a keypoint detector
    reason: str
    r: float
    agreement: dict = field(default_factory=dict)  # candidate -> mean IoU with the others
    aupr_by_r: dict = field(default_factory=dict)  # r -> synthetic-defect pixel AUPR
    stats: dict = field(default_factory=dict)  # texture test numbers

    def row(self, cls: str) -> dict:
        return {"class": cls, "mask": self.mask, "r": self.r, "reason": self.reason,
                **{f"agree_{k}": v for k, v in self.agreement.items()}, **self.stats}


def split_indices(n: int, seed: int, max_held: int = 8, max_fit: int = 32) -> tuple[list[int], list[int]]:
    """(held-back, fit) training indices: a seeded quarter (2..max_held) held back, the rest fit."""
    n_held = min(max_held, max(2, n // 4)) if n >= 4 else 0
    held = sorted(np.random.default_rng(seed).permutation(n)[:n_held].tolist())
    pool = [i for i in range(n) if i not in held]
    step = max(1, len(pool) / max_fit)
    fit = sorted({pool[int(k * step)] for k in range(min(max_fit, len(pool)))})
    return held, fit


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def auto_masks(decision: Decision, planner: "MaskPlanner", keypoint_masks) -> np.ndarray:
    """The test masks ``auto`` uses: the full frame, the learned masks or a keypoint detector's
    (``keypoint_masks(detector)`` computes those)."""
    if decision.mask == "none":
        return np.ones_like(planner.test_masks)
    return planner.test_masks if decision.mask == "features" else keypoint_masks(decision.mask)


class MaskPlanner:
    """Learned foreground masks of one class, and the ``auto`` choice (see the module docstring).

    ``kp_cfgs``: keypoint detector configs that are candidates for ``auto`` (and give keypoint
    masks). Use as ``evaluate_class(..., observer=planner)``; afterwards ``test_masks`` holds the
    learned masks of the test images.
    """

    def __init__(self, layers_kept, crop: int, seed: int, kp_cfgs: dict[str, MaskConfig] | None = None,
                 cfg: ForegroundConfig = ForegroundConfig()):
        kept = sorted(layers_kept)
        # the layer must be one the run keeps anyway: the nearest kept layer to the configured one
        self.layer = min(kept, key=lambda l: (abs(l - cfg.layer), -l))
        self.crop, self.seed, self.cfg = crop, seed, cfg
        self.kp_cfgs = dict(kp_cfgs or {})
        self.fg: Foreground | None = None
        self.test_masks: np.ndarray | None = None

    # -- observer protocol of pipeline.evaluate_class
    def start(self, data) -> None:
        self.n = len(data.train)
        self.held, self.fit_idx = split_indices(self.n, self.seed, max_fit=self.cfg.max_fit)
        self.keep = set(self.held) | set(self.fit_idx)
        self.feats: dict[int, torch.Tensor] = {}
        self.seen, self.fg, self._test, self.seconds = 0, None, [], 0.0

    def train_chunk(self, chunk: FeatureSet) -> None:
        """Keep the mask layer's features of the held-back and fit images (copies, small)."""
        t0 = time.perf_counter()
        for j in range(len(chunk)):
            if self.seen + j in self.keep:
                self.feats[self.seen + j] = chunk.layers[self.layer][j].clone()
        self.seen += len(chunk)
        self.seconds += time.perf_counter() - t0

    def test_chunk(self, chunk: FeatureSet) -> None:
        t0 = time.perf_counter()
        self._test.append(self.foreground().masks(chunk.layers[self.layer]))
        self.test_masks = np.concatenate(self._test)
        self.seconds += time.perf_counter() - t0

    # -- the learned mask
    def foreground(self) -> Foreground:
        if self.fg is None:
            feats = torch.stack([self.feats[i] for i in self.fit_idx])
            self.fg = fit_foreground(feats, self.crop, self.cfg, self.layer)
        return self.fg

    def _held_feats(self) -> torch.Tensor:
        return torch.stack([self.feats[i] for i in self.held])

    def candidate_masks(self, frames: np.ndarray, feats: torch.Tensor, refs: np.ndarray) -> tuple[dict, dict]:
        """Masks of ``frames`` per candidate, and the number of keypoint fallbacks per candidate."""
        from .pipeline import object_masks

        masks, falls = {"features": self.foreground().masks(feats)}, {"features": 0}
        for det, kc in self.kp_cfgs.items():
            masks[det], warn = object_masks(frames, refs, kc)
            falls[det] = len(warn)
        return masks, falls

    def decide(self, fx, train_images: np.ndarray, multipliers=MULTIPLIERS) -> Decision:
        """The ``auto`` choice for this class from its training images alone (deterministic)."""
        t0 = time.perf_counter()
        try:
            return self._decide(fx, train_images, multipliers)
        finally:
            self.seconds += time.perf_counter() - t0

    def _decide(self, fx, train_images: np.ndarray, multipliers) -> Decision:
        fg = self.foreground()
        stats = {"train_fg_area": round(fg.train_area, 4), "structure": round(fg.structure, 4),
                 "between_fraction": round(fg.between, 4)}
        if fg.train_area >= TEXTURE_AREA or fg.structure < TEXTURE_STRUCTURE:
            why = (f"texture: learned foreground covers {fg.train_area:.0%} of the frame"
                   if fg.train_area >= TEXTURE_AREA else
                   f"texture: foreground split has no spatial layout (structure {fg.structure:.2f} "
                   f"< {TEXTURE_STRUCTURE})")
            return Decision("none", why, 1.0, stats=stats)
        if len(self.held) < 2:
            return Decision("none", f"only {self.n} training images: nothing to hold back", 1.0, stats=stats)
        pool = [i for i in range(self.n) if i not in self.held]
        refs = train_images[pool][_spread(len(pool), max((c.n_refs for c in self.kp_cfgs.values()), default=1))]
        frames = train_images[self.held]
        masks, falls = self.candidate_masks(frames, self._held_feats(), refs)
        names = list(masks)
        agree = {c: float(np.mean([iou(masks[c][i], masks[o][i]) for i in range(len(frames))
                                   for o in names if o != c])) if len(names) > 1 else 1.0 for c in names}
        agreement = {c: round(v, 4) for c, v in agree.items()}
        stable = [c for c in names if falls[c] == 0 and agree[c] >= MIN_AGREEMENT]
        if not stable:
            why = ", ".join(f"{c} {falls[c]} fallbacks" if falls[c] else f"{c} IoU {agree[c]:.2f}" for c in names)
            return Decision("none", f"no stable mask (needs no fallback and mean IoU >= {MIN_AGREEMENT}): {why}",
                            1.0, agreement, stats=stats)
        chosen = max(stable, key=lambda c: (agree[c], c == "features"))
        aupr = self.choose_r(fx, chosen, frames, masks[chosen], train_images[pool], refs, multipliers)
        best = max(aupr.values())
        r = max(rv for rv, v in aupr.items() if v >= best - R_TOLERANCE)
        why = f"object: {chosen} agrees best with the other masks (mean IoU {agree[chosen]:.2f})"
        return Decision(chosen, why, r, agreement, {k: round(v, 4) for k, v in aupr.items()}, stats)

    def choose_r(self, fx, chosen: str, frames: np.ndarray, regions: np.ndarray, pool_images: np.ndarray,
                 refs: np.ndarray, multipliers) -> dict:
        """Synthetic-defect pixel AUPR of a nearest-neighbour scorer per multiplier r."""
        bad, truth, _ = make_defects(frames, pool_images, self.seed, regions=regions)
        self.synthetic = (truth, regions)  # kept for the check that defects lie inside the mask
        dfs = fx.frames(bad, "synthetic defects")
        if chosen == "features":
            obj = self.foreground().masks(dfs.layers[self.layer])
        else:
            from .pipeline import object_masks

            obj = object_masks(bad, refs, self.kp_cfgs[chosen])[0]
        pool = [i for i in range(self.n) if i not in self.held]
        gallery = torch.stack([self.feats[i] for i in pool if i in self.feats])
        maps = scorer_maps(gallery, dfs.layers[self.layer], self.layer, self.crop)
        return {float(r): pixel_aupr(apply_outside_multiplier(maps, obj, float(r)), truth) for r in multipliers}


def _spread(n: int, k: int) -> list[int]:
    k = min(k, n)
    return sorted({round(i * (n - 1) / max(k - 1, 1)) for i in range(k)})


def scorer_maps(gallery: torch.Tensor, queries: torch.Tensor, layer: int, size: int, k: int = 5) -> np.ndarray:
    """SPADE's pixel step on one layer: each query position's distance to its nearest gallery
    position among the K gallery images nearest by mean feature; upsampled and blurred."""
    g_mean, q_mean = gallery.mean((2, 3)), queries.mean((2, 3))
    idx = torch.topk(torch.cdist(q_mean, g_mean), min(k, len(gallery)), largest=False).indices
    sp = Spade((layer,), k)
    sp.train_layers = {layer: gallery}
    fs = FeatureSet([Path("<q>")] * len(queries), {layer: queries}, None, np.zeros((len(queries), 1)), [])
    return Spade.fuse([sp.layer_grids(fs, idx)[layer]], size)
