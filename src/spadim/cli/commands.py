"""Command line: make-data, weights, fit, predict, evaluate and the studies (sweeps, layer-select, reproduce).

Bad input ends with one line on stderr and exit code 2. Results are written to a
staging folder first and moved into ``--out`` only when the command succeeds, so a
failed run never overwrites earlier results.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from pathlib import Path


from spadim import __version__, inspect
from spadim.data.guard import DEFAULT_MAX_PIXELS, set_max_pixels
from spadim.run.calibration import DEFAULT_PIXEL_FAR
from spadim.run import evaluate
from spadim.studies import layerselect
from spadim.studies import layersweep
from spadim.studies import masksweep
from spadim.studies import reproduce
from spadim.features.backbone import ARCHS, load_backbone, locate, weights_report
from .args import (
    add_common,
    add_mask_args,
    add_plain_args,
    check_args,
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
from spadim.masks.keypoints import DETECTORS, available_detectors
from spadim.run.session import (
    check_multiplier,
    progress,
    say,
)
from spadim.data.embedded.dataset import make_dataset


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
        archs = parse_list(
            a.first, "architecture", "--first", ARCHS, example="wide_resnet50_2,resnet50_caffe"
        )
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
        a.methods,
        a.classes,
        a.object_mask,
        cfg,
        candidates,
        r,
        a.examples,
        recorded_command(a),
        far,
        a.folds,
    )


def cmd_fit(a) -> None:
    (method_name,) = parse_methods(a.method)
    inspect.fit_model(
        a.data, a.out, settings_from(a), method_name, a.far, a.folds, a.refs, say, progress, a.pixel_far
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
    inspector = inspect.Inspector.load(a.model, a.weights, a.batch_size, object_mask)
    point = inspector.operating_point(a.threshold, a.far)
    say(inspector.extractor.weights.describe())
    for warning in inspector.warnings(point):
        say(f"warning: {warning}")
    summary = inspect.predict_paths(
        inspector, paths, a.out, point, a.min_area, a.save_maps, a.batch_size, progress, object_mask
    )
    rate = summary["new"] / summary["seconds"] if summary["seconds"] > 0 else float("nan")
    say(
        f"{summary['images']} image(s) in {a.out}/ ({summary['defect']} defect, {summary['ok']} ok; "
        f"{summary['new']} new at {rate:.1f} images/s, {summary['resumed_after']} from an earlier run): "
        f"predictions.csv/.jsonl, masks/, heatmaps/, overlays/, colorbar.png"
    )


def cmd_layer_sweep(a) -> None:
    layersweep.run(settings_from(a), a.data, a.out, a.methods, a.classes, recorded_command(a))


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
    )


def cmd_serve(a) -> None:
    from spadim import serve  # FastAPI and uvicorn load for this command only

    if not a.max_upload_mb > 0:
        raise SpadimError(f"--max-upload-mb must be a positive size in MB (got {a.max_upload_mb})")
    set_max_pixels(a.max_pixels)
    api_key = a.api_key or os.environ.get("SPADIM_API_KEY") or None
    listener = serve.bind(a.host, a.port)  # a port in use fails before the models take seconds to load
    try:
        inspectors = serve.load_inspectors(a.models, a.weights)
        max_upload_bytes = round(a.max_upload_mb * (1 << 20))
        serve.serve(
            inspectors, max_upload_bytes=max_upload_bytes, listener=listener, say=say, api_key=api_key
        )
    finally:
        listener.close()


def cmd_mask_sweep(a) -> None:
    detectors = parse_detectors(a.detectors)
    rs = parse_multipliers(a.multipliers)
    show_r = check_multiplier(a.show_multiplier, "--show-multiplier")
    learned = [d for d in detectors if d in LEARNED]
    cfgs = {d: mask_config(a, d) for d in detectors if d not in LEARNED}
    candidates = {d: mask_config(a, d) for d in available_detectors()} if "auto" in learned else {}
    masksweep.run(
        settings_from(a),
        a.data,
        a.out,
        cfgs,
        a.methods,
        a.classes,
        rs,
        show_r,
        a.examples,
        recorded_command(a),
        learned,
        candidates,
    )


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
    reproduce.run(s, data, a.out, cfgs, a.methods, a.classes, rs, recorded_command(a), auto)


# ---------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="spadim", description=__doc__.splitlines()[0])
    ap.add_argument("--version", action="version", version=f"spadim {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-data", help="generate the embedded default data set (MVTec AD layout)")
    p.add_argument("out", type=Path, nargs="?", default=Path("data/spadim-toy"))
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_make_data)

    p = sub.add_parser(
        "weights", help="list each backbone's ImageNet checkpoint, or check one (exit 2 if none)"
    )
    p.add_argument("--arch", default=None, choices=ARCHS, help="check (and download if needed) this one")
    p.add_argument("--first", default=None, metavar="ARCH,ARCH", help="print the first arch with weights")
    p.add_argument("--weights", default=None, help="checkpoint file or folder to check")
    p.set_defaults(func=cmd_weights)

    p = sub.add_parser(
        "evaluate",
        help="fit and evaluate methods on one class or all classes of a root, "
        "or on plain folders (--train/--test)",
    )
    p.add_argument(
        "data",
        type=Path,
        nargs="?",
        default=None,
        help="MVTec AD root or one class folder (or give --train and --test instead)",
    )
    p.add_argument("--classes", default=None, help="comma-separated class names (default: all)")
    p.add_argument("--methods", default="spade,padim,patchcore")
    p.add_argument("--out", type=Path, default=Path("runs/evaluate"))
    p.add_argument("--examples", type=int, default=4, help="heatmap figures per class (default: %(default)s)")
    p.add_argument(
        "--far",
        type=float,
        default=inspect.DEFAULT_FAR,
        help="calibrate each method as fit does at this false-alarm rate and score the test set at "
        "its decisions beside the best threshold with as few false alarms (default: %(default)s)",
    )
    p.add_argument(
        "--folds",
        type=int,
        default=inspect.DEFAULT_FOLDS,
        help="calibration folds for a method without leave-one-out (%(default)s)",
    )
    p.add_argument("--no-operating-point", action="store_true", help="skip the calibration and its table")
    add_plain_args(p)
    add_common(p, frame="whole", auto=True)  # fit's defaults; reproduce keeps the papers' crop and layers
    add_mask_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("fit", help="fit and calibrate one method on good images; save the model")
    p.add_argument(
        "data",
        type=Path,
        help="an MVTec class folder (uses train/good) or any folder of good images (recursive)",
    )
    p.add_argument("--method", default="patchcore", help="spade, padim or patchcore (default: %(default)s)")
    p.add_argument("--out", type=Path, required=True, help="model file to write")
    p.set_defaults(out_is_file=True)
    p.add_argument(
        "--far",
        type=float,
        default=inspect.DEFAULT_FAR,
        help="target false-alarm rate on normal images for the stored thresholds (default: %(default)s)",
    )
    p.add_argument(
        "--folds",
        type=int,
        default=inspect.DEFAULT_FOLDS,
        help="calibration folds for a method without leave-one-out; SPADE, PaDiM and PatchCore "
        "are calibrated leave-one-out (default: %(default)s)",
    )
    p.add_argument(
        "--pixel-far",
        type=float,
        default=DEFAULT_PIXEL_FAR,
        help="share of normal pixels allowed above the defect-mask threshold (default: %(default)s)",
    )
    p.add_argument("--refs", type=int, default=3, help="normal images kept for object masks at predict time")
    add_common(p, frame="whole", auto=True)
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser(
        "calibrate", help="recalibrate a model's thresholds on held-out good images (no refit)"
    )
    p.add_argument("model", type=Path)
    p.add_argument("images", type=Path, help="folder of good images the model was not fitted on (recursive)")
    p.add_argument(
        "--far", type=float, default=inspect.DEFAULT_FAR, help="target false-alarm rate (%(default)s)"
    )
    p.add_argument(
        "--pixel-far",
        type=float,
        default=DEFAULT_PIXEL_FAR,
        help="share of normal pixels allowed above the defect-mask threshold (default: %(default)s)",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="model file to write (default: update MODEL in place)"
    )
    p.add_argument(
        "--weights", default=None, help="checkpoint the model was fitted with (default lookup as in fit)"
    )
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser(
        "predict",
        help="decide ok/defect for new images with a fitted model: predictions.csv/.jsonl, "
        "defect masks, heatmaps, overlays (streamed, resumable)",
    )
    p.add_argument("model", type=Path)
    p.add_argument("images", type=Path, nargs="+", help="image files or folders (recursive)")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("runs/predict"),
        help="output folder; a rerun with the same folder resumes (default: %(default)s)",
    )
    p.add_argument(
        "--weights", default=None, help="checkpoint the model was fitted with (default lookup as in fit)"
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="region level: an image is a defect when a region of --min-area lies above it "
        "(default: the calibrated one)",
    )
    p.add_argument(
        "--far",
        type=float,
        default=None,
        help="false-alarm rate: thresholds from the model's calibration at this rate",
    )
    p.add_argument(
        "--min-area",
        type=float,
        default=None,
        help="smallest defect region, as a fraction of the image area (default: the calibrated "
        "one, 0.001; another value voids the false-alarm promise)",
    )
    p.add_argument("--save-maps", action="store_true", help="also save each raw anomaly map (maps/*.npy)")
    add_mask_args(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "serve",
        help="serve fitted models over HTTP: a JSON API (/predict, /models, "
        "/health) and a page at / to drop images on",
    )
    p.add_argument("models", type=Path, nargs="+", help="model files; clients pick one by its file stem")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="default: %(default)s; 0 lets the OS pick")
    p.add_argument(
        "--weights", default=None, help="checkpoint the models were fitted with (default lookup as in fit)"
    )
    p.add_argument(
        "--max-upload-mb", type=float, default=20, help="largest image accepted (default: %(default)s)"
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help="largest image accepted, in declared pixels, judged from the header before decoding "
        "(default: %(default)s); two such images may be decoded at once",
    )
    p.add_argument(
        "--api-key",
        default=None,
        help="require this key (header X-API-Key or Authorization: Bearer) on every call but "
        "/health and the page (default: $SPADIM_API_KEY; none)",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("mask-sweep", help="proposal 1: detector suitability and outside-multiplier sweep")
    p.add_argument("data", type=Path, help="MVTec AD root or one class folder")
    p.add_argument("--classes", default=None)
    p.add_argument("--methods", default="spade,padim")
    p.add_argument("--detectors", default=",".join(DETECTORS), help="default: %(default)s")
    p.add_argument(
        "--multipliers",
        default=",".join(str(r) for r in masksweep.DEFAULT_MULTIPLIERS),
        help="default: %(default)s",
    )
    p.add_argument(
        "--show-multiplier",
        type=float,
        default=0.6,
        help="r used in the example pictures (default: %(default)s)",
    )
    p.add_argument("--examples", type=int, default=4)
    p.add_argument("--out", type=Path, default=Path("runs/mask-sweep"))
    add_common(p)
    add_mask_args(p, sweep=True)
    p.set_defaults(func=cmd_mask_sweep)

    p = sub.add_parser(
        "layer-sweep", help="proposal 2: all 15 layer combinations for SPADE and PaDiM (resumable)"
    )
    p.add_argument("data", type=Path, help="MVTec AD root or one class folder")
    p.add_argument("--classes", default=None)
    p.add_argument("--methods", default="spade,padim")
    p.add_argument("--out", type=Path, default=Path("runs/layer-sweep"))
    add_common(p, layers=False)
    p.set_defaults(func=cmd_layer_sweep)

    p = sub.add_parser(
        "layer-select",
        help="--layers auto per class from normal images, and its regret "
        "against the best subset on the real test set",
    )
    p.add_argument("data", type=Path, help="MVTec AD root or one class folder")
    p.add_argument("--classes", default=None)
    p.add_argument("--methods", default="spade,padim")
    p.add_argument(
        "--sweep",
        type=Path,
        default=None,
        help="layer-sweep --out folder whose per_class results "
        "give the real AUPR of every subset (default: computed here)",
    )
    p.add_argument("--no-timing", action="store_true", help="skip the timed plain evaluate of each class")
    p.add_argument("--out", type=Path, default=Path("runs/layer-select"))
    add_common(p, layers=False)
    p.set_defaults(func=cmd_layer_select)

    p = sub.add_parser(
        "reproduce", help="the study in one run: Table 1, proposals 1 and 2, report.html (resumable)"
    )
    p.add_argument(
        "data",
        type=Path,
        nargs="?",
        default=None,
        help=f"MVTec AD root or class folder (default: {SHARED_SUBSET} if present, else {TOY})",
    )
    p.add_argument("--classes", default=None)
    p.add_argument("--methods", default="spade,padim")
    p.add_argument(
        "--detectors", default=",".join(DETECTORS), help="proposal 1 detectors; '' skips (%(default)s)"
    )
    p.add_argument(
        "--multipliers",
        default=",".join(str(r) for r in reproduce.DEFAULT_MULTIPLIERS),
        help="default: %(default)s",
    )
    p.add_argument("--out", type=Path, default=Path("runs/reproduce"))
    add_common(p)
    add_mask_args(p, sweep=True)
    p.set_defaults(func=cmd_reproduce)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    a.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        check_args(a)
        a.func(a)
    except SpadimError as exc:
        print(f"spadim: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # unwritable output, full disk, ...: one line, not a traceback
        print(
            f"spadim: error: {exc.strerror or exc} ({exc.filename}): check the path and its permissions",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("spadim: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
