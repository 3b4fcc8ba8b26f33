"""The Python API: configure, ``fit``, ``predict``, ``update``, ``save``, ``load``, as scikit-learn does.

    from spadim import Inspector, PatchCore
    inspector = Inspector(PatchCore(layers="auto"), backbone="resnet50_caffe", far=0.05)
    inspector.fit("good_parts/")            # a folder, a list of paths, or RGB arrays
    prediction = inspector.predict("part.png")
    inspector.update(["new_good.png"])      # grows the model without a refit
    inspector.save("bolts.pt"); Inspector.load("bolts.pt")

Options are keyword-only and their defaults are defined once, here and in each method's config
(:mod:`spadim.methods`); the command line reads them from there. Nothing is written or printed unless
asked: ``fit`` and ``update`` take a ``say`` callable for their progress lines.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spadim.data.folders import find_images
from spadim.data.mvtec import check_images, read_rgb
from spadim.decision.conformal import DEFAULT_FAR, DEFAULT_PIXEL_FAR, check_far
from spadim.errors import SpadimError
from spadim.features.config import BackboneConfig
from spadim.methods import PatchCore
from spadim.run.calibration import DEFAULT_FOLDS
from spadim.run.pipeline import AUTO, Settings

_BACKBONE = BackboneConfig()  # the backbone's defaults, defined in its config


def default_method():
    """The line's default: PatchCore with layers chosen from the good images."""
    return PatchCore(layers=AUTO)


def _quiet(*_args, **_kwargs) -> None:
    return None


@dataclass(frozen=True, kw_only=True)
class FitOptions:
    """How an :class:`~spadim.inspect.Inspector` fits: backbone, preprocessing and calibration."""

    backbone: str = _BACKBONE.arch
    weights: str | None = None  # a checkpoint path or folder; None: the usual lookup; "random": untrained
    far: float = DEFAULT_FAR  # promised false-alarm rate of the decision
    pixel_far: float = DEFAULT_PIXEL_FAR  # share of normal pixels above the defect-mask level
    folds: int = DEFAULT_FOLDS  # held-out folds, for a method without leave-one-out
    refs: int = 3  # normal frames kept for keypoint object masks at predict time
    resize: int = _BACKBONE.resize
    crop: int = _BACKBONE.crop
    frame: str = "whole"  # the whole image squashed to the crop: a line inspects every pixel
    batch_size: int = _BACKBONE.batch_size
    device: str = _BACKBONE.device
    seed: int = Settings.seed

    def __post_init__(self):
        check_far(self.far, "far")
        check_far(self.pixel_far, "pixel_far")
        if self.folds < 2:
            raise SpadimError(f"folds must be >= 2 (got {self.folds}): each fold is scored by the others")
        self.backbone_config  # noqa: B018 - raises SpadimError on a bad backbone option

    @property
    def backbone_config(self) -> BackboneConfig:
        return BackboneConfig(
            arch=self.backbone,
            weights=self.weights,
            resize=self.resize,
            crop=self.crop,
            frame=self.frame,
            batch_size=self.batch_size,
            device=self.device,
        )

    def settings(self, method) -> Settings:
        """The run settings of a fit of ``method``, whose options and search every fit keeps."""
        return Settings(
            backbone=self.backbone_config,
            configs={method.name: method},
            layers=method.layers,
            layers_given=True,
            seed=self.seed,
        )

    @classmethod
    def of_model(cls, meta: dict | None) -> "FitOptions":
        """The options a loaded model was fitted with, as far as its file says."""
        if not meta:
            return cls()
        pre, calibration = meta.get("preprocess", {}), meta.get("calibration") or {}
        return cls(
            backbone=meta.get("backbone", {}).get("arch", _BACKBONE.arch),
            far=calibration.get("far", DEFAULT_FAR),
            pixel_far=calibration.get("pixel_far", DEFAULT_PIXEL_FAR),
            resize=pre.get("resize", _BACKBONE.resize),
            crop=pre.get("crop", _BACKBONE.crop),
            frame=pre.get("frame", "whole"),
        )


def _images(images) -> tuple[list[Path] | None, list[np.ndarray] | None]:
    """A folder, a file, a list of paths or a list of RGB arrays -> (paths, None) or (None, arrays)."""
    if isinstance(images, (str, Path)):
        path = Path(images)
        if path.is_dir():
            return find_images(path), None
        return [path], None
    if isinstance(images, np.ndarray):
        return None, [images]
    items = list(images)
    if items and all(isinstance(item, np.ndarray) for item in items):
        return None, items
    if all(isinstance(item, (str, Path)) for item in items):
        return [Path(item) for item in items], None
    raise SpadimError("images: give a folder, an image file, a list of image files or a list of RGB arrays")


class Estimator:
    """The estimator half of :class:`~spadim.inspect.Inspector` (fit, predict, update, save)."""

    def fit(self, images, *, say=_quiet) -> "Estimator":
        """Fit on good images: choose the layers when 'auto', fit, calibrate held-out, audit."""
        from spadim.features.extractor import ALL_COMBOS
        from spadim.run.calibration import check_image_count
        from spadim.run.pipeline import make_extractor
        from .fitting import fit_features

        options, method = self.options, self.method
        settings = options.settings(method)
        paths, arrays = _images(images)
        count = len(paths if paths is not None else arrays)
        if paths is not None:
            check_images(paths)
        check_image_count(count, [method.name], "the good images", choose_layers=settings.auto_layers)
        extractor = make_extractor(
            settings, None, [method.name], ALL_COMBOS if settings.auto_layers else None
        )
        if paths is not None:
            train = extractor(paths, "fit")
        else:
            frames = np.stack([extractor.pre.image(np.asarray(rgb, np.uint8)) for rgb in arrays])
            train = extractor.frames(frames, "fit")
            train.shapes = [tuple(np.asarray(rgb).shape[:2]) for rgb in arrays]
        fitted = fit_features(
            train,
            extractor,
            settings,
            method.name,
            far=options.far,
            folds=options.folds,
            refs=options.refs,
            pixel_far=options.pixel_far,
            say=say,
        )
        self._attach(fitted["method"], fitted["blob"], extractor)
        self.fit_result = fitted
        return self

    @property
    def audit(self) -> list[dict]:
        """The good images that stood apart when the model was fitted (modified z-score > 3.5)."""
        return self._fitted_meta()["fit"].get("audit", [])

    def _fitted_meta(self) -> dict:
        if self.meta is None:
            raise SpadimError("this Inspector is not fitted yet: call fit(images) or Inspector.load(path)")
        return self.meta

    def predict(self, images, *, far: float | None = None, threshold: float | None = None, min_area=None):
        """One image (a path or an RGB array) -> a Prediction; a folder or a list -> a list of them. The
        calibrated level, or the level at another ``far``, or a region ``threshold`` of your own."""
        self._fitted_meta()
        single = isinstance(images, np.ndarray) or (
            isinstance(images, (str, Path)) and not Path(images).is_dir()
        )
        paths, arrays = _images(images)
        if paths is not None:
            check_images(paths)
            arrays, names = [read_rgb(path) for path in paths], [str(path) for path in paths]
        else:
            names = [f"<array {i}>" for i in range(len(arrays))]
        point = self.operating_point(threshold, far)
        predictions = []
        batch = self.options.batch_size
        for start in range(0, len(arrays), batch):
            predictions += self.predict_batch(
                arrays[start : start + batch], names[start : start + batch], point, min_area
            )
        return predictions[0] if single else predictions

    def update(self, images, *, keep_apart: bool = False, say=_quiet) -> dict:
        """Grow the fitted model with good images, without a refit (see :mod:`spadim.inspect.update`)."""
        from .update import grow_inspector

        self._fitted_meta()
        paths, arrays = _images(images)
        if arrays is not None:
            with tempfile.TemporaryDirectory(prefix="spadim-update-") as scratch:
                paths = []
                for i, rgb in enumerate(arrays):
                    paths.append(Path(scratch) / f"array_{i:05d}.png")
                    _write_rgb(paths[-1], rgb)
                return grow_inspector(self, paths, keep_apart=keep_apart, say=say)
        return grow_inspector(self, paths, keep_apart=keep_apart, say=say)

    def save(self, path) -> Path:
        """Write the model file (atomically) and log it as a version of ``path``."""
        from spadim.run.modelfile import write_blob
        from .versions import commit_version, current_version

        meta = self._fitted_meta()
        path = Path(path)
        parent = current_version(path) if path.is_file() else None
        meta["state"] = self.method.state()
        written = write_blob(path, meta)
        calibration = self.calibration
        commit_version(
            path,
            "fit" if parent is None else "save",
            None if parent is None else parent["id"],
            written=written,
            n_images=meta["fit"].get("images"),
            level_after=None if calibration is None else calibration.region_threshold,
            far=None if calibration is None else calibration.far,
        )
        self.model_path = path
        self.sha256 = written.sha256
        return path


def _write_rgb(path: Path, rgb: np.ndarray) -> None:
    import cv2

    if not cv2.imwrite(str(path), cv2.cvtColor(np.asarray(rgb, np.uint8), cv2.COLOR_RGB2BGR)):
        raise SpadimError(f"could not write {path}")
