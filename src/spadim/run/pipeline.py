"""Fit and score methods on MVTec classes; every image passes the backbone once per run.

:func:`evaluate_class` holds a class's training features, fits every method, then streams
the test images through the backbone and all fitted methods in chunks, keeping only the
maps and scores the metrics need: memory does not grow with the number of test images.
:func:`prepare_class` + :func:`score_class` keep the test features too, for studies that
re-score the same images many times (the layer sweep).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from spadim.features.backbone import load_backbone
from spadim.data.mvtec import ClassData, load_class, load_masks
from spadim.errors import SpadimError
from spadim.features.device import resolve_device
from spadim.features.config import BackboneConfig
from spadim.features.extractor import FeatureExtractor, FeatureSet
from spadim.methods.base import Method
from spadim.metrics.ranking import evaluate_maps, image_auroc, undefined_notes
from spadim.methods import registry
from spadim.masks.keypoints import (
    MaskConfig,
    apply_outside_multiplier,
    object_mask,
    reference_features,
)


AUTO = "auto"  # Settings.layers marker: choose the subset per class (spadim.studies.layerselect)


@dataclass(frozen=True, kw_only=True)
class Settings:
    """What defines a run: the backbone's config, each method's config, and the run's own choices.

    A method's options live in its config only (:class:`~spadim.methods.SpadeConfig`, ...); ``configs``
    holds those a caller set, by method name, as a config or as a configured, unfitted method whose options
    and search every fit keeps (``spadim.PatchCore(coreset=0.05)``). A method not named there runs with its
    defaults for the backbone and the run's seed (:meth:`~spadim.methods.base.Method.default_config`)."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    configs: Mapping[str, object] = field(default_factory=dict)
    layers: tuple[int, ...] | str = (1, 2, 3)  # or AUTO: chosen per class from normal images
    layers_given: bool = False  # True when the caller chose the layers (else each method's default)
    seed: int = 0  # of random weights, held-out folds, the layer choice's splits and learned masks
    stream_size: int = 32  # test images scored per chunk when streaming

    def __post_init__(self):
        unknown = sorted(set(self.configs) - set(registry.METHODS))
        if unknown:
            raise SpadimError(
                f"Settings.configs names {unknown[0]!r}: name a method of {', '.join(registry.METHODS)}"
            )
        if isinstance(self.layers, str) and self.layers != AUTO:
            raise SpadimError(
                f"layers {self.layers!r} (Settings.layers): give layer ids such as (1, 2, 3), or {AUTO!r}"
            )
        if self.stream_size < 1:
            raise SpadimError(f"stream_size must be >= 1 (Settings.stream_size, got {self.stream_size})")

    @property
    def auto_layers(self) -> bool:
        """True when the layer subset is chosen per class (``--layers auto``, see spadim.studies.layerselect)."""
        return self.layers == AUTO

    @property
    def layers_label(self):
        """``layers`` for reports: a list of ids, or the 'auto' marker."""
        return AUTO if self.auto_layers else list(self.layers)

    def config(self, name: str):
        """The options method ``name`` runs with: the caller's, else its defaults for this backbone."""
        given = self.configs.get(name)
        if isinstance(given, Method):
            return given.config
        return (
            given
            if given is not None
            else registry.METHODS[name].default_config(self.backbone.arch, self.seed)
        )

    def recorded_options(self, methods=None) -> dict:
        """The options of ``methods`` (default: every method) under the names results files record them
        (k, d, spade_fusion, coreset, search)."""
        record = {}
        for name in registry.METHODS if methods is None else methods:
            record.update(registry.METHODS[name].recorded_options(self.config(name)))
        return record

    def result_options(self, methods=None) -> dict:
        """:meth:`recorded_options` that change results, for signatures of resumable runs: all but the
        nearest-neighbour search, whose backends are all exact."""
        return {key: value for key, value in self.recorded_options(methods).items() if key != "search"}

    def method_layers(self, name: str) -> tuple[int, ...]:
        """The layers ``name`` runs with: the run's layers when given, else the method's own default
        (PatchCore's paper setting 2,3; SPADE's and PaDiM's 1,2,3)."""
        default = registry.METHODS[name].default_layers
        return tuple(self.layers) if self.layers_given or default is None else tuple(default)

    def method(self, name: str, layers: tuple[int, ...] | None = None):
        """A new, unfitted method ``name`` with its options and ``layers`` (else :meth:`method_layers`)."""
        if layers is None and self.auto_layers:
            raise SpadimError(
                "layers are 'auto': choose them first (spadim.studies.layerselect) and pass them"
            )
        layers = tuple(layers or self.method_layers(name))
        given = self.configs.get(name)
        if isinstance(given, Method):
            return given.with_layers(layers)
        return registry.METHODS[name](config=self.config(name), layers=layers)


def needed_features(methods: list[str], layer_sets) -> tuple[tuple[int, ...], bool]:
    """Layers to keep and whether a method needs the pooled layer-4 vector (SPADE)."""
    layers = tuple(sorted({layer for combo in layer_sets for layer in combo}))
    return layers, any(registry.METHODS[name].uses_pooled for name in methods)


def make_extractor(
    s: Settings, progress=None, methods=tuple(registry.METHODS), layer_sets=None
) -> FeatureExtractor:
    """The backbone with real (or explicitly random) weights, keeping only what ``methods`` need."""
    b = s.backbone
    model, weights = load_backbone(b.arch, b.weights, s.seed)
    if layer_sets is None and s.auto_layers:
        from spadim.features.extractor import ALL_COMBOS

        layer_sets = ALL_COMBOS  # the choice needs every layer
    layers, pooled = needed_features(list(methods), layer_sets or [s.method_layers(m) for m in methods])
    return FeatureExtractor(
        model, weights, b.pre, b.batch_size, b.cache_dir, progress, layers, pooled, resolve_device(b.device)
    )


@dataclass
class ClassRun:
    """One class's test set with features, ground truth and, per method, maps and scores."""

    data: ClassData
    train: FeatureSet
    test: FeatureSet
    masks: np.ndarray  # bool [N, crop, crop]
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    #: fitted methods that can score their own training images left-out (SPADE, PatchCore: small to keep)
    left_out: dict = field(default_factory=dict)

    @property
    def labels(self) -> np.ndarray:
        return self.data.labels


#: Row note of a class without ground truth; its pixel metrics are None ("n/a"), not NaN.
NO_MASKS = "no ground-truth masks given: pixel metrics n/a"
NO_IMAGE_AUROC = "image AUROC n/a: it needs both normal and defective test images"


def class_data(source: Path | ClassData) -> ClassData:
    """A class folder in the MVTec AD layout, indexed; a ClassData (any other layout) as it is."""
    return source if isinstance(source, ClassData) else load_class(source)


def class_metrics(data: ClassData, maps: np.ndarray, masks: np.ndarray, scores: np.ndarray) -> dict:
    """:func:`evaluate_maps`; without ground truth only image AUROC, pixel metrics None (not measured).

    None rather than NaN: NaN says "undefined on these labels", None says "there were no labels"."""
    if data.has_masks:
        return evaluate_maps(maps, masks, scores, data.labels)
    auroc = image_auroc(scores, data.labels)
    return {
        "pixel_auroc": None,
        "pixel_aupr": None,
        "image_auroc": None if math.isnan(auroc) else auroc,
        "aupro": None,
    }


def metric_notes(data: ClassData, masks: np.ndarray) -> list[str]:
    """Why some of a class's metrics are NaN or n/a, in words for tables and logs (empty if none is)."""
    if data.has_masks:
        return undefined_notes(masks, data.labels)
    labels = data.labels
    return [NO_MASKS] + ([NO_IMAGE_AUROC] if labels.all() or not labels.any() else [])


def prepare_class(fx: FeatureExtractor, source: Path | ClassData) -> ClassRun:
    """Index a class, extract train and test features (both kept), read the masks."""
    data = class_data(source)
    train = fx(data.train, f"{data.name} train")
    test = fx(data.test, f"{data.name} test")
    return ClassRun(data, train, test, load_masks(data, fx.pre, test.shapes))


def images_only(paths: list[Path], chunks: list[FeatureSet]) -> FeatureSet:
    """The frames and sizes of streamed chunks, without features."""
    return FeatureSet(
        list(paths),
        {},
        None,
        np.concatenate([c.images for c in chunks]),
        [shape for c in chunks for shape in c.shapes],
    )


def fit_methods(
    fx: FeatureExtractor,
    paths: list[Path],
    s: Settings,
    methods: list[str],
    layers: tuple[int, ...] | None = None,
    desc: str = "train",
    on_chunk=None,
    hold: bool = False,
) -> tuple[dict, FeatureSet]:
    """Fitted methods and the training FeatureSet.

    When every method can fit chunk by chunk (PaDiM), the training features are streamed
    and only the frames are kept; SPADE's gallery is the training features, so with SPADE
    they are held once and shared (also with ``hold``, e.g. for out-of-fold calibration).
    ``on_chunk(features)`` sees the training features in order
    (one whole set or chunk by chunk), e.g. for a learned object mask.
    """
    fresh = {name: s.method(name, layers) for name in methods}
    if hold or not all(m.abilities.streams_training for m in fresh.values()):
        train = fx(paths, desc)
        if on_chunk:
            on_chunk(train)
        return {name: m.fit(train) for name, m in fresh.items()}, train
    frames = []
    for chunk in fx.stream(paths, s.stream_size, desc):
        for method in fresh.values():
            method.partial_fit(chunk)
        if on_chunk:
            on_chunk(chunk)
        frames.append(FeatureSet([], {}, None, chunk.images, chunk.shapes))
        del chunk
    return {name: m.finish_fit() for name, m in fresh.items()}, images_only(paths, frames)


def score_stream(
    fx: FeatureExtractor,
    paths: list[Path],
    fitted: dict,
    chunk_size: int,
    size: int,
    desc: str = "test",
    on_chunk=None,
) -> tuple[FeatureSet, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Frames, maps [N, size, size] and image scores per method; features live one chunk at a time
    (``on_chunk(features)`` sees each chunk, e.g. to compute learned object masks)."""
    frames, maps, scores = [], {n: [] for n in fitted}, {n: [] for n in fitted}
    for chunk in fx.stream(paths, chunk_size, desc):
        for name, method in fitted.items():
            chunk_maps, chunk_scores = method.score(chunk, size)
            maps[name].append(chunk_maps)
            scores[name].append(chunk_scores)
        if on_chunk:
            on_chunk(chunk)
        frames.append(FeatureSet([], {}, None, chunk.images, chunk.shapes))
        del chunk
    return (
        images_only(paths, frames),
        {n: np.concatenate(m) for n, m in maps.items()},
        {n: np.concatenate(v) for n, v in scores.items()},
    )


def evaluate_class(
    fx: FeatureExtractor,
    source: Path | ClassData,
    s: Settings,
    methods: list[str],
    layers: tuple[int, ...] | None = None,
    observer=None,
    hold_train: bool = False,
) -> tuple[ClassRun, dict[str, dict]]:
    """Fit each method on the training features, stream the test set through all of them.
    ``hold_train`` keeps the training features in the run (for calibration) even for PaDiM.

    ``source`` is an MVTec AD class folder or the ClassData of any layout (:func:`class_data`).

    The returned run's ``test`` holds the test images (for pictures and object masks) but
    no features. ``observer`` (e.g. :class:`spadim.masks.auto.MaskPlanner`) gets ``start(data)``,
    then ``train_chunk`` / ``test_chunk`` with the features as they stream past.
    """
    data = class_data(source)
    if observer is not None:
        observer.start(data)
    fitted, train = fit_methods(
        fx,
        data.train,
        s,
        methods,
        layers,
        f"{data.name} train",
        observer.train_chunk if observer is not None else None,
        hold_train,
    )
    return evaluate_fitted(fx, data, s, fitted, train, observer)


def evaluate_fitted(
    fx: FeatureExtractor, data: ClassData, s: Settings, fitted: dict, train: FeatureSet, observer=None
) -> tuple[ClassRun, dict[str, dict]]:
    """Stream the test set through already fitted methods (``fitted`` is emptied to free them)."""
    methods = list(fitted)
    test, maps, scores = score_stream(
        fx,
        data.test,
        fitted,
        s.stream_size,
        s.backbone.crop,
        f"{data.name} test",
        observer.test_chunk if observer is not None else None,
    )
    left_out = {n: m for n, m in fitted.items() if m.abilities.leave_one_out and len(train)}
    fitted.clear()  # PaDiM's Gaussians (up to 3.8 GB at d=550) are not needed by the metrics
    run = ClassRun(data, train, test, load_masks(data, fx.pre, test.shapes), maps, scores, left_out)
    metrics = {n: class_metrics(data, run.maps[n], run.masks, run.scores[n]) for n in methods}
    return run, metrics


def score_class(
    run: ClassRun, s: Settings, methods: list[str], layers: tuple[int, ...] | None = None
) -> dict[str, dict]:
    """Fit each method on the train features, score the test set; returns metrics per method."""
    out = {}
    for name in methods:
        m = s.method(name, layers).fit(run.train)
        run.maps[name], run.scores[name] = m.score(run.test, s.backbone.crop)
        out[name] = class_metrics(run.data, run.maps[name], run.masks, run.scores[name])
    return out


def reference_indices(n_train: int, n_refs: int) -> list[int]:
    """``n_refs`` training images spread evenly over the (sorted) training list."""
    n = min(n_refs, n_train)
    return sorted({round(i * (n_train - 1) / max(n - 1, 1)) for i in range(n)})


def object_masks(
    test_images: np.ndarray, ref_images: np.ndarray, cfg: MaskConfig
) -> tuple[np.ndarray, list[str]]:
    """Keypoint object masks [N, H, W] of the test images and one warning per fallback."""
    refs = reference_features(list(ref_images), cfg)
    masks, warnings = [], []
    for i, img in enumerate(test_images):
        res = object_mask(img, [], cfg, ref_features=refs)
        masks.append(res.mask)
        if res.fallback:
            warnings.append(f"image {i}: {res.fallback}")
    return np.stack(masks), warnings


def class_object_masks(run: ClassRun, cfg: MaskConfig) -> tuple[np.ndarray, list[str]]:
    """Object masks of a class's test images against evenly spread training references."""
    refs = run.train.images[reference_indices(len(run.train), cfg.n_refs)]
    masks, warnings = object_masks(run.test.images, refs, cfg)
    return masks, [f"{run.data.name}: {w}" for w in warnings]


def suppress_outside(
    name: str, maps: np.ndarray, scores: np.ndarray, obj: np.ndarray, r: float
) -> tuple[np.ndarray, np.ndarray]:
    """Scale scores outside the object masks by ``r``.

    A method whose image score is its map's maximum (PaDiM) gets it recomputed on the masked map; the
    others' image scores (SPADE's kNN over pooled features, PatchCore's eq. 7) are unchanged.
    """
    maps = apply_outside_multiplier(maps, obj, r)
    return maps, registry.METHODS[name].image_scores_of_maps(maps, scores)


def masked_result(run: ClassRun, name: str, obj: np.ndarray, r: float) -> tuple[np.ndarray, np.ndarray, dict]:
    """Maps, image scores and metrics of method ``name`` after :func:`suppress_outside`."""
    maps, scores = suppress_outside(name, run.maps[name], run.scores[name], obj, r)
    return maps, scores, class_metrics(run.data, maps, run.masks, scores)
