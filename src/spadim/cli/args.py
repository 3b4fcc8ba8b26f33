"""Argument parsing for the command line: flags, their checks and what they turn into.

Only argparse-facing code lives here; run plumbing shared with the studies is in
:mod:`spadim.run.session`.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from spadim.methods import Padim, PatchCore, PatchCoreConfig, Spade, SpadeConfig
from spadim.methods.nearest import SEARCHES
from spadim.methods.padim import DEFAULT_D
from spadim.methods.registry import METHODS
from spadim.methods.spade import FUSIONS
from spadim.features.backbone import ARCHS
from spadim.data.folders import load_plain
from spadim.data.mvtec import FRAMES, ClassData
from spadim.errors import SpadimError
from spadim.features.config import BackboneConfig
from spadim.features.device import DEVICES
from spadim.features.extractor import parse_layers
from spadim.decision.conformal import check_far
from spadim.lists import parse_list
from spadim.masks.auto import LEARNED
from spadim.masks.keypoints import DETECTORS, MaskConfig, available_detectors
from spadim.run.pipeline import AUTO, Settings
from spadim.run.session import check_out_dir, check_out_file


def add_common(
    p: argparse.ArgumentParser, layers: bool = True, frame: str = "crop", auto: bool = False
) -> None:
    """``auto``: ``--layers`` defaults to 'auto' (fit and evaluate: chosen by measurement, docs/inspection.md)."""
    g = p.add_argument_group("backbone and preprocessing")
    g.add_argument(
        "--arch", default=BackboneConfig.arch, choices=ARCHS, help="backbone (default: %(default)s)"
    )
    g.add_argument(
        "--weights",
        default=None,
        metavar="FILE|DIR|random",
        help="ImageNet checkpoint (torchvision .pth) or folder; default: $SPADIM_WEIGHTS, then the torch hub "
        "cache; 'random' = untrained network (plumbing only, flagged in every report)",
    )
    g.add_argument(
        "--resize",
        type=int,
        default=BackboneConfig.resize,
        help="shorter side before cropping (default: %(default)s)",
    )
    g.add_argument(
        "--crop", type=int, default=BackboneConfig.crop, help="centre crop size (default: %(default)s)"
    )
    g.add_argument(
        "--frame",
        default=frame,
        choices=FRAMES,
        help="'crop': resize the shorter side to --resize and centre-crop --crop, as the papers; 'whole': "
        "squash the whole image to --crop x --crop so no border is lost (default: %(default)s)",
    )
    g.add_argument(
        "--tile",
        type=int,
        default=1,
        metavar="N",
        help="inspect the frame as an N x N grid of --crop tiles: the backbone sees N*--crop pixels "
        "(one convolutional pass, no seams), so small defects in large images keep N times the "
        "feature resolution; SPADE and PatchCore only (default: %(default)s, off)",
    )
    g.add_argument("--batch-size", type=int, default=BackboneConfig.batch_size)
    add_device(g)
    g.add_argument("--cache-dir", type=Path, default=None, help="also cache per-image features on disk here")
    g.add_argument(
        "--seed",
        type=int,
        default=Settings.seed,
        help="seeds random weights, held-out folds, PaDiM's channel subset and PatchCore's sampling",
    )
    m = p.add_argument_group("methods")
    if layers:
        m.add_argument(
            "--layers",
            default="auto" if auto else None,
            help="backbone layers to use, a subset of 1,2,3,4 written 2,3 or 2+3 (as reports print it), "
            "or 'auto': chosen per class and method "
            "from normal images with synthetic defects (default: "
            + ("auto" if auto else "1,2,3 for SPADE and PaDiM, 2,3 for PatchCore")
            + ")",
        )
    m.add_argument(
        "--k", type=int, default=SpadeConfig.k, help="SPADE: nearest training images (default: %(default)s)"
    )
    m.add_argument(
        "--coreset",
        type=float,
        default=PatchCoreConfig.coreset,
        help="PatchCore: share of training patches kept by greedy coreset selection (default: %(default)s)",
    )
    m.add_argument(
        "--d",
        type=int,
        default=None,
        help="PaDiM: random channels kept (default, per --arch: "
        + ", ".join(f"{d} {arch}" for arch, d in DEFAULT_D.items())
        + ")",
    )
    m.add_argument(
        "--search",
        default=SpadeConfig.search,
        choices=("auto", *SEARCHES),
        help="SPADE and PatchCore nearest-neighbour backend, all exact: 'auto' times them once "
        "on this machine and keeps the faster (default: %(default)s)",
    )
    m.add_argument(
        "--spade-fusion",
        default=SpadeConfig.fusion,
        choices=FUSIONS,
        help="SPADE: 'mean' of per-layer distance maps (reference code) or one search over "
        "'concat'enated layers (default: %(default)s)",
    )


def add_mask_args(p: argparse.ArgumentParser, sweep: bool = False) -> None:
    g = p.add_argument_group("object mask (proposal 1)")
    if not sweep:
        g.add_argument(
            "--object-mask",
            choices=DETECTORS + LEARNED,
            default=None,
            help="suppress scores outside an object mask: a keypoint detector, 'features' (learned from "
            "the normal images' features) or 'auto' (type and r chosen per class from normal images)",
        )
        g.add_argument(
            "--outside-multiplier",
            type=float,
            default=0.6,
            help="factor for scores outside the mask, 0..1 (default: %(default)s)",
        )
    g.add_argument(
        "--refs",
        type=int,
        default=3,
        help="normal reference images matched per test image (default: %(default)s)",
    )
    g.add_argument(
        "--ratio",
        type=float,
        default=0.8,
        help="Lowe ratio test threshold, 1 disables (default: %(default)s)",
    )
    g.add_argument("--cross-check", action="store_true", help="mutual best matches instead of the ratio test")
    g.add_argument(
        "--radius",
        type=int,
        default=12,
        help="disc radius around matched keypoints, px (default: %(default)s)",
    )
    g.add_argument(
        "--close", type=int, default=15, help="closing kernel, px; 0 disables (default: %(default)s)"
    )
    g.add_argument("--no-hull", action="store_true", help="do not fill convex hulls of mask components")
    g.add_argument(
        "--min-matches",
        type=int,
        default=8,
        help="fewer matches -> full-frame fallback (default: %(default)s)",
    )


def add_plain_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("plain folders (instead of DATA)")
    g.add_argument(
        "--train", type=Path, default=None, metavar="DIR", help="normal training images, any depth"
    )
    g.add_argument(
        "--test",
        type=Path,
        default=None,
        metavar="DIR",
        help="test images in good/ (or ok/, normal/) and one folder per defect type",
    )
    g.add_argument(
        "--masks",
        type=Path,
        default=None,
        metavar="DIR",
        help="ground truth as <defect>/<stem>.png or <defect>/<stem>_mask.png; without it only "
        "image metrics are measured (pixel metrics n/a)",
    )
    g.add_argument("--name", default=None, help="class name (default: the --train folder's parent)")


def evaluation_data(a: argparse.Namespace) -> Path | ClassData:
    """DATA (an MVTec AD root or class folder) or the class of --train/--test [--masks] [--name];
    exactly one of the two. Plain folders are indexed here, so a bad layout fails before any work."""
    plain = {flag: getattr(a, flag.lstrip("-")) for flag in ("--train", "--test", "--masks", "--name")}
    given = [flag for flag, value in plain.items() if value is not None]
    if a.data is not None and given:
        raise SpadimError(f"give either DATA ({a.data}) or {given[0]} with --train/--test, not both")
    if a.data is not None:
        return a.data
    if plain["--train"] is None or plain["--test"] is None:
        raise SpadimError(
            "give DATA (an MVTec AD root or class folder), or --train DIR --test DIR "
            "[--masks DIR] for plain folders"
        )
    if a.classes:
        raise SpadimError(
            "--classes picks classes of an MVTec AD root; with --train/--test name the one class with --name"
        )
    return load_plain(plain["--train"], plain["--test"], plain["--masks"], plain["--name"])


def layers_arg(text: str):
    """--layers: 'auto' (case-insensitive) keeps the marker; anything else goes to the strict parse_layers."""
    return AUTO if str(text).strip().lower() == AUTO else parse_layers(text)


def add_device(p) -> None:
    p.add_argument(
        "--device",
        default=BackboneConfig.device,
        choices=DEVICES,
        help="where the backbone runs (and, for predict and serve, the whole scoring graph): 'auto' takes "
        "a CUDA GPU when torch sees one (default: %(default)s; the CUDA path is untested, docs/deploy.md)",
    )


def add_runtime(p) -> None:
    """predict and serve: which engine runs the model."""
    p.add_argument(
        "--runtime",
        default="torch",
        choices=("torch", "onnx"),
        help="'onnx': MODEL is an export (spadim export) run by onnxruntime (default: %(default)s)",
    )
    add_device(p)


def add_ray(p, what: str) -> None:
    p.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help=f"{what} on Ray (pip install 'spadim[ray]'): without ADDRESS a local cluster on 127.0.0.1; "
        "'auto' or ray://HOST:10001 joins a running one (docs/deploy.md)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="Ray workers, replicas for serve (default: one per CPU of the cluster)",
    )


def settings_from(a) -> Settings:
    tile = getattr(a, "tile", 1)
    methods = [getattr(a, "method", "")] + str(getattr(a, "methods", "")).split(",")
    untiled = [name for name in methods if name in METHODS and not METHODS[name].abilities.tiles]
    if tile > 1 and untiled:
        tiling = [name for name, cls in METHODS.items() if cls.abilities.tiles]
        raise SpadimError(
            f"--tile {tile} with {untiled[0]} would multiply what its fit holds per position by {tile * tile} "
            f"(PaDiM: {tile * tile * 3136} positions x 550 x 550 floats, about {tile * tile * 3.8:.0f} GB): "
            f"use --method {' or '.join(tiling)} with --tile, or drop --tile"
        )
    backbone = BackboneConfig(
        arch=a.arch,
        weights=a.weights,
        resize=a.resize * tile,
        crop=a.crop * tile,
        frame=getattr(a, "frame", BackboneConfig.frame),
        batch_size=a.batch_size,
        cache_dir=a.cache_dir,
        device=getattr(a, "device", BackboneConfig.device),
    )
    return Settings(
        backbone=backbone,
        configs=method_configs(a, backbone.arch),
        layers=layers_arg(a.layers) if getattr(a, "layers", None) else (1, 2, 3),
        layers_given=getattr(a, "layers", None) is not None,
        seed=a.seed,
    )


def method_configs(a, arch: str) -> dict:
    """Each method's config from its flags; a flag left out (None: --d) keeps the method's default."""
    flags = {
        Spade: {"k": a.k, "fusion": a.spade_fusion, "search": a.search},
        Padim: {"d": a.d},
        PatchCore: {"coreset": a.coreset, "search": a.search},
    }
    return {
        cls.name: dataclasses.replace(
            cls.default_config(arch, a.seed),
            **{option: value for option, value in given.items() if value is not None},
        )
        for cls, given in flags.items()
    }


def mask_config(a, detector: str) -> MaskConfig:
    if detector not in available_detectors():
        raise SpadimError(
            f"detector {detector!r} is not in this OpenCV build ({', '.join(available_detectors())} are): reinstall spadim's dependencies"
        )
    return MaskConfig(
        detector=detector,
        n_refs=a.refs,
        ratio=a.ratio,
        cross_check=a.cross_check,
        radius=a.radius,
        close=a.close,
        hull=not a.no_hull,
        min_matches=a.min_matches,
    )


def check_multiplier(r: float, flag: str = "--outside-multiplier") -> float:
    if not 0.0 <= r <= 1.0:
        raise SpadimError(f"{flag} {r} is outside [0, 1]: 1 keeps scores, 0 zeroes them outside the mask")
    return r


def parse_multipliers(text: str) -> list[float]:
    vals = parse_list(text, "multiplier", "multipliers", convert=float, example="0,0.2,0.4,0.6,0.8,1")
    if any(not 0 <= v <= 1 for v in vals):
        raise SpadimError(
            f"--multipliers {text!r} must be numbers in [0, 1], e.g. --multipliers 0,0.2,0.4,0.6,0.8,1"
        )
    return vals


def parse_detectors(text: str) -> list[str]:
    return parse_list(
        text.lower(), "detector", "detectors", DETECTORS + LEARNED, example="orb,akaze,features,auto"
    )


# flag -> (attribute, smallest sensible value, what it is)
_MINIMUMS = {
    "--batch-size": ("batch_size", 1, "the number of images per backbone batch"),
    "--tile": ("tile", 1, "the number of tiles per side of the frame"),
    "--k": ("k", 1, "the number of nearest training images"),
    "--d": ("d", 1, "the number of random channels PaDiM keeps"),
    "--refs": ("refs", 1, "the number of normal reference images for object masks"),
    "--examples": ("examples", 0, "the number of example figures per class"),
    "--radius": ("radius", 1, "the disc radius around matched keypoints, in px"),
    "--close": ("close", 0, "the closing kernel size in px (0 disables it)"),
    "--min-matches": ("min_matches", 0, "the match count below which a mask falls back to the full frame"),
    "--folds": ("folds", 2, "the number of calibration folds (each scored by a model of the others)"),
    "--min-area": ("min_area", 0, "the smallest defect region as a fraction of the image area"),
    "--workers": ("workers", 1, "the number of Ray workers"),
}


def check_args(a: argparse.Namespace) -> None:
    """Checks every command gets before any work: counts in range and a usable --out.

    argparse only checks types; a zero batch size would otherwise end in a traceback
    from deep inside the backbone, and a bad --out only after the whole run.
    """
    for flag, (attr, low, what) in _MINIMUMS.items():
        value = getattr(a, attr, None)
        if value is not None and value < low:
            raise SpadimError(f"{flag} must be >= {low} (got {value}): it is {what}")
    if getattr(a, "far", None) is not None:
        check_far(a.far)
    if getattr(a, "out", None) is not None:
        one_file = getattr(a, "out_is_file", False) and not getattr(a, "per_class", False)
        (check_out_file if one_file else check_out_dir)(a.out)
