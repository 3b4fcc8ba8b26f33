"""Operating points from normal images only: thresholds with a stated false-alarm guarantee.

A threshold set on the training images' own scores would be too low: a fitted model scores the
images it has seen lower than new ones. So each training image is scored by a model fitted
without it (``folds`` seeded parts, each scored by a model of the others: out-of-fold scores), which
estimates how a *new* normal image scores.

The image threshold is the split-conformal quantile of those scores: the
``ceil((n + 1) (1 - far))``-th smallest of n. If a new normal image is exchangeable with the n
calibration images (same process, no drift), it scores above that threshold with probability at
most ``far``, whatever the score distribution. What it does not promise: the deployed model is
refitted on all n images, so new images meet a model fitted on n, not (folds-1)/folds of n images
(scores shift slightly down, which errs on the side of fewer alarms); drift in lighting, camera or
parts breaks exchangeability. With n < 1/far - 1 no order statistic gives the guarantee: the
threshold is then the largest normal score, ``guaranteed`` is False and a warning says so.

The pixel threshold is a quantile of all out-of-fold normal pixel scores: at most ``pixel_far``
(default 0.001) of normal pixels lie above it. An image-level rule (the conformal quantile of each
image's largest pixel score, so that a normal image's mask is empty with probability >= 1 - far) was
measured first and rejected: with 25-50 training images it put the mask threshold at the largest
normal score and reached 3-93% of the oracle's pixel F1 on the real subset, the per-pixel quantile
57-100% (README, scripts/pixel_threshold_rules.py). How often a normal image still gets pixels above
the threshold is measured out-of-fold and stored as ``mask_alarm_rate``.

Normalised scores are linear in the raw score with 0 at the median normal score and 0.5 at the
threshold (so 1 at threshold + (threshold - median)); they are not clipped, so ordering is kept.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from spadim.errors import SpadimError
from spadim.features.extractor import FeatureSet
from spadim.methods.padim import fit_padim
from .layerchoice import fold_rows, other_rows, take

DEFAULT_FAR = 0.01
DEFAULT_FOLDS = 5
DEFAULT_PIXEL_FAR = 0.001
TAIL_SHARE = 0.01  # the largest 1% of normal pixel scores are kept: pixel_far can be set up to 0.01


def check_far(far: float, flag: str = "--far") -> float:
    if not (isinstance(far, (int, float)) and 0.0 < far < 1.0):
        raise SpadimError(
            f"{flag} must be a false-alarm rate between 0 and 1, exclusive (got {far}): e.g. 0.01"
        )
    return float(far)


def conformal_threshold(scores: np.ndarray, far: float) -> tuple[float, bool]:
    """(threshold, guaranteed): the ceil((n+1)(1-far))-th smallest score; a score strictly above it
    is an alarm. Without enough scores for ``far`` the largest score and ``False``."""
    ordered = np.sort(np.asarray(scores, dtype=np.float64))
    n = len(ordered)
    if n == 0:
        raise SpadimError("no normal scores to calibrate on: give at least one good image")
    rank = math.ceil((n + 1) * (1.0 - far))
    if rank > n:
        return float(ordered[-1]), False
    return float(ordered[rank - 1]), True


def smallest_far(n: int) -> float:
    """The smallest false-alarm rate n calibration images can guarantee: 1 / (n + 1)."""
    return 1.0 / (n + 1)


@dataclass
class Calibration:
    """How a new normal image scores, and the operating point chosen from it (stored in the model)."""

    far: float
    how: str  # "out-of-fold" (at fit) or "held-out folder" (spadim calibrate)
    folds: int  # 0 for a held-out folder
    n_images: int
    image_scores: list[float]  # sorted normal image scores (out-of-fold or held out)
    pixel_max: list[float]  # sorted per-image largest normal pixel score
    pixel_median: float  # median of all normal pixel scores (the 0 of normalised pixel scores)
    pixel_tail: list[float]  # the largest TAIL_SHARE of all normal pixel scores, sorted
    n_pixels: int  # normal pixel scores in all
    pixel_far: float = DEFAULT_PIXEL_FAR
    source: str = ""
    image_threshold: float = field(init=False)
    pixel_threshold: float = field(init=False)
    guaranteed: bool = field(init=False)
    mask_alarm_rate: float = field(init=False)

    def __post_init__(self):
        self.far = check_far(self.far)
        self.pixel_far = check_far(self.pixel_far, "--pixel-far")
        self.image_threshold, self.guaranteed = conformal_threshold(np.array(self.image_scores), self.far)
        self.pixel_threshold = pixel_quantile(self.pixel_tail, self.n_pixels, self.pixel_far)
        self.mask_alarm_rate = float(np.mean(np.array(self.pixel_max) > self.pixel_threshold))

    @property
    def image_median(self) -> float:
        return float(np.median(self.image_scores))

    def at(self, far: float) -> "Calibration":
        """The same normal scores at another false-alarm rate (``--far`` at predict time)."""
        return Calibration(
            far,
            self.how,
            self.folds,
            self.n_images,
            self.image_scores,
            self.pixel_max,
            self.pixel_median,
            self.pixel_tail,
            self.n_pixels,
            self.pixel_far,
            self.source,
        )

    def warning(self) -> str | None:
        if self.guaranteed:
            return None
        return (
            f"{self.n_images} normal images cannot guarantee a false-alarm rate of {self.far:g} (the smallest "
            f"they can is 1/(n+1) = {smallest_far(self.n_images):.3g}): the image threshold is the largest "
            f"normal score and the rate is NOT guaranteed; add good images or raise --far"
        )

    def normalize_image(self, score, threshold: float | None = None):
        return _normalize(score, self.image_median, self.image_threshold if threshold is None else threshold)

    def normalize_pixels(self, scores, threshold: float | None = None):
        return _normalize(scores, self.pixel_median, self.pixel_threshold if threshold is None else threshold)

    def pixel_threshold_for(self, image_threshold: float | None) -> float:
        """A user's image threshold moves the pixel threshold by the same normalised amount."""
        if image_threshold is None:
            return self.pixel_threshold
        level = float(self.normalize_image(image_threshold))
        return self.pixel_median + 2.0 * level * (self.pixel_threshold - self.pixel_median)

    def to_json(self) -> dict:
        return {
            **asdict(self),
            "image_median": self.image_median,
            "promise": (
                f"a new normal image exchangeable with the {self.n_images} calibration images is "
                f"flagged with probability <= {self.far:g}"
                if self.guaranteed
                else "none (too few images)"
            ),
        }

    @classmethod
    def from_json(cls, data: dict) -> "Calibration":
        keys = (
            "far",
            "how",
            "folds",
            "n_images",
            "image_scores",
            "pixel_max",
            "pixel_median",
            "pixel_tail",
            "n_pixels",
            "pixel_far",
            "source",
        )
        return cls(**{k: data[k] for k in keys})


def _normalize(score, median: float, threshold: float):
    span = threshold - median
    if span <= 0:  # all normal scores equal: anything above them is an alarm
        span = max(abs(threshold), 1e-12)
    return 0.5 * (np.asarray(score, dtype=np.float64) - median) / span


def pixel_quantile(tail: list[float], n_pixels: int, pixel_far: float) -> float:
    """The smallest kept score with at most ``pixel_far`` of all ``n_pixels`` normal scores above it."""
    above = math.floor(n_pixels * pixel_far)  # scores allowed strictly above the threshold
    if above >= len(tail):
        raise SpadimError(
            f"--pixel-far {pixel_far:g} needs more of the normal pixel scores than the model keeps "
            f"(the largest {TAIL_SHARE:g}): use a --pixel-far of at most {TAIL_SHARE:g}"
        )
    return float(tail[len(tail) - 1 - above])


def summarize(image_scores: np.ndarray, maps: list[np.ndarray]) -> dict:
    """What a Calibration keeps of normal images' scores: sorted image scores, per-image maxima, the
    pixel median and the upper tail of all pixel scores."""
    pixels = np.concatenate([m.ravel() for m in maps]) if maps else np.zeros(1, np.float32)
    keep = min(len(pixels), max(1, math.ceil(len(pixels) * TAIL_SHARE)))
    tail = np.sort(np.partition(pixels, len(pixels) - keep)[len(pixels) - keep :])
    return {
        "image_scores": sorted(float(s) for s in image_scores),
        "pixel_max": sorted(float(m.max()) for m in maps),
        "pixel_median": float(np.median(pixels)),
        "pixel_tail": tail.astype(float).tolist(),
        "n_pixels": int(len(pixels)),
    }


def out_of_fold(
    method_name: str, settings, layers: tuple[int, ...], train: FeatureSet, folds: int = DEFAULT_FOLDS
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Image scores [N] and maps of each training image from a model fitted on the other folds.

    PaDiM folds use the exact low-rank fit when a fold has fewer images than channels (the same
    distances as the full fit, cheaper); the channel subset is the deployed model's (same seed).
    """
    n = len(train)
    if n < 2:
        raise SpadimError(
            f"calibration needs at least 2 good images to hold one out (got {n}): add good images"
        )
    scores = np.zeros(n, np.float64)
    maps: list[np.ndarray | None] = [None] * n
    for held in fold_rows(n, settings.seed, min(folds, n)):
        fit_part = take(train, other_rows(n, held))
        if method_name == "padim":
            model = fit_padim(layers, settings.padim_d, settings.seed, fit_part)
        else:
            model = settings.method(method_name, layers).fit(fit_part)
        fold_maps, fold_scores = model.score(take(train, held), settings.crop)
        for j, row in enumerate(held):
            scores[row], maps[row] = fold_scores[j], fold_maps[j]
    return scores, maps


def calibrate_out_of_fold(
    method_name: str,
    settings,
    layers,
    train: FeatureSet,
    far: float = DEFAULT_FAR,
    folds: int = DEFAULT_FOLDS,
    pixel_far: float = DEFAULT_PIXEL_FAR,
) -> Calibration:
    scores, maps = out_of_fold(method_name, settings, layers, train, folds)
    folds = min(folds, len(train))
    return Calibration(
        far,
        "out-of-fold",
        folds,
        len(train),
        **summarize(scores, maps),
        pixel_far=pixel_far,
        source=f"{folds}-fold out-of-fold scores of the training images",
    )
