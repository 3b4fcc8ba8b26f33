"""Command line: make-data, weights, fit, predict, evaluate and the studies (sweeps, layer-select, reproduce).

Bad input ends with one line on stderr and exit code 2. Results are written to a
staging folder first and moved into ``--out`` only when the command succeeds, so a
failed run never overwrites earlier results.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from spadim import __version__
from spadim.run import evaluate
from spadim.studies import layerselect
from spadim.run import layerchoice
from spadim.studies import layersweep
from spadim.studies import masksweep
from spadim.studies import reproduce
from spadim.features.backbone import ARCHS, load_backbone, locate, weights_report
from .args import (
    add_common,
    add_mask_args,
    check_args,
    mask_config,
    parse_detectors,
    parse_multipliers,
    settings_from,
)
from spadim.data.mvtec import IMAGE_EXTS, Preprocess, check_images, list_images, load_class
from spadim.errors import SpadimError
from spadim.features.extractor import FeatureExtractor
from spadim.lists import parse_list
from spadim.methods.registry import parse_methods
from spadim.run.modelfile import load_model, save_model
from spadim.masks.auto import LEARNED
from spadim.masks.keypoints import DETECTORS, available_detectors
from spadim.run.pipeline import (
    fit_methods,
    make_extractor,
    needed_features,
    object_masks,
    reference_indices,
    score_stream,
    suppress_outside,
)
from spadim.report.figures import colorize, overlay, save_rgb
from spadim.run.session import (
    check_multiplier,
    progress,
    say,
    staged,
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
        archs = parse_list(a.first, "architecture", "--first", ARCHS, example="wide_resnet50_2,resnet50_caffe")
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
    evaluate.run(settings_from(a), a.data, a.out, a.methods, a.classes, a.object_mask, cfg, candidates, r,
                 a.examples, recorded_command(a))


def cmd_fit(a) -> None:
    s = settings_from(a)
    (method_name,) = parse_methods(a.method)
    data = load_class(a.data, need_test=False)
    check_images(data.train)  # a bad file fails now, not after the backbone has run
    fx = make_extractor(s, progress, [method_name])
    say(fx.weights.describe())
    t0 = time.perf_counter()
    if s.auto_layers:  # choose from the training images, then refit on all of them (features held once)
        train = fx(data.train, f"{data.name} train")
        sel = layerchoice.select_layers(fx, train, s, method_name)
        method = s.method(method_name, sel.chosen).fit(train)
        say(f"--layers auto chose {sel.name} for {method_name} (synthetic pixel AUPR {sel.aupr:.3f})")
    else:
        fitted, train = fit_methods(fx, data.train, s, [method_name], desc=f"{data.name} train")
        method = fitted[method_name]
    refs = train.images[reference_indices(len(train), a.refs)]
    save_model(a.out, method, fx.weights, s.pre, data.name, refs)
    if s.auto_layers:
        Path(f"{a.out}.layers.json").write_text(json.dumps(sel.to_json(), indent=1))
    say(f"fitted {method_name} on {len(train)} images of {data.name} in {time.perf_counter() - t0:.1f} s -> {a.out}")


def _expand_images(items: list[Path]) -> list[Path]:
    paths = []
    for p in items:
        if p.is_dir():
            found = list_images(p)
            if not found:
                raise SpadimError(f"no images ({', '.join(IMAGE_EXTS)}) in folder {p}: point predict at image files or folders")
            paths += found
        elif p.is_file():
            paths.append(p)
        else:
            raise SpadimError(f"input {p} does not exist: give image files or folders")
    return paths


def cmd_predict(a) -> None:
    method, blob = load_model(a.model)
    bb = blob["backbone"]
    if a.object_mask in LEARNED:
        raise SpadimError(f"predict --object-mask {a.object_mask} is not supported (it needs the class's training "
                          f"features): use orb, akaze or brisk, or spadim evaluate")
    cfg = mask_config(a, a.object_mask) if a.object_mask else None
    r = check_multiplier(a.outside_multiplier)
    if cfg and len(blob["ref_images"]) == 0:
        raise SpadimError(f"model {a.model} holds no reference images, which --object-mask needs: "
                          f"refit it with `spadim fit --refs 3`, or drop --object-mask")
    paths = _expand_images(a.images)
    check_images(paths)
    weights = "random" if bb["source"] == "random" else a.weights
    seed = int(bb["sha256"].removeprefix("random-seed")) if bb["source"] == "random" else 0
    model, w = load_backbone(bb["arch"], weights, seed)
    if w.sha256 != bb["sha256"]:
        raise SpadimError(f"model {a.model} was fitted with {bb['arch']} weights sha256 {bb['sha256'][:12]} but the "
                          f"weights found are {w.sha256[:12]} ({w.source}): pass the same checkpoint with --weights")
    say(w.describe())
    pre = Preprocess(**blob["preprocess"])
    layers, pooled = needed_features([method.name], [method.layers])
    fx = FeatureExtractor(model, w, pre, a.batch_size, None, progress, layers, pooled)
    fs, maps, scores = score_stream(fx, paths, {method.name: method}, max(32, a.batch_size), pre.crop, "predict")
    maps, scores = maps[method.name], scores[method.name]
    warnings = []
    if cfg:
        obj, warnings = object_masks(fs.images, blob["ref_images"].numpy(), cfg)
        maps, scores = suppress_outside(method.name, maps, scores, obj, r)
    vmin, vmax = (a.vmin if a.vmin is not None else float(maps.min())), (a.vmax if a.vmax is not None else float(maps.max()))
    with staged(a.out) as out:
        rows = []
        for i, p in enumerate(paths):
            stem = f"{i:04d}_{p.stem}"
            heat = colorize(maps[i], vmin, vmax)
            save_rgb(out / "heatmaps" / f"{stem}.png", heat)
            save_rgb(out / "overlays" / f"{stem}.png", overlay(fs.images[i], heat))
            rows.append({"image": str(p), "image_score": f"{scores[i]:.6g}", "max_pixel_score": f"{maps[i].max():.6g}",
                         "heatmap": f"heatmaps/{stem}.png"})
        with open(out / "scores.csv", "w", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=list(rows[0]))
            wr.writeheader()
            wr.writerows(rows)
        np.savez_compressed(out / "maps.npz", maps=maps, scores=scores, paths=np.array([str(p) for p in paths]))
        (out / "README.txt").write_text(
            f"{w.describe()}\nmethod {method.name} fitted on class {blob['class_name']}; heatmap colour range "
            f"[{vmin:.4g}, {vmax:.4g}] (score units); raw maps in maps.npz\n"
            + "".join(f"warning: object mask fell back to the full frame: {x}\n" for x in warnings))
    for x in warnings:
        say(f"warning: object mask fell back to the full frame: {x}")
    say(f"{len(paths)} image(s) -> {a.out}/ (scores.csv, heatmaps/, overlays/, maps.npz)")


def cmd_layer_sweep(a) -> None:
    layersweep.run(settings_from(a), a.data, a.out, a.methods, a.classes, recorded_command(a))


def cmd_layer_select(a) -> None:
    layerselect.run(settings_from(a), a.data, a.out, a.methods, a.classes, a.sweep, recorded_command(a),
                    time_evaluate=not a.no_timing)


def cmd_mask_sweep(a) -> None:
    detectors = parse_detectors(a.detectors)
    rs = parse_multipliers(a.multipliers)
    show_r = check_multiplier(a.show_multiplier, "--show-multiplier")
    learned = [d for d in detectors if d in LEARNED]
    cfgs = {d: mask_config(a, d) for d in detectors if d not in LEARNED}
    candidates = {d: mask_config(a, d) for d in available_detectors()} if "auto" in learned else {}
    masksweep.run(settings_from(a), a.data, a.out, cfgs, a.methods, a.classes, rs, show_r, a.examples,
                  recorded_command(a), learned, candidates)


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
        raise SpadimError("reproduce --detectors takes keypoint detectors only; use spadim mask-sweep for features/auto")
    rs = parse_multipliers(a.multipliers)
    cfgs = {d: mask_config(a, d) for d in detectors}
    data = a.data or default_data()
    s = settings_from(a)
    auto = s.auto_layers  # Table 1 keeps the study's layers; the auto choice is recorded beside it
    s = dataclasses.replace(s, layers=(1, 2, 3)) if auto else s
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

    p = sub.add_parser("weights", help="list each backbone's ImageNet checkpoint, or check one (exit 2 if none)")
    p.add_argument("--arch", default=None, choices=ARCHS, help="check (and download if needed) this one")
    p.add_argument("--first", default=None, metavar="ARCH,ARCH", help="print the first arch with weights")
    p.add_argument("--weights", default=None, help="checkpoint file or folder to check")
    p.set_defaults(func=cmd_weights)

    p = sub.add_parser("evaluate", help="fit and evaluate methods on one class or all classes of a root")
    p.add_argument("data", type=Path, help="MVTec AD root or one class folder")
    p.add_argument("--classes", default=None, help="comma-separated class names (default: all)")
    p.add_argument("--methods", default="spade,padim")
    p.add_argument("--out", type=Path, default=Path("runs/evaluate"))
    p.add_argument("--examples", type=int, default=4, help="heatmap figures per class (default: %(default)s)")
    add_common(p)
    add_mask_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("fit", help="fit one method on <class>/train/good and save the model")
    p.add_argument("data", type=Path, help="class folder with train/good")
    p.add_argument("--method", default="padim", help="spade or padim (default: %(default)s)")
    p.add_argument("--out", type=Path, required=True, help="model file to write")
    p.set_defaults(out_is_file=True)
    p.add_argument("--refs", type=int, default=3, help="normal images kept for object masks at predict time")
    add_common(p)
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("predict", help="score new images with a fitted model: heatmaps, overlays, scores.csv")
    p.add_argument("model", type=Path)
    p.add_argument("images", type=Path, nargs="+", help="image files or folders")
    p.add_argument("--out", type=Path, default=Path("runs/predict"))
    p.add_argument("--weights", default=None, help="checkpoint the model was fitted with (default lookup as in fit)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--vmin", type=float, default=None, help="heatmap colour range (default: min/max over the images)")
    p.add_argument("--vmax", type=float, default=None)
    add_mask_args(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("mask-sweep", help="proposal 1: detector suitability and outside-multiplier sweep")
    p.add_argument("data", type=Path, help="MVTec AD root or one class folder")
    p.add_argument("--classes", default=None)
    p.add_argument("--methods", default="spade,padim")
    p.add_argument("--detectors", default=",".join(DETECTORS), help="default: %(default)s")
    p.add_argument("--multipliers", default=",".join(str(r) for r in masksweep.DEFAULT_MULTIPLIERS),
                   help="default: %(default)s")
    p.add_argument("--show-multiplier", type=float, default=0.6,
                   help="r used in the example pictures (default: %(default)s)")
    p.add_argument("--examples", type=int, default=4)
    p.add_argument("--out", type=Path, default=Path("runs/mask-sweep"))
    add_common(p)
    add_mask_args(p, sweep=True)
    p.set_defaults(func=cmd_mask_sweep)

    p = sub.add_parser("layer-sweep", help="proposal 2: all 15 layer combinations for SPADE and PaDiM (resumable)")
    p.add_argument("data", type=Path, help="MVTec AD root or one class folder")
    p.add_argument("--classes", default=None)
    p.add_argument("--methods", default="spade,padim")
    p.add_argument("--out", type=Path, default=Path("runs/layer-sweep"))
    add_common(p, layers=False)
    p.set_defaults(func=cmd_layer_sweep)

    p = sub.add_parser("layer-select", help="--layers auto per class from normal images, and its regret "
                       "against the best subset on the real test set")
    p.add_argument("data", type=Path, help="MVTec AD root or one class folder")
    p.add_argument("--classes", default=None)
    p.add_argument("--methods", default="spade,padim")
    p.add_argument("--sweep", type=Path, default=None, help="layer-sweep --out folder whose per_class results "
                   "give the real AUPR of every subset (default: computed here)")
    p.add_argument("--no-timing", action="store_true", help="skip the timed plain evaluate of each class")
    p.add_argument("--out", type=Path, default=Path("runs/layer-select"))
    add_common(p, layers=False)
    p.set_defaults(func=cmd_layer_select)

    p = sub.add_parser("reproduce", help="the study in one run: Table 1, proposals 1 and 2, report.html (resumable)")
    p.add_argument("data", type=Path, nargs="?", default=None,
                   help=f"MVTec AD root or class folder (default: {SHARED_SUBSET} if present, else {TOY})")
    p.add_argument("--classes", default=None)
    p.add_argument("--methods", default="spade,padim")
    p.add_argument("--detectors", default=",".join(DETECTORS), help="proposal 1 detectors; '' skips (%(default)s)")
    p.add_argument("--multipliers", default=",".join(str(r) for r in reproduce.DEFAULT_MULTIPLIERS),
                   help="default: %(default)s")
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
        print(f"spadim: error: {exc.strerror or exc} ({exc.filename}): check the path and its permissions", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("spadim: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
