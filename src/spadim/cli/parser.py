"""``spadim``'s argument parser and entry point: every subcommand, its flags and its handler in
:mod:`.commands`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


import spadim
from spadim import __version__, inspect
from spadim.data.guard import DEFAULT_MAX_PIXELS
from spadim.decision.conformal import DEFAULT_PIXEL_FAR
from spadim.studies import masksweep
from spadim.studies import reproduce
from spadim.features.backbone import ARCHS
from spadim.inspect.estimator import FitOptions, default_method
from spadim.methods.registry import METHODS
from .args import (
    add_common,
    add_mask_args,
    add_plain_args,
    add_ray,
    add_runtime,
    check_args,
)
from .errors import command_flags, with_flags
from spadim.errors import SpadimError
from spadim.masks.keypoints import DETECTORS


# ---------------------------------------------------------------- commands
from .line import add_line_commands, add_record_args
from .commands import (
    SHARED_SUBSET,
    TOY,
    cmd_calibrate,
    cmd_evaluate,
    cmd_export,
    cmd_fit,
    cmd_layer_select,
    cmd_layer_sweep,
    cmd_make_data,
    cmd_mask_sweep,
    cmd_predict,
    cmd_reproduce,
    cmd_serve,
    cmd_weights,
)


#: ``spadim --help``'s description: the package's docstring, whole, as one paragraph
DESCRIPTION = " ".join(spadim.__doc__.split())


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="spadim", description=DESCRIPTION)
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
    p.add_argument("--methods", default=",".join(METHODS), help="default: %(default)s")
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
    # fit's defaults; reproduce keeps the papers' crop and layers
    add_common(p, frame=FitOptions.frame, auto=True)
    add_ray(p, "evaluate the classes as Ray tasks, one per class")
    add_mask_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("fit", help="fit and calibrate one method on good images; save the model")
    p.add_argument(
        "data",
        type=Path,
        help="an MVTec class folder (uses train/good) or any folder of good images (recursive)",
    )
    p.add_argument(
        "--method",
        default=default_method().name,
        help=f"{', '.join(METHODS)} (default: %(default)s)",
    )
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
    p.add_argument(
        "--refs",
        type=int,
        default=FitOptions.refs,
        help="normal images kept for object masks at predict time (default: %(default)s)",
    )
    p.add_argument(
        "--per-class",
        action="store_true",
        help="DATA is an MVTec AD root: fit one model per class into the folder --out (CLASS.pt)",
    )
    p.add_argument("--classes", default=None, help="with --per-class: the classes to fit (default: all)")
    add_ray(p, "with --per-class, fit each class as one Ray task")
    add_common(p, frame=FitOptions.frame, auto=True)
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
    add_runtime(p)
    add_ray(p, "predict on Ray Data workers, each loading the model once")
    add_mask_args(p)
    add_record_args(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "serve",
        help="serve fitted models over HTTP: a JSON API (/predict, /models, "
        "/health) and a page at / to drop images on",
    )
    p.add_argument(
        "models",
        type=Path,
        nargs="+",
        help="model files (or ONNX exports with --runtime onnx); clients pick one by its file stem",
    )
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
    add_runtime(p)
    add_ray(p, "score on Ray Serve replicas (--workers of them) with dynamic batching")
    add_record_args(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "export",
        help="write a fitted model as one ONNX graph (image tensor -> anomaly map, image score) with its "
        "calibration and preprocessing in the metadata",
    )
    p.add_argument("model", type=Path, help="model file written by spadim fit")
    p.add_argument("--format", default="onnx", choices=("onnx",), help="default: %(default)s")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder to write; an earlier export there is replaced, anything else is refused",
    )
    p.add_argument(
        "--weights", default=None, help="checkpoint the model was fitted with (default lookup as in fit)"
    )
    p.set_defaults(func=cmd_export)

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
    add_line_commands(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    a.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        check_args(a)
        code = a.func(a)
    except SpadimError as exc:
        print(f"spadim: error: {with_flags(str(exc), command_flags(ap, a))}", file=sys.stderr)
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
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
