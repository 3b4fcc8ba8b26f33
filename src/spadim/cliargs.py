"""Shared pieces of the command line: arguments, settings, progress, staged output."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
from pathlib import Path

from tqdm import tqdm

from . import __version__
from .backbone import ARCHS
from .data import find_classes
from .errors import SpadimError
from .features import FeatureExtractor, parse_layers
from .methods import parse_methods
from .objmask import DETECTORS, MaskConfig, available_detectors
from .pipeline import Settings, make_extractor, validate_classes


def progress(items, desc: str, total_images: int):
    """tqdm over batches, shown on terminals only (CI logs stay readable)."""
    return tqdm(items, desc=f"{desc} ({total_images} img)", unit="batch", disable=None, leave=False)


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@contextlib.contextmanager
def staged(out: Path):
    """Yield a staging folder; on success move its entries into ``out``, else delete it."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SpadimError(f"--out {out} is a file: give a folder for the results")
    stage = out.parent / f".{out.name}.staging-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    out.mkdir(parents=True, exist_ok=True)
    for entry in stage.iterdir():
        dest = out / entry.name
        if dest.is_dir():
            shutil.rmtree(dest)
        entry.replace(dest)
    stage.rmdir()


def add_common(p: argparse.ArgumentParser, layers: bool = True) -> None:
    g = p.add_argument_group("backbone and preprocessing")
    g.add_argument("--arch", default="wide_resnet50_2", choices=ARCHS, help="backbone (default: %(default)s)")
    g.add_argument("--weights", default=None, metavar="FILE|DIR|random",
                   help="ImageNet checkpoint (torchvision .pth) or folder; default: $SPADIM_WEIGHTS, then the torch hub "
                        "cache; 'random' = untrained network (plumbing only, flagged in every report)")
    g.add_argument("--resize", type=int, default=256, help="shorter side before cropping (default: %(default)s)")
    g.add_argument("--crop", type=int, default=224, help="centre crop size (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--cache-dir", type=Path, default=None, help="also cache per-image features on disk here")
    g.add_argument("--seed", type=int, default=0, help="seeds PaDiM's channel subset and random weights")
    m = p.add_argument_group("methods")
    if layers:
        m.add_argument("--layers", default="1,2,3", help="backbone layers to use, subset of 1,2,3,4 (default: %(default)s)")
    m.add_argument("--k", type=int, default=5, help="SPADE: nearest training images (default: %(default)s)")
    m.add_argument("--d", type=int, default=None, help="PaDiM: random channels kept (default: 100 resnet18, 550 others)")


def add_mask_args(p: argparse.ArgumentParser, sweep: bool = False) -> None:
    g = p.add_argument_group("object mask (proposal 1)")
    if not sweep:
        g.add_argument("--object-mask", choices=DETECTORS, default=None, help="suppress scores outside a keypoint object mask")
        g.add_argument("--outside-multiplier", type=float, default=0.6, help="factor for scores outside the mask, 0..1 (default: %(default)s)")
    g.add_argument("--refs", type=int, default=3, help="normal reference images matched per test image (default: %(default)s)")
    g.add_argument("--ratio", type=float, default=0.8, help="Lowe ratio test threshold, 1 disables (default: %(default)s)")
    g.add_argument("--cross-check", action="store_true", help="mutual best matches instead of the ratio test")
    g.add_argument("--radius", type=int, default=12, help="disc radius around matched keypoints, px (default: %(default)s)")
    g.add_argument("--close", type=int, default=15, help="closing kernel, px; 0 disables (default: %(default)s)")
    g.add_argument("--no-hull", action="store_true", help="do not fill convex hulls of mask components")
    g.add_argument("--min-matches", type=int, default=8, help="fewer matches -> full-frame fallback (default: %(default)s)")


def settings_from(a) -> Settings:
    return Settings(
        arch=a.arch, weights=a.weights, resize=a.resize, crop=a.crop,
        layers=parse_layers(a.layers) if hasattr(a, "layers") else (1, 2, 3),
        k=a.k, d=a.d, seed=a.seed, batch_size=a.batch_size, cache_dir=a.cache_dir,
    )


def mask_config(a, detector: str) -> MaskConfig:
    if detector not in available_detectors():
        raise SpadimError(f"detector {detector!r} is not in this OpenCV build ({', '.join(available_detectors())} are): reinstall spadim's dependencies")
    return MaskConfig(detector=detector, n_refs=a.refs, ratio=a.ratio, cross_check=a.cross_check, radius=a.radius,
                      close=a.close, hull=not a.no_hull, min_matches=a.min_matches)


def check_multiplier(r: float) -> float:
    if not 0.0 <= r <= 1.0:
        raise SpadimError(f"--outside-multiplier {r} is outside [0, 1]: 1 keeps scores, 0 zeroes them outside the mask")
    return r


def meta(s: Settings, fx: FeatureExtractor, **extra) -> dict:
    return {"spadim": __version__, "weights": fx.weights.describe(), "pretrained": fx.weights.pretrained,
            "arch": s.arch, "resize": s.resize, "crop": s.crop, "layers": list(s.layers), "k": s.k,
            "d": s.padim_d, "seed": s.seed, **extra}


def start_study(a) -> tuple[Settings, list[str], list[Path], FeatureExtractor]:
    """Common start of evaluate and the studies: settings, methods and every class are
    validated before the backbone is loaded (whose weights are announced on stderr)."""
    s = settings_from(a)
    methods = parse_methods(a.methods)
    classes = find_classes(a.data, a.classes)
    validate_classes(classes)
    fx = make_extractor(s, progress)
    say(fx.weights.describe())
    return s, methods, classes, fx
