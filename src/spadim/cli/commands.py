"""Command line: make-data, weights, fit, predict, evaluate and the studies (sweeps, layer-select, reproduce).

Bad input ends with one line on stderr and exit code 2. Results are written to a
staging folder first and moved into ``--out`` only when the command succeeds, so a
failed run never overwrites earlier results.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
from pathlib import Path


from spadim import inspect
from spadim.data.guard import set_max_pixels
from spadim.run import evaluate
from spadim.studies import layerselect
from spadim.studies import layersweep
from spadim.studies import masksweep
from spadim.studies import reproduce
from spadim.features.backbone import ARCHS, load_backbone, locate, weights_report
from .args import (
    check_multiplier,
    evaluation_data,
    mask_config,
    parse_detectors,
    parse_multipliers,
    settings_from,
)
from spadim.data.folders import find_images
from spadim.data.mvtec import check_images
from spadim.errors import SpadimError
from spadim.lists import parse_list
from spadim.methods.registry import parse_methods
from spadim.masks.auto import LEARNED
from spadim.masks.keypoints import available_detectors
from spadim.data.embedded.dataset import make_dataset
from .line import record_target, serve_stores
from .output import TERMINAL, progress, say


# ---------------------------------------------------------------- commands
def cmd_make_data(a) -> None:
    root = make_dataset(a.out, seed=a.seed, progress=say)
    print(root)


def cmd_weights(a) -> None:
    """Without --arch: where every architecture's weights are, or why none were found.

    With --arch: the checkpoint that would be used (downloaded if needed); exit 2 when none.
    With --first: the first listed architecture whose weights exist or download (for `make demo`).
    """
    if a.first:
        archs = parse_list(a.first, "architecture", "first", ARCHS, example="wide_resnet50_2,resnet50_caffe")
        reasons = []
        for arch in archs:
            try:
                locate(arch, a.weights)
            except SpadimError as exc:
                reasons.append(str(exc))
                continue
            print(arch)
            return
        raise SpadimError(f"no weights for any of {', '.join(archs)}: " + " | ".join(reasons))
    if a.arch:
        _, w = load_backbone(a.arch, a.weights)
        print(w.describe())
        return
    for arch, path, why in weights_report(a.weights):
        print(f"{arch:<16} {'ok  ' if path else 'none'} {why}")


def cmd_evaluate(a) -> None:
    learned = a.object_mask in LEARNED
    cfg = mask_config(a, a.object_mask) if a.object_mask and not learned else None
    candidates = {d: mask_config(a, d) for d in available_detectors()} if a.object_mask == "auto" else {}
    r = check_multiplier(a.outside_multiplier)
    data = evaluation_data(a)
    far = None if a.no_operating_point else a.far
    evaluate.run(
        settings_from(a),
        data,
        a.out,
        methods=a.methods,
        classes=a.classes,
        object_mask=a.object_mask,
        cfg=cfg,
        candidates=candidates,
        r=r,
        examples=a.examples,
        command=recorded_command(a),
        far=far,
        folds=a.folds,
        per_class=_class_runner(a),
        output=TERMINAL,
    )


def _class_runner(a):
    if a.ray is None:
        return None
    from spadim.scale import ray_jobs

    return ray_jobs.class_runner(a.ray, a.workers)


def cmd_fit(a) -> None:
    (method_name,) = parse_methods(a.method, "method")
    if a.per_class:
        runner = None
        if a.ray is not None:
            from spadim.scale import ray_jobs

            runner = ray_jobs.fit_runner(a.ray, a.workers)
        options = {"far": a.far, "folds": a.folds, "refs": a.refs, "pixel_far": a.pixel_far}
        inspect.fit_classes(a.data, a.out, settings_from(a), method_name, a.classes, runner, say, **options)
        return
    if a.ray is not None or a.classes:
        raise SpadimError(
            "--ray and --classes fit one model per class: add --per-class (--out is then a folder)"
        )
    inspect.fit_model(
        a.data, a.out, settings_from(a), method_name, a.far, a.folds, a.refs, say, pixel_far=a.pixel_far
    )


def cmd_calibrate(a) -> None:
    inspect.calibrate_model(a.model, a.images, a.far, a.out, a.weights, say, a.pixel_far)


def _expand_images(items: list[Path]) -> list[Path]:
    """Files as given, folders searched recursively (an empty folder is an error naming it)."""
    paths = []
    for p in items:
        if p.is_dir():
            paths += find_images(p)
        elif p.is_file():
            paths.append(p)
        else:
            raise SpadimError(f"input {p} does not exist: give image files or folders")
    return paths


def cmd_predict(a) -> None:
    if a.object_mask in LEARNED:
        raise SpadimError(
            f"predict --object-mask {a.object_mask} is not supported (it needs the class's training "
            f"features): use orb, akaze or brisk, or spadim evaluate"
        )
    object_mask = (
        inspect.ObjectMask(mask_config(a, a.object_mask), check_multiplier(a.outside_multiplier))
        if a.object_mask
        else None
    )
    paths = _expand_images(a.images)
    check_images(paths)  # every file decodes before the backbone loads
    inspector = inspect.Inspector.load(
        a.model,
        weights=a.weights,
        batch_size=a.batch_size,
        object_mask=object_mask,
        runtime=a.runtime,
        device=a.device,
    )
    point = inspector.operating_point(a.threshold, a.far)
    say(inspector.backbone_text())
    for warning in inspector.warnings(point):
        say(f"warning: {warning}")
    runner = None
    if a.ray is not None:
        from spadim.scale import ray_jobs

        ray_jobs.connect(a.ray)
        runner = ray_jobs.ray_runner(a.model, a.weights, a.runtime, a.device, a.batch_size, a.workers)
    store = record_target(a, a.model)
    if store is not None:
        say(f"recording every decision in {store.target}")
    summary = inspect.predict_paths(
        inspector,
        paths,
        a.out,
        point,
        a.min_area,
        a.save_maps,
        a.batch_size,
        progress,
        object_mask,
        runner,
        store=store,
    )
    rate = summary["new"] / summary["seconds"] if summary["seconds"] > 0 else float("nan")
    say(
        f"{summary['images']} image(s) in {a.out}/ ({summary['defect']} defect, {summary['ok']} ok; "
        f"{summary['new']} new at {rate:.1f} images/s, {summary['resumed_after']} from an earlier run): "
        f"predictions.csv/.jsonl, masks/, heatmaps/, overlays/, colorbar.png"
    )


def cmd_layer_sweep(a) -> None:
    layersweep.run(settings_from(a), a.data, a.out, a.methods, a.classes, recorded_command(a), TERMINAL)


def cmd_layer_select(a) -> None:
    layerselect.run(
        settings_from(a),
        a.data,
        a.out,
        a.methods,
        a.classes,
        a.sweep,
        recorded_command(a),
        time_evaluate=not a.no_timing,
        output=TERMINAL,
    )


def cmd_serve(a) -> None:
    from spadim import serve  # FastAPI and uvicorn load for this command only

    if not a.max_upload_mb > 0:
        raise SpadimError(f"--max-upload-mb must be a positive size in MB (got {a.max_upload_mb})")
    set_max_pixels(a.max_pixels)
    api_key = a.api_key or os.environ.get("SPADIM_API_KEY") or None
    listener = serve.bind(a.host, a.port)  # a port in use fails before the models take seconds to load
    try:
        inspectors = serve.load_inspectors(a.models, a.weights, a.runtime, a.device)
        if a.ray is not None:
            from spadim.scale import ray_serve

            ray_serve.deploy(inspectors, a.ray, a.workers, a.weights, a.device)
        max_upload_bytes = round(a.max_upload_mb * (1 << 20))
        stores = serve_stores(a, inspectors)
        serve.serve(
            inspectors,
            max_upload_bytes=max_upload_bytes,
            listener=listener,
            say=say,
            api_key=api_key,
            stores=stores,
        )
    finally:
        listener.close()


def cmd_export(a) -> None:
    from spadim.export.onnx import export_onnx  # onnx loads for this command only

    export_onnx(a.model, a.out, a.weights, say)


def cmd_mask_sweep(a) -> None:
    detectors = parse_detectors(a.detectors)
    rs = parse_multipliers(a.multipliers)
    show_r = check_multiplier(a.show_multiplier, "--show-multiplier")
    learned = [d for d in detectors if d in LEARNED]
    cfgs = {d: mask_config(a, d) for d in detectors if d not in LEARNED}
    candidates = {d: mask_config(a, d) for d in available_detectors()} if "auto" in learned else {}
    options = masksweep.SweepOptions(
        methods=a.methods,
        classes=a.classes,
        multipliers=tuple(rs),
        show_r=show_r,
        examples=a.examples,
        command=recorded_command(a),
        learned=tuple(learned),
        candidates=candidates,
    )
    masksweep.run(settings_from(a), a.data, a.out, cfgs, options, TERMINAL)


SHARED_SUBSET = Path("../shared/data/mvtec_ad_subset")
TOY = Path("data/spadim-toy")


def default_data() -> Path:
    """The real MVTec subset beside the checkout when present, else the embedded data set."""
    if SHARED_SUBSET.is_dir():
        return SHARED_SUBSET
    say(f"{SHARED_SUBSET} not found: using the embedded data set {TOY}")
    return make_dataset(TOY, progress=say)


def recorded_command(a) -> str:
    """The command as typed, naming the weights actually found when the user did not."""
    words = ["spadim", *a.argv]
    if a.weights is None:
        words += ["--weights", str(locate(a.arch))]
    return shlex.join(words)


def cmd_reproduce(a) -> None:
    detectors = parse_detectors(a.detectors) if a.detectors else []
    if set(detectors) & set(LEARNED):
        raise SpadimError(
            "reproduce --detectors takes keypoint detectors only; use spadim mask-sweep for features/auto"
        )
    rs = parse_multipliers(a.multipliers)
    cfgs = {d: mask_config(a, d) for d in detectors}
    data = a.data or default_data()
    s = settings_from(a)
    auto = s.auto_layers  # Table 1 keeps the study's layers; the auto choice is recorded beside it
    s = dataclasses.replace(s, layers=(1, 2, 3), layers_given=False) if auto else s  # each method its own
    reproduce.run(s, data, a.out, cfgs, a.methods, a.classes, rs, recorded_command(a), auto, TERMINAL)


# ---------------------------------------------------------------- entry point
