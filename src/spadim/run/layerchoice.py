"""Choose the layer subset per class from normal images alone (``--layers auto``).

The study found that the best subset differs between classes, but a user has no defect masks for a
new product. So the training images are split, seeded, into ``FOLDS`` parts; the first part (20%,
at least one image, at most ``MOST_VALIDATED``: a seeded sample of a larger part) validates and the
other images fit. Each validation image gets ``COPIES`` synthetic
defects with exact masks (:func:`spadim.data.defects.make_defects`, structural and appearance kinds,
patches cut from the fit part), and every subset of layers 1-4 is fitted on the fit part and scored
on the validation images, normal and defective. The subset with the highest synthetic pixel AUPR
wins; ties (within ``TOLERANCE``) go to fewer, then lower layers. The caller then refits on all
training images with the chosen subset. ``validated=FOLDS`` turns this into full cross-validation
(pooled AUPR over the folds); it changed no mean regret beyond noise here and costs FOLDS times as
much (docs/masks-and-layers.md), so one part validates by default.

The backbone pass is shared: training features are extracted once (their validation rows are
reused as the normal validation images and their frames as the defect canvases) and each synthetic
image passes once through ``fx.frames``. Selection only ever receives training paths or features,
so it cannot read a test label (tested by failing any access to ``ground_truth/``).

PaDiM needs one Gaussian fit per subset. The fit part has fewer images than PaDiM has channels, so
each covariance has low rank and :func:`spadim.methods.padim.fit_padim` scores it exactly through the
Woodbury identity (an N x N factorisation per position instead of d x d): every subset is fitted
and scored on the full grid with the reference's distances. SPADE's per-layer maps are computed
once and every subset is their fusion (as in the layer sweep). PatchCore's per-layer patch features
are computed once and no coreset is built while comparing: each subset's validation patches are
searched against a seeded random sample of its fit-part patches, as many as the coreset would keep
(:mod:`spadim.methods.patchcore_subsets`); the chosen subset is then fitted with its coreset.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from spadim.data.mvtec import ClassData, load_class
from spadim.data.defects import KINDS, DefectConfig, make_defects
from spadim.errors import SpadimError
from spadim.features.extractor import ALL_COMBOS, FeatureExtractor, FeatureSet, combo_name, concat, take
from spadim.metrics.ranking import pixel_aupr
from .pipeline import ClassRun, Settings, class_data, evaluate_fitted

FOLDS = 5  # the training images are split into 5 seeded parts (each 20%) ...
VALIDATED = 1  # ... of which this many validate in turn (FOLDS for full cross-validation)
COPIES = 2  # synthetic defective copies per validation image
#: at most this many images of a part validate (a seeded sample; the others join the fit part): a
#: part's 20% up to 80 training images, and above that the comparison's cost stops growing with them
MOST_VALIDATED = 16
TOLERANCE = 1e-9  # AUPRs closer than this are a tie
#: every kind (appearance and structure) at sizes up to 30% of the frame side: with only the four
#: appearance kinds up to 18%, selection leaned towards layer 2 whatever the real defects were
DEFECTS = DefectConfig(kinds=KINDS, min_size=0.06, max_size=0.3)


@dataclass
class Selection:
    """One method's choice on one class, with everything needed to audit it."""

    method: str
    chosen: tuple[int, ...]
    synthetic_aupr: dict[str, float]  # subset name ("1+2") -> pixel AUPR on the synthetic set
    folds: list[list[int]]  # training rows validated in each fold (which fits on the other rows)
    kinds: list[str]  # defect kind of each synthetic image
    seed: int
    seconds: dict[str, float] = field(default_factory=dict)  # shared (split, defects, frames) and scoring

    @property
    def name(self) -> str:
        return combo_name(self.chosen)

    @property
    def aupr(self) -> float:
        return self.synthetic_aupr[self.name]

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "chosen": self.name, "synthetic_aupr_chosen": self.aupr}


@dataclass
class Folds:
    """The training features, the synthetic frames and, per fold, which rows validate.

    Fold f fits on the training rows outside ``val_rows[f]`` and validates on those rows (normal)
    followed by their synthetic copies ``synth[synth_rows[f]]``. Folds are materialised one at a
    time (:meth:`fold`), so memory holds the features once, not once per fold.
    """

    train: FeatureSet
    synth: FeatureSet
    val_rows: list[list[int]]
    synth_rows: list[list[int]]
    masks: list[np.ndarray]  # per fold: bool [n_val + n_synth, crop, crop]; False for normal images
    kinds: list[str]  # defect kind of each synthetic frame, in order

    def fold(self, f: int) -> tuple[FeatureSet, FeatureSet]:
        fit = take(self.train, other_rows(len(self.train), self.val_rows[f]))
        return fit, concat([take(self.train, self.val_rows[f]), take(self.synth, self.synth_rows[f])])


def fold_rows(n: int, seed: int, folds: int = FOLDS) -> list[list[int]]:
    """Seeded partition of ``range(n)`` into min(folds, n) validation parts (each fits on the rest)."""
    if n < 2:
        raise SpadimError(
            f"`layers=auto` needs at least 2 training images to split (got {n}): add good images"
        )
    perm = np.random.default_rng(seed).permutation(n)
    return [sorted(int(i) for i in perm[f :: min(folds, n)]) for f in range(min(folds, n))]


def sample_rows(rows: list[int], most: int, seed: int) -> list[int]:
    """``rows`` when there are at most ``most`` of them, else a seeded sample of ``most`` (sorted)."""
    if len(rows) <= most:
        return rows
    return sorted(int(i) for i in np.random.default_rng(seed).choice(rows, most, replace=False))


def other_rows(n: int, rows: list[int]) -> list[int]:
    """The rows of ``range(n)`` not in ``rows``: a fold's fit part."""
    held = set(rows)
    return [i for i in range(n) if i not in held]


def validation_folds(
    fx: FeatureExtractor,
    train: FeatureSet,
    seed: int,
    folds: int = FOLDS,
    copies: int = COPIES,
    cfg: DefectConfig = DEFECTS,
    validated: int = VALIDATED,
    most: int = MOST_VALIDATED,
) -> tuple[Folds, dict[str, float]]:
    """The first ``validated`` folds with their synthetic defects (patches cut from the fold's fit
    part); all synthetic frames pass the backbone in one call, nothing else does. A part of more than
    ``most`` images validates on a seeded sample of ``most`` of them."""
    t0 = time.perf_counter()
    parts = [sample_rows(rows, most, seed) for rows in fold_rows(len(train), seed, folds)[:validated]]
    defective, masks, kinds, synth_rows = [], [], [], []
    for f, val_rows in enumerate(parts):
        fit_rows = other_rows(len(train), val_rows)
        fold_masks = [np.zeros((len(val_rows), *train.images.shape[1:3]), bool)]
        start = sum(len(d) for d in defective)
        for c in range(copies):
            img, m, k = make_defects(
                train.images[val_rows], train.images[fit_rows], seed * 1000 + 17 * f + c, cfg
            )
            defective.append(img)
            fold_masks.append(m)
            kinds += k
        synth_rows.append(list(range(start, start + copies * len(val_rows))))
        masks.append(np.concatenate(fold_masks))
    t1 = time.perf_counter()
    synth = fx.frames(np.concatenate(defective), "synthetic defects")
    t2 = time.perf_counter()
    seconds = {"defects": t1 - t0, "synthetic_features": t2 - t1}
    return Folds(train, synth, parts, synth_rows, masks, kinds), seconds


def subset_auprs(method: str, folds: Folds, s: Settings, combos=ALL_COMBOS, tick=None) -> dict[str, float]:
    """Synthetic pixel AUPR of every layer subset of ``method``, pooled over the folds (each fitted on
    its fit part). Only native-resolution distance grids are kept per fold; a subset's maps are
    upsampled once, from all folds together. ``tick()`` after each subset of each fold.

    Each method shares what it can across the subsets through its own hooks (``subset_grids``,
    ``subset_map``): SPADE's per-layer grids, PatchCore's per-layer patch features compared without a
    coreset (:mod:`spadim.methods.patchcore_subsets`)."""
    masks = np.concatenate(folds.masks)
    used = tuple(sorted({layer for c in combos for layer in c}))
    chooser = s.method(method, used)  # the method's own grids per fold (SPADE: per layer, once)
    grids: dict = {}
    for f in range(len(folds.val_rows)):
        fit, val = folds.fold(f)
        for key, grid in chooser.subset_grids(fit, val, combos, s.backbone.crop, tick=tick).items():
            grids.setdefault(key, []).append(grid)
    joined = {k: torch.cat(v) for k, v in grids.items()}
    return {combo_name(c): pixel_aupr(chooser.subset_map(joined, c, s.backbone.crop), masks) for c in combos}


def pick(auprs: dict[str, float], tolerance: float = TOLERANCE) -> tuple[int, ...]:
    """Highest AUPR; within ``tolerance`` of it, fewer layers, then lower layers win."""
    combos = [tuple(int(x) for x in name.split("+")) for name in auprs]
    valid = [c for c in combos if not math.isnan(auprs[combo_name(c)])]
    if not valid:
        raise SpadimError(
            "no layer subset gave a defined synthetic AUPR (no synthetic defect fitted the frames)"
        )
    best = max(auprs[combo_name(c)] for c in valid)
    return min((c for c in valid if auprs[combo_name(c)] >= best - tolerance), key=lambda c: (len(c), c))


def training_features(fx: FeatureExtractor, data) -> FeatureSet:
    """Training features from a FeatureSet, ClassData, class folder or list of training paths."""
    if isinstance(data, FeatureSet):
        return data
    if isinstance(data, (str, Path)):
        data = load_class(data, need_test=False)  # indexes train/good only: no test, no ground_truth
    if isinstance(data, ClassData):
        return fx(data.train, f"{data.name} train")
    return fx(list(data), "train")


def select_many(
    fx: FeatureExtractor,
    data,
    s: Settings,
    methods,
    seed: int | None = None,
    folds: int = FOLDS,
    copies: int = COPIES,
    tolerance: float = TOLERANCE,
    cfg: DefectConfig = DEFECTS,
    validated: int = VALIDATED,
    tick=None,
    most: int = MOST_VALIDATED,
) -> dict[str, Selection]:
    """One :class:`Selection` per method, sharing the split, the defects and their backbone pass.

    ``data`` is training data only (see :func:`training_features`); ``fx`` must keep all four
    layers (and the pooled vector for SPADE): ``make_extractor(s, progress, methods, ALL_COMBOS)``.
    ``tick()`` is called after each subset of each method (a progress bar's step).
    """
    seed = s.seed if seed is None else seed
    t0 = time.perf_counter()
    train = training_features(fx, data)
    t_train = time.perf_counter() - t0
    missing = [layer for layer in (1, 2, 3, 4) if layer not in train.layers]
    if missing:
        raise SpadimError(
            f"layer selection needs all 4 layers; the features lack {missing}: "
            f"make the extractor with layer_sets=ALL_COMBOS"
        )
    parts, shared = validation_folds(fx, train, seed, folds, copies, cfg, validated, most)
    out = {}
    for m in methods:
        t1 = time.perf_counter()
        auprs = subset_auprs(m, parts, s, ALL_COMBOS, tick)
        seconds = {"train_features": t_train, **shared, "scoring": time.perf_counter() - t1}
        out[m] = Selection(m, pick(auprs, tolerance), auprs, parts.val_rows, parts.kinds, seed, seconds)
    return out


def select_layers(
    fx: FeatureExtractor, data, s: Settings, method: str, seed: int | None = None, **kw
) -> Selection:
    """The layer subset for ``method`` on one class, chosen from its training images alone."""
    return select_many(fx, data, s, [method], seed, **kw)[method]


def selection_seconds(sels: dict[str, Selection]) -> float:
    """Wall time of a :func:`select_many` call: shared parts once, scoring per method."""
    first = next(iter(sels.values())).seconds
    shared = sum(v for k, v in first.items() if k != "scoring")
    return shared + sum(sel.seconds["scoring"] for sel in sels.values())


def evaluate_auto(
    fx: FeatureExtractor, source: Path | ClassData, s: Settings, methods: list[str], observer=None
) -> tuple[ClassRun, dict[str, dict], dict[str, Selection]]:
    """``evaluate`` with ``--layers auto``: select per method on the training images, refit each
    method on all of them with its subset (features held, not re-extracted), stream the test set.
    ``source`` is a class folder or a class of any layout (:func:`spadim.run.pipeline.class_data`).
    ``observer`` sees the features as in :func:`spadim.run.pipeline.evaluate_class` (the training
    features as one chunk)."""
    data = class_data(source)
    if observer is not None:
        observer.start(data)
    train = fx(data.train, f"{data.name} train")
    if observer is not None:
        observer.train_chunk(train)
    sels = select_many(fx, train, s, methods)
    fitted = {m: s.method(m, sels[m].chosen).fit(train) for m in methods}
    run, metrics = evaluate_fitted(fx, data, s, fitted, train, observer)
    return run, metrics, sels
