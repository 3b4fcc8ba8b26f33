"""A fitted, calibrated model ready for a line: images in, decisions, scores, regions and masks out.

:class:`Inspector` is configured and fitted in Python (:mod:`.estimator`) or loads a model file once
(backbone, method, calibration), and serves :meth:`Inspector.predict_batch` to ``spadim predict``
(which streams folders through it) and to ``spadim serve`` (one upload at a time). Scores are mapped back onto the original pixels, so a
region's box and area are in the image the user sent, not in the network's 224 px frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import torch

from spadim.data.mvtec import Preprocess
from spadim.errors import SpadimError
from spadim.features.backbone import file_sha256
from spadim.features.device import resolve_device
from spadim.export.graph import GraphScorer
from spadim.features.extractor import FeatureExtractor
from spadim.report.figures import colorize, overlay
from spadim.run.modelfile import load_fitted
from spadim.masks.keypoints import MaskConfig
from spadim.run.pipeline import needed_features, object_masks, suppress_outside
from spadim.decision.conformal import DEFAULT_FAR, Calibration, check_far
from .estimator import Estimator, FitOptions, default_method
from spadim.decision.regions import (
    DEFAULT_MIN_AREA,
    Region,
    judge,
    min_area_pixels,
)


@dataclass
class ObjectMask:
    """Keypoint object mask at predict time (proposal 1): scores outside the part times ``multiplier``."""

    config: MaskConfig
    multiplier: float = 0.6


@dataclass
class OperatingPoint:
    """The levels in force for one call: the model's calibration, or a user's override.

    An image is a defect exactly when its map has a region of ``min_area`` above ``region_threshold``;
    a defect's regions are then drawn from ``pixel_threshold`` (never above ``region_threshold``)."""

    image_threshold: float | None  # the image score's own conformal threshold (ranking, not deciding)
    pixel_threshold: float  # the level regions are drawn from (mask level)
    source: str  # "calibrated at far=0.01", "--threshold 3.2", ...
    far: float | None
    guaranteed: bool
    region_threshold: float = float("inf")  # the decision level
    min_area: float = DEFAULT_MIN_AREA  # smallest region, as a fraction of the image area


@dataclass
class Prediction:
    name: str
    height: int
    width: int
    score: float
    normalized_score: float | None
    decision: str  # "ok" or "defect": "defect" exactly when ``regions`` is not empty
    region_score: float  # the level at which its last region of min_area disappears (decides)
    regions: list[Region]
    anomaly_map: np.ndarray = field(repr=False)  # float32 [height, width], raw score units
    defect_mask: np.ndarray = field(repr=False)  # bool [height, width]: pixels of the kept regions

    def to_json(self, point: OperatingPoint) -> dict:
        return {
            "image": self.name,
            "width": self.width,
            "height": self.height,
            "score": self.score,
            "normalized_score": self.normalized_score,
            "decision": self.decision,
            "region_score": self.region_score,
            "region_threshold": point.region_threshold,
            "image_threshold": point.image_threshold,
            "pixel_threshold": point.pixel_threshold,
            "min_area": point.min_area,
            "operating_point": point.source,
            "defect_pixels": int(self.defect_mask.sum()),
            "regions": [r.to_json() for r in self.regions],
        }


def _require_references(meta: dict, path, object_mask) -> None:
    """A keypoint object mask matches against the normal frames the model file keeps."""
    if object_mask is not None and len(meta["ref_images"]) == 0:
        raise SpadimError(
            f"model {path} holds no reference images, which `object_mask` needs: "
            f"refit it keeping some (`refs=3`), or drop `object_mask`"
        )


class Inspector(Estimator):
    """One model: configured and fitted here (``Inspector(PatchCore(), far=0.05).fit("good/")``) or loaded
    once from a file (:meth:`load`). ``scorer`` (frames -> maps, image scores) replaces the in-process
    backbone and method: an ONNX export run by onnxruntime, or the method's graph on a GPU."""

    def __init__(self, method=None, *, far: float = DEFAULT_FAR, **options):
        """``method``: a configured SPADE, PaDiM or PatchCore (default: ``PatchCore(layers="auto")``);
        ``options``: those of :class:`~spadim.inspect.estimator.FitOptions` (backbone, weights, frame,
        resize, crop, pixel_far, folds, refs, batch_size, device, seed), keyword only."""
        self.options = FitOptions(far=far, **options)
        self._attach(method if method is not None else default_method(), None, None)

    def _attach(self, method, meta, extractor, model_path=None, scorer=None, runtime: str = "torch") -> None:
        self.method, self.meta, self.extractor, self.scorer = method, meta, extractor, scorer
        self.pre: Preprocess | None = (
            extractor.pre if extractor else Preprocess(**meta["preprocess"]) if meta else None
        )
        self.model_path, self.runtime = model_path, runtime
        self.concurrent = False  # True when the scoring runs elsewhere and takes concurrent calls (Ray Serve)
        self.load_options: dict = {}  # how :meth:`load` read the file (weights, ...), to reload it alike
        self.calibration = (
            Calibration.from_json(meta["calibration"]) if meta and meta.get("calibration") else None
        )
        self.sha256 = file_sha256(scorer.path if runtime == "onnx" else model_path) if model_path else ""

    @classmethod
    def _assembled(
        cls, method, meta, extractor, model_path=None, scorer=None, runtime="torch"
    ) -> "Inspector":
        inspector = cls.__new__(cls)
        inspector.options = FitOptions.of_model(meta)
        inspector._attach(method, meta, extractor, model_path, scorer, runtime)
        return inspector

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        weights: str | None = None,
        batch_size: int = 8,
        object_mask: ObjectMask | None = None,
        runtime: str = "torch",
        device: str = "cpu",
    ) -> "Inspector":
        """Read the model and its backbone; a checkpoint other than the one it was fitted with is refused.
        A model that cannot serve ``object_mask`` is refused before the backbone loads. ``runtime`` "onnx":
        ``path`` is an export (``spadim export``), run by onnxruntime on ``device``."""
        if runtime == "onnx":
            from spadim.export.onnx import OnnxScorer

            if object_mask is not None:
                raise SpadimError(
                    "`object_mask` matches against the model file's reference images, which an ONNX "
                    "export does not hold: use `runtime=torch` with the model file"
                )
            scorer = OnnxScorer(path, device, batch_size)
            meta = {**scorer.meta, "ref_images": torch.zeros(0, 1, 1, 3, dtype=torch.uint8)}
            method = SimpleNamespace(name=meta["method"], layers=tuple(meta["layers"]))
            return cls._assembled(method, meta, None, Path(path), scorer, "onnx")
        if runtime != "torch":
            raise SpadimError(f"`runtime={runtime}`: choose torch or onnx")
        method, meta, network, found = load_fitted(
            path, weights, lambda meta: _require_references(meta, path, object_mask)
        )
        layers, pooled = needed_features([method.name], [method.layers])
        target = resolve_device(device)  # the extractor and the graph share one network, on this device
        extractor = FeatureExtractor(
            network, found, Preprocess(**meta["preprocess"]), batch_size, None, None, layers, pooled, target
        )
        scorer = None if target.type == "cpu" else GraphScorer(network, method, extractor.pre.crop, target)
        inspector = cls._assembled(method, meta, extractor, Path(path), scorer)
        inspector.load_options = {"weights": weights, "batch_size": batch_size, "device": device}
        return inspector

    def reloaded(self) -> "Inspector":
        """The model file as it is now (another version may be in force), loaded as this one was."""
        if self.runtime != "torch" or self.model_path is None:
            raise SpadimError("only a model file run by torch can be reloaded")
        return Inspector.load(self.model_path, **self.load_options)

    def file_stamp(self) -> tuple | None:
        """What tells that the model file changed (a new version written over it)."""
        try:
            stat = self.model_path.stat()
        except (OSError, AttributeError, TypeError):
            return None
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    @property
    def model_version(self) -> str:
        """The version that decides: its id when the model file keeps versions, else its content hash."""
        return (self.meta.get("version") or {}).get("id") or self.sha256[:16]

    def backbone_text(self) -> str:
        """The weights line predict and serve print."""
        if self.extractor is not None:
            return self.extractor.weights.describe()
        backbone = self.meta["backbone"]
        return (
            f"backbone {backbone['arch']} ({backbone['source']}, sha256 {backbone['sha256'][:12]}), "
            f"inside the ONNX export {self.scorer.path}"
        )

    # ------------------------------------------------------------ operating point
    def operating_point(self, threshold: float | None = None, far: float | None = None) -> OperatingPoint:
        if threshold is not None and far is not None:
            raise SpadimError(
                "give `threshold` or `far`, not both: `far` picks a threshold from the calibration"
            )
        cal = self.calibration
        if threshold is not None:  # the region level, in pixel-score units
            if not np.isfinite(threshold):
                raise SpadimError(f"`threshold` must be a finite score (got {threshold})")
            threshold = float(threshold)
            pixel = min(cal.pixel_threshold, threshold) if cal else threshold
            return OperatingPoint(
                None,
                pixel,
                f"region level {threshold:g} given by the user",
                None,
                False,
                threshold,
                cal.min_area if cal else DEFAULT_MIN_AREA,
            )
        if cal is None or cal.region_threshold is None:
            why = "no calibration" if cal is None else "no region calibration"
            raise SpadimError(
                f"model {self.model_path} has {why} (fitted by an older spadim): run "
                f"`spadim calibrate {self.model_path} GOOD_IMAGES_DIR` or give `threshold` (a region level)"
            )
        if far is not None:
            cal = cal.at(check_far(far))
        return OperatingPoint(
            cal.image_threshold,
            cal.mask_level,
            f"calibrated at far={cal.far:g} ({cal.how}, n={cal.n_images}"
            + (
                f", the level rests on the newest {cal.n_deciding})" if cal.n_deciding < cal.n_images else ")"
            ),
            cal.far,
            cal.guaranteed,
            cal.region_threshold,
            cal.min_area,
        )

    def warnings(self, point: OperatingPoint) -> list[str]:
        if self.meta["backbone"]["source"] == "random":
            out = ["RANDOM UNTRAINED WEIGHTS: scores are not meaningful"]
        else:
            out = []
        if point.far is not None:
            cal = self.calibration.at(point.far)
            out += [line for line in (cal.warning(), cal.advice()) if line]
        return out

    # ------------------------------------------------------------ scoring
    def check_object_mask(self, object_mask: ObjectMask | None) -> None:
        _require_references(self.meta, self.model_path, object_mask)

    def score_frames(
        self, frames: np.ndarray, object_mask: ObjectMask | None = None
    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Preprocessed uint8 frames [N, crop, crop, 3] -> maps [N, crop, crop], image scores [N] and the
        object mask's fallback warnings."""
        if self.scorer is not None:
            maps, scores = self.scorer(frames)
        else:
            with torch.inference_mode():
                features = self.extractor.frames(frames, "predict")
                maps, scores = self.method.score(features, self.pre.crop)
        if object_mask is None:
            return maps, scores, []
        self.check_object_mask(object_mask)
        inside, warnings = object_masks(frames, self.meta["ref_images"].numpy(), object_mask.config)
        maps, scores = suppress_outside(self.method.name, maps, scores, inside, object_mask.multiplier)
        return maps, scores, warnings

    def predict_batch(
        self,
        images: list[np.ndarray],
        names: list[str],
        point: OperatingPoint,
        min_area: float | None = None,
        object_mask: ObjectMask | None = None,
    ) -> list[Prediction]:
        """Original-resolution RGB images (any sizes) -> one :class:`Prediction` each, in one batch pass.
        ``min_area`` (a fraction of the image) other than the calibrated one voids the far promise."""
        min_area = point.min_area if min_area is None else min_area
        if not images:
            return []
        frames = np.stack([self.pre.image(rgb) for rgb in images])
        maps, scores, _ = self.score_frames(frames, object_mask)
        out = []
        for rgb, name, frame_map, score in zip(images, names, maps, scores):
            height, width = rgb.shape[:2]
            full = self.pre.to_original(frame_map, (height, width))
            verdict = judge(
                full,
                point.region_threshold,
                point.pixel_threshold,
                min_area_pixels(min_area, height, width),
                self.calibration.normalize_pixels if self.calibration else None,
            )
            normalized = (
                float(self.calibration.normalize_image(score, point.image_threshold))
                if self.calibration and point.image_threshold is not None
                else None
            )
            out.append(
                Prediction(
                    name,
                    height,
                    width,
                    float(score),
                    normalized,
                    "defect" if verdict.regions else "ok",
                    verdict.region_score,
                    verdict.regions,
                    full,
                    verdict.mask,
                )
            )
        return out

    # ------------------------------------------------------------ pictures
    def colour_range(self, point: OperatingPoint) -> tuple[float, float]:
        """Raw pixel scores shown from the normal median (blue) to twice the threshold's distance from it
        (red), so the threshold sits at the middle of the colour bar on every image, batch and call."""
        low = self.calibration.pixel_median if self.calibration else 0.0
        return low, low + 2.0 * (point.pixel_threshold - low)

    def heatmap(self, prediction: Prediction, point: OperatingPoint) -> np.ndarray:
        return colorize(prediction.anomaly_map, *self.colour_range(point))

    def overlay(self, rgb: np.ndarray, prediction: Prediction, point: OperatingPoint) -> np.ndarray:
        """Heatmap blended over the image, with the defect regions outlined in white."""
        picture = overlay(rgb, self.heatmap(prediction, point))
        contours, _ = cv2.findContours(
            prediction.defect_mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        cv2.drawContours(picture, contours, -1, (255, 255, 255), max(1, round(max(rgb.shape[:2]) / 300)))
        return picture

    def describe(self) -> dict:
        """What ``GET /models`` and ``predict``'s run.json say about the model."""
        meta = self.meta
        return {
            "method": self.method.name,
            "layers": list(self.method.layers),
            "class_name": meta["class_name"],
            "backbone": meta["backbone"],
            "preprocess": meta["preprocess"],
            "model_sha256": self.sha256,
            "runtime": self.runtime,
            "spadim_version": meta.get("spadim_version"),
            "format_version": meta.get("format_version"),
            "calibration": None
            if self.calibration is None
            else {
                k: v
                for k, v in self.calibration.to_json().items()
                if k not in ("image_scores", "pixel_max", "pixel_tail")
            },
            "fit": meta.get("fit", {}),
        }
