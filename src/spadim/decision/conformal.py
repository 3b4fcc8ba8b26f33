"""Operating points from normal images only: one OK/defect rule, with a stated false-alarm guarantee.

The decision is the regions: an image is a defect exactly when its map, on the original pixels, has a
connected region above the region level with at least the minimum area. Its statistic is
:func:`spadim.decision.region_score` (the level at which the last such region disappears: the maximum
of the map's grey-level area opening), and the region level is the split-conformal quantile of that
statistic over normal images: the ``ceil((n + 1) (1 - far))``-th smallest of n. A new normal image
exchangeable with the n calibration images gets a region with probability at most ``far``, whatever
the score distribution; so decision and mask never contradict each other and the promise covers both.
With n < ``images_needed(far)`` the quantile is the single largest normal score: with n < 1/far - 1 no
order statistic guarantees ``far`` (``guaranteed`` is False and a warning says so), and below
``images_needed`` one odd good image sets the level (the audit names it).

A calibration grown by ``spadim update`` holds statistics scored by models of different sizes: a
smaller model scores higher, so old statistics keep the guarantee but raise the level. The level rests
on the statistics of models holding at least half the images the model holds now, widened to older
ones, a whole model at a time, only when they are too few to guarantee ``far`` (:func:`deciding`).
The choice looks at model sizes only, never at values, so the promise holds as it did for all of them.

Regions are drawn, on defect images only, at ``mask_level`` = min(pixel threshold, region level), where
the pixel threshold is a quantile of all normal pixel scores (at most ``pixel_far`` of them above it);
below the region level the region that made the decision is still there, so the mask is never empty
on a defect and always empty on an OK image. The image score (each method's own) stays a ranking score
with its own conformal threshold, reported beside the decision but not deciding it.

Normalised scores are linear in the raw score with 0 at the median normal score and 0.5 at the
threshold (so 1 at threshold + (threshold - median)); they are not clipped, so ordering is kept.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from spadim.errors import SpadimError
from .regions import DEFAULT_MIN_AREA, min_area_pixels, region_score

DEFAULT_FAR = 0.01
DEFAULT_PIXEL_FAR = 0.001
TAIL_SHARE = 0.01  # the largest 1% of normal pixel scores are kept: pixel_far can be set up to 0.01


def check_far(far: float, name: str = "far") -> float:
    if not (isinstance(far, (int, float)) and 0.0 < far < 1.0):
        raise SpadimError(
            f"`{name}` must be a false-alarm rate between 0 and 1, exclusive (got {far}): e.g. `{name}=0.01`"
        )
    return float(far)


def conformal_rank(n: int, far: float) -> int:
    """The split-conformal rank ceil((n + 1)(1 - far)) (1-based); above n no order statistic guarantees far."""
    return math.ceil((n + 1) * (1.0 - far))


def conformal_threshold(scores: np.ndarray, far: float) -> tuple[float, bool]:
    """(threshold, guaranteed): the ceil((n+1)(1-far))-th smallest score; a score strictly above it
    is an alarm. Without enough scores for ``far`` the largest score and ``False``."""
    ordered = np.sort(np.asarray(scores, dtype=np.float64))
    n = len(ordered)
    if n == 0:
        raise SpadimError("no normal scores to calibrate on: give at least one good image")
    rank = conformal_rank(n, far)
    if rank > n:
        return float(ordered[-1]), False
    return float(ordered[rank - 1]), True


def fewest_guaranteeing(far: float) -> int:
    """The fewest statistics whose conformal rank at ``far`` is an order statistic (19 at 0.05, 99 at 0.01)."""
    n = 1
    while conformal_rank(n, far) > n:
        n += 1
    return n


def deciding(scored_by, model_images: int | None, far: float) -> np.ndarray:
    """Which statistics the level rests on (a boolean mask over ``scored_by``, the number of images the
    model that scored each statistic held): those of models holding at least half of ``model_images``;
    when they are fewer than :func:`fewest_guaranteeing` needs, the next largest models' statistics join,
    a whole model at a time, up to all of them. A statistic of a model holding fewer images is a looser
    upper bound of the leave-one-out statistic of the model now; sizes, not values, choose, so the chosen
    statistics' leave-one-out counterparts stay exchangeable with a new image's."""
    sizes = np.asarray(scored_by, np.int64)
    if model_images is None or sizes.size == 0:
        return np.ones(sizes.shape, bool)
    keep = 2 * sizes >= model_images
    least = fewest_guaranteeing(far)
    for size in sorted(set(sizes[~keep].tolist()), reverse=True):
        if keep.sum() >= least:
            break
        keep |= sizes == size
    return keep


def images_needed(far: float) -> int:
    """The fewest normal images for which the conformal quantile at ``far`` is below the largest score
    (39 at 0.05, 199 at 0.01): with fewer, the single highest normal image sets the threshold."""
    n = 2
    while conformal_rank(n, far) > n - 1:
        n += 1
    return n


def far_interval(n: int, far: float, coverage: float = 0.9) -> tuple[float, float]:
    """Where the false-alarm rate of *this* calibration lies: the conformal guarantee holds on average
    over calibration sets; for one set of n images the rate of the rank-r level is Beta(n + 1 - r, r)
    distributed (continuous scores), so with 60 images and far 0.05 it exceeds 0.10 for about 7% of sets."""
    from scipy.stats import beta

    rank = min(n, conformal_rank(n, far))
    law = beta(n + 1 - rank, rank)
    tail = (1.0 - coverage) / 2.0
    return float(law.ppf(tail)), float(law.ppf(1.0 - tail))


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
    region_scores: list[float] | None = (
        None  # sorted per-image region statistic; None: not stored, recalibrate
    )
    min_area: float = DEFAULT_MIN_AREA  # the smallest region, as a fraction of the image area
    model_images: int | None = None  # images the model holds; None: every statistic decides (older files)
    image_scored_by: list[int] | None = None  # per image score: images held by the model that scored it
    region_scored_by: list[int] | None = None  # the same, aligned with region_scores
    image_threshold: float = field(init=False)
    pixel_threshold: float = field(init=False)
    region_threshold: float | None = field(init=False)  # the decision level
    guaranteed: bool = field(init=False)
    mask_alarm_rate: float = field(init=False)
    n_deciding: int = field(init=False)  # the statistics the level rests on (see deciding)

    def __post_init__(self):
        self.far = check_far(self.far)
        self.pixel_far = check_far(self.pixel_far, "pixel_far")
        images = self._deciding(self.image_scores, self.image_scored_by)
        self.image_threshold, self.guaranteed = conformal_threshold(images, self.far)
        self.n_deciding = len(images)
        self.pixel_threshold = pixel_quantile(self.pixel_tail, self.n_pixels, self.pixel_far)
        self.mask_alarm_rate = float(np.mean(np.array(self.pixel_max) > self.pixel_threshold))
        self.region_threshold = None
        if self.region_scores is not None:
            regions = self.deciding_region_scores
            self.region_threshold, self.guaranteed = conformal_threshold(regions, self.far)
            self.n_deciding = len(regions)

    def _deciding(self, scores, scored_by) -> np.ndarray:
        scores = np.asarray(scores, np.float64)
        if scored_by is None:
            return scores
        return scores[deciding(scored_by, self.model_images, self.far)]

    @property
    def deciding_region_scores(self) -> np.ndarray:
        """The region statistics the level rests on (all of them unless the calibration grew)."""
        return self._deciding(self.region_scores, self.region_scored_by)

    @property
    def mask_level(self) -> float:
        """The level regions are drawn at on a defect image: never above the decision level."""
        return min(self.pixel_threshold, self.region_threshold)

    @property
    def image_median(self) -> float:
        return float(np.median(self.image_scores))

    def at(self, far: float) -> "Calibration":
        """The same normal scores at another false-alarm rate (``far`` at predict time)."""
        return replace(self, far=far)

    def warning(self) -> str | None:
        if self.guaranteed:
            return None
        return (
            f"{self.n_images} normal images cannot guarantee a false-alarm rate of {self.far:g} (the smallest "
            f"they can is 1/(n+1) = {smallest_far(self.n_images):.3g}): the region level is the largest held-out "
            f"statistic and the rate is NOT guaranteed; add good images or raise far"
        )

    def advice(self) -> str | None:
        """Below ``images_needed(far)`` images, the level is the single highest normal image's."""
        needed = images_needed(self.far)
        if self.n_deciding >= needed:
            return None
        if self.n_deciding < self.n_images:
            return (
                f"the level at far={self.far:g} is the highest of the {self.n_deciding} held-out statistics "
                f"it rests on (those of models holding at least half of the {self.model_images} images); "
                f"{needed} such statistics would let the rank fall below it"
            )
        return (
            f"with {self.n_images} good images the level at far={self.far:g} is the single highest good "
            f"image's score; {needed} good images would let the rank fall below it (see the audit)"
        )

    def normalize_image(self, score, threshold: float | None = None):
        return _normalize(score, self.image_median, self.image_threshold if threshold is None else threshold)

    def normalize_pixels(self, scores, threshold: float | None = None):
        return _normalize(scores, self.pixel_median, self.pixel_threshold if threshold is None else threshold)

    def to_json(self) -> dict:
        return {
            **asdict(self),
            "image_median": self.image_median,
            "mask_level": None if self.region_threshold is None else self.mask_level,
            "images_needed": images_needed(self.far),
            "far_interval_90": list(far_interval(self.n_deciding, self.far)),
            "promise": (
                f"a new normal image exchangeable with the {self.n_deciding} calibration images the level "
                f"rests on is flagged with probability <= {self.far:g}"
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
        optional = {
            k: data[k]
            for k in ("region_scores", "min_area", "model_images", "image_scored_by", "region_scored_by")
            if k in data
        }
        return cls(**{k: data[k] for k in keys}, **optional)


def grow(
    calibration: "Calibration",
    image_scores,
    maps: list[np.ndarray],
    regions,
    *,
    scored_by: int,
    model_images: int,
) -> "Calibration":
    """The calibration with new held-out statistics added, each scored by a model of ``scored_by`` images
    that did not hold its image, for a model now of ``model_images``. Image scores, per-image maxima and
    region statistics are merged exactly, each with the size of the model that scored it (statistics of
    a calibration that never recorded sizes count as scored by the model they calibrated, the one that
    scored the new images). The pixel tail keeps
    its length: the largest scores of the old tail and the new maps, exact down to the old tail's
    minimum, so the pixel threshold stays exact while it lies above that (the normal case: 0.1% of
    pixels against a 1% tail). The pixel median, only the zero of normalised scores, is kept."""
    new_pixels = np.concatenate([np.asarray(m, np.float64).ravel() for m in maps]) if maps else np.zeros(0)
    old_tail = np.asarray(calibration.pixel_tail, np.float64)
    merged = np.concatenate([old_tail, new_pixels])
    keep = len(old_tail)
    tail = np.sort(np.partition(merged, len(merged) - keep)[len(merged) - keep :])
    images, image_sizes = _merged(
        calibration.image_scores, calibration.image_scored_by, image_scores, scored_by
    )
    regions, region_sizes = _merged(
        calibration.region_scores or [], calibration.region_scored_by, regions, scored_by
    )
    return replace(
        calibration,
        n_images=calibration.n_images + len(image_scores),
        image_scores=images,
        pixel_max=sorted([*calibration.pixel_max, *(float(np.max(m)) for m in maps)]),
        pixel_tail=tail.tolist(),
        n_pixels=calibration.n_pixels + int(new_pixels.size),
        region_scores=regions,
        model_images=model_images,
        image_scored_by=image_sizes,
        region_scored_by=region_sizes,
        source=f"{calibration.source}; grown by {len(image_scores)} image(s) scored before they joined",
    )


def _merged(old, old_sizes, new, new_size: int) -> tuple[list[float], list[int]]:
    """Old and new statistics sorted together, each with the size of the model that scored it (old ones
    without sizes: the model they calibrated, which also scored the new ones)."""
    sizes = [*(old_sizes if old_sizes is not None else [new_size] * len(old)), *[new_size] * len(new)]
    pairs = sorted(zip([*map(float, old), *map(float, new)], sizes))
    return [score for score, _ in pairs], [int(size) for _, size in pairs]


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
            f"`pixel_far={pixel_far:g}` needs more of the normal pixel scores than the model keeps "
            f"(the largest {TAIL_SHARE:g}): use a `pixel_far` of at most {TAIL_SHARE:g}"
        )
    return float(tail[len(tail) - 1 - above])


def region_scores(maps, shapes, pre, min_area: float = DEFAULT_MIN_AREA) -> np.ndarray:
    """Each map's region statistic on its image's original pixels, where ``predict`` decides."""
    out = []
    for score_map, shape in zip(maps, shapes):
        full = pre.to_original(score_map, shape) if pre is not None else np.asarray(score_map)
        out.append(region_score(full, min_area_pixels(min_area, *full.shape[:2])))
    return np.asarray(out, np.float64)


def summarize(
    image_scores: np.ndarray, maps: list[np.ndarray], regions: np.ndarray | None = None, scored_by=None
) -> dict:
    """What a Calibration keeps of normal images' scores: sorted image scores and region statistics,
    per-image maxima, the pixel median and the upper tail of all pixel scores; with ``scored_by`` (per
    image, the images held by the model that scored it), those sizes aligned with the sorted scores."""
    pixels = np.concatenate([m.ravel() for m in maps]) if maps else np.zeros(1, np.float32)
    keep = min(len(pixels), max(1, math.ceil(len(pixels) * TAIL_SHARE)))
    tail = np.sort(np.partition(pixels, len(pixels) - keep)[len(pixels) - keep :])
    return {
        "image_scores": sorted(float(s) for s in image_scores),
        "pixel_max": sorted(float(m.max()) for m in maps),
        "pixel_median": float(np.median(pixels)),
        "pixel_tail": tail.astype(float).tolist(),
        "n_pixels": int(len(pixels)),
        "region_scores": None if regions is None else sorted(float(r) for r in regions),
        **_sizes(image_scores, regions, scored_by),
    }


def _sizes(image_scores, regions, scored_by) -> dict:
    if scored_by is None:
        return {}
    sizes = np.asarray(scored_by, np.int64)
    out = {"image_scored_by": sizes[np.argsort(np.asarray(image_scores), kind="stable")].tolist()}
    if regions is not None:
        out["region_scored_by"] = sizes[np.argsort(np.asarray(regions), kind="stable")].tolist()
    return out
