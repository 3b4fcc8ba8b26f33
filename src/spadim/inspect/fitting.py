"""``spadim fit`` and ``spadim calibrate`` as functions: a calibrated model file from good images.

Fit holds the training features once: the optional layer choice (``--layers auto``), the
out-of-fold calibration and the final fit on all images all reuse them, so every image passes the
backbone once.
"""

from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path

import numpy as np

from spadim.data.folders import find_images, training_images
from spadim.data.mvtec import check_images, find_classes
from spadim.errors import SpadimError
from spadim.features.extractor import ALL_COMBOS, FeatureSet, combo_name
from spadim.report.fitreport import write_fit_report
from spadim.report.tables import json_ready
from spadim.run.layerchoice import select_layers
from spadim.run.modelfile import model_blob, write_blob
from spadim.run.pipeline import Settings, make_extractor, reference_indices, score_stream
from spadim.decision.audit import AUDIT_Z, audit
from spadim.decision.conformal import (
    DEFAULT_FAR,
    DEFAULT_PIXEL_FAR,
    Calibration,
    check_far,
    far_interval,
    region_scores,
    summarize,
)
from spadim.run.calibration import DEFAULT_FOLDS, calibrate_held_out, check_image_count
from spadim.features.backbone import file_sha256
from spadim.record import sha256_bytes
from .inspector import Inspector
from .stages import Stages
from .versions import commit_version, ensure_logged, one_writer


def fit_features(
    train: FeatureSet,
    extractor,
    settings: Settings,
    method_name: str,
    *,
    far: float = DEFAULT_FAR,
    folds: int = DEFAULT_FOLDS,
    refs: int = 3,
    pixel_far: float = DEFAULT_PIXEL_FAR,
    class_name: str = "good",
    say=print,
    stages: Stages | None = None,
) -> dict:
    """Choose the layers (when 'auto'), fit, calibrate held-out and audit, in memory: the model file's
    contents (``blob``) and what was done and measured. Shared by ``spadim fit`` and
    :meth:`Inspector.fit`."""
    stages = stages or Stages(say, bars=False)
    selection = None
    layers = None
    if settings.auto_layers:
        with stages("layer choice", steps=len(ALL_COMBOS), unit="step") as stage:
            selection = select_layers(extractor, train, settings, method_name, tick=stage.advance)
            stage.summary = (
                f"layers auto chose {selection.name} for {method_name} "
                f"(synthetic pixel AUPR {selection.aupr:.3f})"
            )
        layers = selection.chosen
    layers = tuple(layers or settings.method_layers(method_name))
    with stages("fit") as stage:
        method = settings.method(method_name, layers).fit(train)
        stage.summary = f"{method_name} on layers {combo_name(layers)}"
    with stages("calibration") as stage:
        calibration, held = calibrate_held_out(
            method_name, settings, layers, train, far, folds, pixel_far, fitted=method
        )
        stage.summary = f"{calibration.how}, region level {calibration.region_threshold:.4g}"
    names = [str(p) for p in train.paths]
    with stages("audit") as stage:
        suspects = audit(held.region_scores, names, far)
        stage.summary = f"{len(suspects)} of {len(names)} images stand apart"
    seconds = dict(stages.seconds)
    training_sha256 = [image_sha256(path, frame) for path, frame in zip(train.paths, train.images)]
    info = {
        "images": len(train),
        "seconds": seconds,
        "layer_choice": selection.to_json() if selection else None,
        "audit": suspects,
        "held_sha256": sorted(set(training_sha256)),
        # where each training image was read from and its content, so a take-out can refit without one
        "training_files": [os.path.abspath(p) if Path(p).is_file() else str(p) for p in train.paths],
        "training_sha256": training_sha256,
        "held_out": {
            "images": names,
            "region_scores": held.region_scores.tolist(),
            "image_scores": held.image_scores.tolist(),
        },
    }
    refs_frames = train.images[reference_indices(len(train), refs)]
    blob = model_blob(
        method, extractor.weights, settings.backbone.pre, class_name, refs_frames, calibration.to_json(), info
    )
    return {
        "method": method,
        "blob": blob,
        "calibration": calibration,
        "seconds": seconds,
        "layers": layers,
        "selection": selection,
        "audit": suspects,
        "held_out": held,
    }


def image_sha256(path: Path, frame) -> str:
    """The SHA-256 that names an image the model holds: its file's, or its frame's for an array."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    return sha256_bytes(np.ascontiguousarray(frame).tobytes())


def fit_model(
    folder: Path,
    out: Path,
    settings: Settings,
    method_name: str,
    far: float = DEFAULT_FAR,
    folds: int = DEFAULT_FOLDS,
    refs: int = 3,
    say=print,
    progress=None,
    pixel_far: float = DEFAULT_PIXEL_FAR,
    bars: bool | None = None,
) -> dict:
    """``spadim fit``: fit, calibrate held-out, save ``out`` with its audit, layer choice and report.

    Each stage (features, layer choice, fit, calibration, audit, report) says one line with its time as
    it ends; on a terminal (``bars=None``: when stderr is one) each also shows a progress bar. A given
    ``progress`` (the extractor's batch hook) replaces the features' bar."""
    check_far(far)
    if folds < 2:
        raise SpadimError(f"folds must be >= 2 (got {folds}): each fold is scored by a model of the others")
    name, paths = training_images(folder)  # MVTec train/good, or any folder
    check_images(paths)  # a bad file fails now, not after the backbone has run
    check_image_count(len(paths), [method_name], str(folder), choose_layers=settings.auto_layers)
    stages = Stages(say, bars)
    extractor = make_extractor(
        settings, progress or stages.progress, [method_name], ALL_COMBOS if settings.auto_layers else None
    )
    say(extractor.weights.describe())
    with stages("features", unit="img", steps=0) as stage:
        train = extractor(paths, f"{name} train")
        stage.summary = f"{len(train)} images of {name}, layers {combo_name(extractor.layers)}"
    fitted = fit_features(
        train,
        extractor,
        settings,
        method_name,
        far=far,
        folds=folds,
        refs=refs,
        pixel_far=pixel_far,
        class_name=name,
        say=say,
        stages=stages,
    )
    blob, calibration, held, suspects, selection = (
        fitted[k] for k in ("blob", "calibration", "held_out", "audit", "selection")
    )
    with stages("report") as stage:
        seconds = dict(stages.seconds)
        blob["fit"].update(folder=str(folder), seconds=seconds)
        names = blob["fit"]["held_out"]["images"]
        written = write_blob(Path(out), blob)
        if selection is not None:  # the audit trail of the choice, readable without torch
            Path(f"{out}.layers.json").write_text(
                json.dumps(json_ready(selection.to_json()), indent=1, allow_nan=False)
            )
        write_audit_file(out, calibration, blob["fit"])
        commit_version(
            out,
            "fit",
            None,
            written=written,
            n_images=len(train),
            level_after=calibration.region_threshold,
            far=far,
        )
        report = write_fit_report(
            out, method_name, calibration, held, names, train.images, suspects, extractor.weights.banner
        )
        stage.summary = f"{out}, {report}"
    seconds = fitted["seconds"] = dict(stages.seconds)
    low, high = far_interval(len(train), far)
    for line in filter(None, [calibration.warning(), calibration.advice()]):
        say(f"warning: {line}")
    for entry in suspects:
        say(audit_line(entry))
    say(
        f"fitted {method_name} on {len(train)} images of {name} in {sum(seconds.values()):.1f} s "
        f"(calibration {seconds['calibration']:.1f} s, {calibration.how}): region level "
        f"{calibration.region_threshold:.4g} (an image is a defect when a region of at least "
        f"{calibration.min_area:.2%} of it lies above this), regions drawn from {calibration.mask_level:.4g}, "
        f"at far={far:g}; the false-alarm rate of a calibration on {len(train)} images lies in "
        f"[{low:.3f}, {high:.3f}] for 90% of such sets -> {out} (report: {report})"
    )
    return fitted


def write_audit_file(out: Path, calibration: Calibration, fit_info: dict) -> Path:
    """``MODEL.audit.json``: the audit's rule, the images it flagged and every held-out statistic."""
    path = Path(f"{out}.audit.json")
    rule = f"modified z-score of the {calibration.how} region statistic > {AUDIT_Z}"
    content = {"rule": rule, "flagged": fit_info["audit"], **fit_info["held_out"]}
    path.write_text(json.dumps(json_ready(content), indent=1, allow_nan=False))
    return path


def audit_line(entry: dict) -> str:
    """One audit entry as ``fit`` and ``calibrate`` print it."""
    return (
        f"audit: {entry['image']} stands apart from the other good images (region score "
        f"{entry['region_score']:.4g}, robust z {entry['robust_z']:.1f}): a defect filed as good, or a rare "
        f"variant that needs company; without it the region level would be {entry['level_without_it']:.4g} "
        f"instead of {entry['level']:.4g}"
    )


@one_writer
def calibrate_model(
    model: Path,
    folder: Path,
    far: float = DEFAULT_FAR,
    out: Path | None = None,
    weights: str | None = None,
    say=print,
    pixel_far: float = DEFAULT_PIXEL_FAR,
) -> Calibration:
    """Recalibrate a fitted model on held-out good images (never seen in training), without refitting."""
    check_far(far)
    paths = find_images(Path(folder))
    check_images(paths)
    inspector = Inspector.load(model, weights=weights)
    name = inspector.method.name
    frames, maps, scores = score_stream(
        inspector.extractor, paths, {name: inspector.method}, 32, inspector.pre.crop, "calibrate"
    )
    maps, scores = list(maps[name]), scores[name]
    regions = region_scores(maps, frames.shapes, inspector.pre)
    blob = inspector.meta  # the model file as loaded once above (its tensors are written back unchanged)
    held = blob.get("fit", {}).get("images")  # the model holds none of the folder's images
    calibration = Calibration(
        far,
        "held-out folder",
        0,
        len(paths),
        **summarize(scores, maps, regions, None if held is None else [held] * len(paths)),
        pixel_far=pixel_far,
        source=f"{len(paths)} held-out good images from {folder}",
        model_images=held,
    )
    blob["calibration"] = calibration.to_json()
    blob["format_version"] = 3
    target = Path(out or model)
    parent = ensure_logged(
        Path(model), lambda: {"n_images": blob.get("fit", {}).get("images")}, inspector.sha256
    )
    written = write_blob(target, blob)
    commit_version(
        target,
        "calibrate",
        parent["id"],
        written=written,
        n_images=blob.get("fit", {}).get("images"),
        level_before=inspector.calibration.region_threshold if inspector.calibration else None,
        level_after=calibration.region_threshold,
        far=far,
        reason=f"recalibrated on {len(paths)} held-out good images from {folder}",
    )
    if calibration.warning():
        say(f"warning: {calibration.warning()}")
    for entry in audit(regions, [str(p) for p in paths], far):
        say(audit_line(entry))
    say(
        f"recalibrated {model} on {len(paths)} good images: region level {calibration.region_threshold:.4g}, "
        f"regions drawn from {calibration.mask_level:.4g} at far={far:g} -> {out or model}"
    )
    return calibration


def fit_classes(
    root: Path,
    out_dir: Path,
    settings: Settings,
    method_name: str,
    classes: str | None = None,
    runner=None,
    say=print,
    **options,
) -> dict:
    """``spadim fit --per-class``: one model per class of an MVTec AD root, ``out_dir/CLASS.pt``. Every
    class's images are checked before the first fit. ``runner(job, sources)``, when given, yields the
    classes' results in order from elsewhere (one Ray task per class: :mod:`spadim.scale.ray_jobs`);
    ``options`` go to :func:`fit_model`."""
    sources = find_classes(root, classes)
    for source in sources:
        paths = training_images(source)[1]
        check_image_count(len(paths), [method_name], str(source), choose_layers=settings.auto_layers)
        check_images(paths)
    job = partial(_fit_one, out_dir=Path(out_dir), settings=settings, method_name=method_name, **options)
    results = runner(job, sources) if runner else (job(source, say=say) for source in sources)
    fitted = {}
    for source, result in zip(sources, results):
        fitted[source.name] = result
        say(f"{source.name}: {method_name} -> {result['path']}")
    return fitted


def _fit_one(source: Path, out_dir: Path, settings: Settings, method_name: str, say=print, **options) -> dict:
    path = out_dir / f"{source.name}.pt"
    result = fit_model(source, path, settings, method_name, say=say, **options)
    return {"path": str(path), "region_threshold": result["calibration"].region_threshold}
