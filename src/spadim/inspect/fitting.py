"""``spadim fit`` and ``spadim calibrate`` as functions: a calibrated model file from good images.

Fit holds the training features once: the optional layer choice (``--layers auto``), the
out-of-fold calibration and the final fit on all images all reuse them, so every image passes the
backbone once.
"""

from __future__ import annotations

import json
import time
from pathlib import Path


from spadim.data.folders import find_images, training_images
from spadim.data.mvtec import check_images
from spadim.errors import SpadimError
from spadim.features.extractor import ALL_COMBOS
from spadim.run.layerchoice import select_layers
from spadim.run.modelfile import save_model, write_blob
from spadim.run.pipeline import Settings, make_extractor, reference_indices, score_stream
from spadim.run.calibration import (
    DEFAULT_FAR,
    DEFAULT_FOLDS,
    DEFAULT_PIXEL_FAR,
    Calibration,
    calibrate_out_of_fold,
    check_far,
    summarize,
)
from .inspector import Inspector


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
) -> dict:
    """Fit, calibrate out-of-fold, refit on all images, save. Returns what was done and measured."""
    check_far(far)
    if folds < 2:
        raise SpadimError(f"--folds must be >= 2 (got {folds}): each fold is scored by a model of the others")
    name, paths = training_images(folder)  # MVTec train/good, or any folder
    check_images(paths)  # a bad file fails now, not after the backbone has run
    if len(paths) < 2:
        raise SpadimError(
            f"{folder} holds {len(paths)} good image(s): calibration needs at least 2 (add images)"
        )
    extractor = make_extractor(
        settings, progress, [method_name], ALL_COMBOS if settings.auto_layers else None
    )
    say(extractor.weights.describe())
    started = time.perf_counter()
    train = extractor(paths, f"{name} train")
    seconds = {"features": time.perf_counter() - started}
    selection = None
    layers = None
    if settings.auto_layers:
        mark = time.perf_counter()
        selection = select_layers(extractor, train, settings, method_name)
        layers = selection.chosen
        seconds["layer_choice"] = time.perf_counter() - mark
        say(
            f"--layers auto chose {selection.name} for {method_name} (synthetic pixel AUPR {selection.aupr:.3f})"
        )
    layers = tuple(layers or settings.method_layers(method_name))
    mark = time.perf_counter()
    calibration = calibrate_out_of_fold(method_name, settings, layers, train, far, folds, pixel_far)
    seconds["calibration"] = time.perf_counter() - mark
    mark = time.perf_counter()
    method = settings.method(method_name, layers).fit(train)
    seconds["fit"] = time.perf_counter() - mark
    refs_frames = train.images[reference_indices(len(train), refs)]
    info = {
        "images": len(train),
        "folder": str(folder),
        "seconds": seconds,
        "layer_choice": selection.to_json() if selection else None,
    }
    save_model(out, method, extractor.weights, settings.pre, name, refs_frames, calibration.to_json(), info)
    if selection is not None:  # the audit trail of the choice, readable without torch
        Path(f"{out}.layers.json").write_text(json.dumps(selection.to_json(), indent=1))
    if calibration.warning():
        say(f"warning: {calibration.warning()}")
    say(
        f"fitted {method_name} on {len(train)} images of {name} in {sum(seconds.values()):.1f} s "
        f"(calibration {seconds['calibration']:.1f} s): image threshold {calibration.image_threshold:.4g}, "
        f"pixel threshold {calibration.pixel_threshold:.4g} at far={far:g} -> {out}"
    )
    return {"calibration": calibration, "seconds": seconds, "layers": layers, "selection": selection}


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
    inspector = Inspector.load(model, weights)
    name = inspector.method.name
    _, maps, scores = score_stream(inspector.extractor, paths, {name: inspector.method}, 32, inspector.pre.crop,
                                   "calibrate")
    maps, scores = list(maps[name]), scores[name]
    calibration = Calibration(
        far,
        "held-out folder",
        0,
        len(paths),
        **summarize(scores, maps),
        pixel_far=pixel_far,
        source=f"{len(paths)} held-out good images from {folder}",
    )
    blob = inspector.meta  # the model file as loaded once above (its tensors are written back unchanged)
    blob["calibration"] = calibration.to_json()
    blob["format_version"] = 3
    write_blob(Path(out or model), blob)
    if calibration.warning():
        say(f"warning: {calibration.warning()}")
    say(
        f"recalibrated {model} on {len(paths)} good images: image threshold {calibration.image_threshold:.4g}, "
        f"pixel threshold {calibration.pixel_threshold:.4g} at far={far:g} -> {out or model}"
    )
    return calibration
