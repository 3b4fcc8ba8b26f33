"""``--object-mask features|auto``: masks learned and chosen from the normal images alone.

:class:`MaskPlanner` rides along :func:`spadim.run.pipeline.evaluate_class` (its ``observer``): while the
training images stream through the backbone it keeps one layer's features of a few of them, and
while the test images stream it computes each test image's learned foreground mask from that
image's features, so no image passes the backbone twice. :meth:`MaskPlanner.decide` then makes the
``auto`` choice with no test label:

1. texture or object: no mask when the normal images' learned foreground covers almost the whole
   frame (``TEXTURE_AREA``) or its split has no spatial layout, i.e. the normal images are
   statistically homogeneous over positions (:func:`spadim.masks.foreground.spatial_structure` <
   ``TEXTURE_STRUCTURE``);
2. candidates: on held-back normal images (not used to fit the projection, not used as keypoint
   references) each candidate's masks (the learned foreground, each keypoint detector, and their
   pixel-wise majority, ``consensus``) are compared with the others by mean IoU; a candidate is
   stable if it never fell back and its agreement is at least ``MIN_AGREEMENT``; none stable: no mask;
3. which mask and which r, together: the held-back images get synthetic defects (:func:`validation_set`:
   half inside the object mask, half changing its silhouette) and unlabelled background clutter; each
   stable candidate's mask is recomputed on them as at test time, and a nearest-neighbour scorer on the
   mask layer (SPADE's pixel step against the training images not held back; the fitted methods cannot
   score images they were fitted on) gives a pixel AUPR per (mask, r). Pairs within ``R_TOLERANCE`` of the
   best tie; the mildest r wins, then the better-agreeing mask. r = 1 means no mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import time

import cv2
import numpy as np
import torch

from spadim.data.mvtec import normalize
from spadim.data.defects import make_defects
from spadim.features.extractor import FeatureSet
from .foreground import Foreground, ForegroundConfig, fit_foreground
from spadim.metrics.ranking import pixel_aupr, pixel_aupr_by_multiplier
from .keypoints import MaskConfig, object_mask, reference_features
from spadim.methods.spade import Spade

LEARNED = ("features", "auto")  # mask types beside the keypoint detectors of objmask.DETECTORS
CONSENSUS = "consensus"  # auto's extra candidate: the majority of the others
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
        return {
            "class": cls,
            "mask": self.mask,
            "r": self.r,
            "reason": self.reason,
            **{f"agree_{k}": v for k, v in self.agreement.items()},
            **self.stats,
        }


def split_indices(n: int, seed: int, max_held: int = 6, max_fit: int = 32) -> tuple[list[int], list[int]]:
    """(held-back, fit) training indices: a seeded quarter (2..max_held) held back, the rest fit.

    Each held-back image costs keypoint masks for every candidate, a validation frame and its AUPRs;
    6 keep ``auto`` under 15% of an evaluate of a 50-image class on 2 cores (8 took 16%)."""
    n_held = min(max_held, max(2, n // 4)) if n >= 4 else 0
    held = sorted(np.random.default_rng(seed).permutation(n)[:n_held].tolist())
    pool = [i for i in range(n) if i not in held]
    step = max(1, len(pool) / max_fit)
    fit = sorted({pool[int(k * step)] for k in range(min(max_fit, len(pool)))})
    return held, fit


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def auto_masks(decision: Decision, planner: "MaskPlanner", detector_masks) -> np.ndarray:
    """The test masks ``auto`` uses: the full frame, the learned masks, a keypoint detector's
    (``detector_masks(detector)`` computes those) or the consensus of all candidates. At r = 1 a mask
    changes no score, so none is computed."""
    if decision.mask == "none" or decision.r >= 1.0:
        return np.ones_like(planner.test_masks)
    if decision.mask == CONSENSUS:
        return consensus([planner.test_masks] + [detector_masks(d) for d in planner.kp_cfgs])
    return planner.test_masks if decision.mask == "features" else detector_masks(decision.mask)


class MaskPlanner:
    """Learned foreground masks of one class, and the ``auto`` choice (see the module docstring).

    ``kp_cfgs``: keypoint detector configs that are candidates for ``auto`` (and give keypoint
    masks). Use as ``evaluate_class(..., observer=planner)``; afterwards ``test_masks`` holds the
    learned masks of the test images.
    """

    def __init__(
        self,
        layers_kept,
        crop: int,
        seed: int,
        kp_cfgs: dict[str, MaskConfig] | None = None,
        cfg: ForegroundConfig = ForegroundConfig(),
    ):
        kept = sorted(layers_kept)
        # the layer must be one the run keeps anyway: the nearest kept layer to the configured one
        self.layer = min(kept, key=lambda layer_id: (abs(layer_id - cfg.layer), -layer_id))
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

    def candidate_masks(self, frames: np.ndarray, feats: torch.Tensor, refs) -> tuple[dict, dict]:
        """Masks of ``frames`` per candidate (the consensus of the others last), and the number of
        keypoint fallbacks per candidate. ``refs``: reference features per detector."""
        masks, falls = {"features": self.foreground().masks(feats)}, {"features": 0}
        for det, kc in self.kp_cfgs.items():
            masks[det], falls[det] = keypoint_masks(frames, refs[det], kc)
        if len(masks) >= 3:
            masks[CONSENSUS], falls[CONSENSUS] = consensus(list(masks.values())), 0
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
        stats = {
            "train_fg_area": round(fg.train_area, 4),
            "structure": round(fg.structure, 4),
            "between_fraction": round(fg.between, 4),
        }
        if fg.train_area >= TEXTURE_AREA or fg.structure < TEXTURE_STRUCTURE:
            why = (
                f"texture: learned foreground covers {fg.train_area:.0%} of the frame"
                if fg.train_area >= TEXTURE_AREA
                else f"texture: foreground split has no spatial layout (structure {fg.structure:.2f} "
                f"< {TEXTURE_STRUCTURE})"
            )
            return Decision("none", why, 1.0, stats=stats)
        if len(self.held) < 2:
            return Decision("none", f"only {self.n} training images: nothing to hold back", 1.0, stats=stats)
        pool = [i for i in range(self.n) if i not in self.held]
        self.refs = {
            d: reference_features(list(train_images[pool][_spread(len(pool), kc.n_refs)]), kc)
            for d, kc in self.kp_cfgs.items()
        }
        frames = train_images[self.held]
        masks, falls = self.candidate_masks(frames, self._held_feats(), self.refs)
        names = [c for c in masks if c != CONSENSUS]
        agree = {
            c: float(
                np.mean([iou(masks[c][i], masks[o][i]) for i in range(len(frames)) for o in names if o != c])
            )
            if len(names) > 1
            else 1.0
            for c in masks
        }
        agreement = {c: round(v, 4) for c, v in agree.items()}
        stable = [c for c in masks if falls[c] == 0 and agree[c] >= MIN_AGREEMENT]
        if not stable:
            why = ", ".join(
                f"{c} {falls[c]} fallbacks" if falls[c] else f"{c} IoU {agree[c]:.2f}" for c in masks
            )
            return Decision(
                "none",
                f"no stable mask (needs no fallback and mean IoU >= {MIN_AGREEMENT}): {why}",
                1.0,
                agreement,
                stats=stats,
            )
        aupr = self.validate(fx, stable, frames, masks, train_images[pool], multipliers)
        best = max(v for by_r in aupr.values() for v in by_r.values())
        # ties: the mildest r, then the mask that agrees best with the others
        chosen, r = max(
            ((c, rv) for c, by_r in aupr.items() for rv, v in by_r.items() if v >= best - R_TOLERANCE),
            key=lambda cr: (cr[1], agree[cr[0]]),
        )
        if r == 1.0:
            why = (
                f"object, but no mask raised the synthetic AUPR by more than {R_TOLERANCE} "
                f"(best {best:.3f}); {chosen} agrees best (mean IoU {agree[chosen]:.2f})"
            )
        else:
            why = (
                f"object: {chosen} at r={r} has the best synthetic AUPR {aupr[chosen][r]:.3f} "
                f"(no mask: {aupr[chosen][1.0]:.3f}; mean IoU {agree[chosen]:.2f})"
            )
        return Decision(
            chosen,
            why,
            r,
            agreement,
            {f"{c} {rv}": round(v, 4) for c, by_r in aupr.items() for rv, v in by_r.items()},
            stats,
        )

    def validate(
        self, fx, stable: list[str], frames: np.ndarray, masks: dict, pool_images: np.ndarray, multipliers
    ) -> dict:
        """Synthetic pixel AUPR per stable candidate and multiplier r (see :func:`validation_set`);
        each candidate's mask recomputed on the validation images as at test time."""
        chosen = max(stable, key=lambda c: c == CONSENSUS)
        bad, truth, clutter_px = validation_set(frames, masks[chosen], pool_images, self.seed)
        self.synthetic = (truth, clutter_px, masks[chosen])  # kept for the tests
        feats = layer_features(fx, bad, self.layer)
        obj, _ = self.candidate_masks(bad, feats, self.refs)
        pool = [i for i in range(self.n) if i not in self.held]
        gallery = torch.stack([self.feats[i] for i in pool if i in self.feats])
        maps = scorer_maps(gallery, feats, self.layer, self.crop)
        scaled = [r for r in multipliers if float(r) != 1.0]
        unmasked = {1.0: pixel_aupr(maps, truth)} if len(scaled) < len(multipliers) else {}
        return {c: {**pixel_aupr_by_multiplier(maps, obj[c], truth, scaled), **unmasked} for c in stable}


def layer_features(fx, images: np.ndarray, layer: int) -> torch.Tensor:
    """One layer's features of in-memory frames [N, crop, crop, 3] uint8, the pass stopping there
    (``FeatureExtractor.frames`` would run on to the extractor's last layer and keep every layer)."""
    x = torch.from_numpy(normalize(images)).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        out = fx.model.features(x, layer)[layer]
    fx.n_forward += len(images)
    return out


def validation_set(
    frames: np.ndarray, regions: np.ndarray, sources: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Held-back normal frames made into (images, defect truth, clutter pixels) for the r choice.

    Half of the frames (seeded) get a defect inside the object mask ``regions`` (CutPaste/DRAEM style,
    :func:`spadim.data.defects.make_defects`), the other half one that changes the silhouette
    (:func:`edge_defects`): a mask that misses those is punished at small r. Every frame also gets
    unlabelled background clutter (:func:`clutter`) away from the mask and the defect, the false-positive
    source an object mask exists to damp: without it held-back normal frames have clean backgrounds and
    every r ties with no mask.
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(frames))
    inner, edge = np.sort(order[: (len(frames) + 1) // 2]), np.sort(order[(len(frames) + 1) // 2 :])
    bad, truth = frames.copy(), np.zeros(frames.shape[:3], bool)
    bad[inner], truth[inner], _ = make_defects(frames[inner], sources, seed, regions=regions[inner])
    if len(edge):
        bad[edge], truth[edge] = edge_defects(frames[edge], regions[edge], rng)
    bad, clutter_px = clutter(bad, regions | truth, rng)
    return bad, truth & ~clutter_px, clutter_px


def _disc_kernel(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _background_colour(image: np.ndarray, region: np.ndarray) -> np.ndarray:
    outside = ~cv2.dilate(region.astype(np.uint8), _disc_kernel(max(2, image.shape[0] // 28))).astype(bool)
    return np.median(image[outside] if outside.any() else image.reshape(-1, 3), axis=0)


def edge_defects(
    images: np.ndarray, regions: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One silhouette defect per image at the boundary of its object mask -> (images, exact masks).

    A blob (4-9% of the frame side in radius) centred on a boundary pixel either removes the object
    there (painted with the background's median colour, like a chip or a missing part) or adds
    material beyond the edge (the object's texture from further inside, shifted out). Masks are the
    changed pixels.
    """
    out, truth = images.copy(), np.zeros(images.shape[:3], bool)
    h, w = images.shape[1:3]
    for i, (img, reg) in enumerate(zip(images, regions)):
        edge = np.argwhere(reg & ~cv2.erode(reg.astype(np.uint8), _disc_kernel(1)).astype(bool))
        if not len(edge) or reg.all():
            continue
        cy, cx = edge[rng.integers(len(edge))]
        blob = np.zeros((h, w), np.uint8)
        radius = rng.uniform(0.04, 0.09) * min(h, w)
        cv2.ellipse(
            blob,
            (int(cx), int(cy)),
            (int(radius), int(radius * rng.uniform(0.5, 1.0))),
            float(rng.uniform(0, 180)),
            0,
            360,
            1,
            -1,
        )
        blob = blob.astype(bool)
        painted = img.astype(np.float32)
        if rng.random() < 0.5:  # removal
            where = blob & reg
            painted[where] = _background_colour(img, reg) + rng.normal(0, 2.0, (int(where.sum()), 3))
        else:  # addition: the object's own texture from further inside, shifted out past the edge
            where = blob & ~reg
            cy0, cx0 = np.argwhere(reg).mean(0)
            shift = np.round(
                np.array([cy - cy0, cx - cx0]) / max(np.hypot(cy - cy0, cx - cx0), 1) * 2 * radius
            )
            painted[where] = np.roll(img, (int(shift[0]), int(shift[1])), axis=(0, 1))[where]
        painted = np.clip(np.round(painted), 0, 255).astype(np.uint8)
        out[i], truth[i] = painted, (painted != img).any(axis=2) & where
    return out, truth


def clutter(
    images: np.ndarray, keep_out: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Unlabelled dust-like clutter: 3-6 specks and 1-2 thin fibres per image, darker or brighter than
    the background, placed at least 1/28 of the frame away from ``keep_out`` -> (images, changed pixels)."""
    out, changed = images.copy(), np.zeros(images.shape[:3], bool)
    h, w = images.shape[1:3]
    s = min(h, w) / 224
    m = int(0.04 * min(h, w))
    for i, img in enumerate(images):
        free = ~cv2.dilate(keep_out[i].astype(np.uint8), _disc_kernel(max(2, min(h, w) // 28))).astype(bool)
        free[:m], free[-m:], free[:, :m], free[:, -m:] = False, False, False, False
        spots = np.argwhere(free)
        if not len(spots):
            continue
        layer = np.zeros((h, w), np.uint8)
        n_specks, n_fibres = int(rng.integers(3, 7)), int(rng.integers(1, 3))
        for k, (y, x) in enumerate(spots[rng.integers(len(spots), size=n_specks + n_fibres)]):
            if k < n_specks:
                cv2.circle(layer, (int(x), int(y)), max(1, int(round(rng.uniform(1.5, 4.0) * s))), 1, -1)
            else:
                steps = rng.normal(0, 1, (5, 2))
                steps *= rng.uniform(10, 25) * s / np.linalg.norm(steps, axis=1).sum()
                pts = np.vstack([[x, y], [x, y] + np.cumsum(steps, 0)])
                cv2.polylines(layer, [np.round(pts).astype(np.int32)], False, 1, max(1, int(round(1.5 * s))))
        spot = layer.astype(bool) & free
        bg = _background_colour(img, keep_out[i])
        dark = bg.mean() > 127 if rng.random() < 0.8 else bg.mean() <= 127
        painted = img.astype(np.float32)
        painted[spot] = painted[spot] * 0.2 if dark else painted[spot] * 0.3 + 0.7 * 230
        painted = np.clip(np.round(painted), 0, 255).astype(np.uint8)
        out[i], changed[i] = painted, (painted != img).any(axis=2) & spot
    return out, changed


def keypoint_masks(frames: np.ndarray, refs, cfg: MaskConfig) -> tuple[np.ndarray, int]:
    """Keypoint masks of ``frames`` against reference features, and the number of fallbacks."""
    res = [object_mask(f, [], cfg, ref_features=refs) for f in frames]
    return np.stack([r.mask for r in res]), sum(r.fallback is not None for r in res)


def consensus(masks: list[np.ndarray]) -> np.ndarray:
    """Pixel-wise strict majority of the candidates' masks: a pixel is object when more than half say so,
    so one detector's stray background blob or missed part is outvoted."""
    return np.sum(masks, axis=0) > len(masks) / 2


def _spread(n: int, k: int) -> list[int]:
    k = min(k, n)
    return sorted({round(i * (n - 1) / max(k - 1, 1)) for i in range(k)})


def scorer_maps(
    gallery: torch.Tensor, queries: torch.Tensor, layer: int, size: int, k: int = 5
) -> np.ndarray:
    """SPADE's pixel step on one layer: each query position's distance to its nearest gallery
    position among the K gallery images nearest by mean feature; upsampled and blurred."""
    g_mean, q_mean = gallery.mean((2, 3)), queries.mean((2, 3))
    idx = torch.topk(torch.cdist(q_mean, g_mean), min(k, len(gallery)), largest=False).indices
    sp = Spade(layers=(layer,), k=k).fit(
        FeatureSet([], {layer: gallery}, None, np.zeros((len(gallery), 1)), [])
    )
    fs = FeatureSet([Path("<q>")] * len(queries), {layer: queries}, None, np.zeros((len(queries), 1)), [])
    return Spade.fuse([sp.layer_grids(fs, idx)[layer]], size)
