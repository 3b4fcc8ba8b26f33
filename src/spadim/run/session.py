"""Run plumbing shared by evaluate and the study modules: where their words go (:class:`Output`), staged
output, output checks, run metadata and the common start of a study.

Nothing here knows about argparse or a terminal: a run says, shows and counts through the
:class:`Output` it is given, quiet by default; the command line passes its terminal one
(:mod:`spadim.cli.output`), so the studies can be driven from Python as well as from the command line.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from spadim import __version__
from spadim.data.mvtec import ClassData, check_class, find_classes, read_rgb
from spadim.errors import SpadimError
from spadim.features.extractor import FeatureExtractor
from spadim.methods.registry import parse_methods
from spadim.report.tables import json_ready
from .pipeline import NO_MASKS, Settings, class_data, make_extractor


def quiet(*_args, **_kwargs) -> None:
    return None


class NoBar:
    """A progress bar that shows nothing (:attr:`Output.bar` of a quiet run)."""

    def update(self, steps: int = 1) -> None:
        return None

    def close(self) -> None:
        return None


@dataclass(frozen=True)
class Output:
    """Where a run's words go, quiet unless given: ``say(line)`` what happened, ``show(text)`` the result
    tables, ``progress(batches, desc, total_images)`` the extractor's batch hook (None: none), and
    ``bar(total, desc, unit)`` a bar over a study's steps (``update(n)``, ``close()``)."""

    say: Callable[[str], None] = quiet
    show: Callable[[str], None] = quiet
    progress: Callable | None = None
    bar: Callable = lambda total, desc, unit: NoBar()


QUIET = Output()


def _existing_ancestor(path: Path, name: str) -> Path:
    """The nearest existing folder at or above ``path``; a file on the way is an error."""
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise SpadimError(f"`{name}={path}`: {p} is a file, not a folder: give a path in a folder")
            if not os.access(p, os.W_OK):
                raise SpadimError(f"`{name}={path}`: folder {p} is not writable: give a writable path")
            return p
    return Path(".")


def check_out_dir(path: Path, name: str = "out") -> None:
    """Results folder: checked before any work, so a bad path costs seconds, not the run."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SpadimError(f"`{name}={path}` is a file: give a folder for the results")
    _existing_ancestor(path, name)


def check_out_file(path: Path, name: str = "out") -> None:
    """Output file (a model): must not be a folder, and its folder must be creatable."""
    path = Path(path)
    if path.is_dir():
        raise SpadimError(
            f"`{name}={path}` is a folder: give a file name for the model, e.g. {path / 'm.pt'}"
        )
    _existing_ancestor(path.parent, name)


@contextlib.contextmanager
def staged(out: Path):
    """Yield a staging folder; on success move its entries into ``out``, else delete it."""
    out = Path(out)
    check_out_dir(out)
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


#: Full MVTec AD classes (train/good images, original side in px) for the classes whose sizes
#: ../shared/data/README.md states; a run on fewer or smaller images says so next to published numbers.
FULL_MVTEC = {"grid": (264, 1024), "hazelnut": (391, 1024), "transistor": (213, 1024), "screw": (320, 1024)}


def class_summary(data: ClassData, shapes=None) -> dict:
    """Image counts and sizes of a class, with a note when it is a subset or resized copy of MVTec AD.

    ``shapes`` are the test images' original (H, W); read from the files when not given.
    """
    if shapes is None:
        shapes = [read_rgb(p).shape[:2] for p in data.test]
    sizes = sorted({f"{w}x{h}" for h, w in shapes})
    summary = {
        "name": data.name,
        "n_train": len(data.train),
        "n_test_good": int((data.labels == 0).sum()),
        "n_test_anomalous": int(data.labels.sum()),
        "image_size": sizes[0]
        if len(sizes) == 1
        else f"mixed ({', '.join(sizes[:3])}{', ...' if len(sizes) > 3 else ''})",
    }
    notes = []
    if data.name in FULL_MVTEC:
        full_train, full_side = FULL_MVTEC[data.name]
        if len(data.train) < full_train:
            notes.append(f"subset: {len(data.train)} of the full class's {full_train} training images")
        if max(max(h, w) for h, w in shapes) < full_side:
            notes.append(f"resized: {summary['image_size']} copies of {full_side} px originals")
    if not data.has_masks:
        notes.append(NO_MASKS)
    summary["note"] = "; ".join(notes)
    return summary


def report_header(
    title: str, command: str, s: Settings, fx: FeatureExtractor, data: Path | str, summaries
) -> dict:
    """The part of a report context every command shares: what ran, on what, with which weights.

    ``data`` is the data root, or for plain folders a line naming them (:attr:`ClassData.origin`)."""
    w = fx.weights
    return {
        "title": title,
        "command": command,
        "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "data": {"root": str(data), "classes": list(summaries)},
        "weights": {
            "arch": w.arch,
            "source": w.source,
            "sha256": w.sha256,
            "pretrained": w.pretrained,
            "describe": w.describe(),
        },
        "settings": {
            "layers": _layers_setting(s),
            "seed": s.seed,
            "resize": s.backbone.resize,
            "crop": s.backbone.crop,
            **recorded_options(s),
        },
    }


def _layers_setting(s: Settings):
    """The run's layers; without --layers a method with its own default (PatchCore: its paper's 2, 3)
    keeps it, which the report must say."""
    from spadim.methods.registry import METHODS

    if s.layers_given or s.auto_layers:
        return s.layers_label
    own = [
        f"{name}: {', '.join(map(str, cls.default_layers))}"
        for name, cls in METHODS.items()
        if cls.default_layers
    ]
    return f"{', '.join(map(str, s.layers))}" + (f" ({'; '.join(own)})" if own else "")


def load_resumable(path: Path, signature: dict, what: str = "run") -> dict | None:
    """A finished unit of a resumable run, or None when absent or damaged (it is recomputed).

    A file written with other settings is refused rather than mixed into the results.
    """
    if not path.is_file():
        return None
    try:
        saved = read_saved(path)
    except json.JSONDecodeError:
        return None
    if saved.get("signature") != signature:
        raise SpadimError(f"{path} holds a {what} with other settings: use another `out` or delete it")
    return saved


def save_atomic(path: Path, content: dict) -> None:
    """Write strict JSON via a temporary file and a rename, so an interruption never leaves half a file.
    An undefined metric (NaN) is written as null and listed in its row's ``null_reasons``, from which
    :func:`read_saved` restores it, so a resumed run computes the same means."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(json_ready(content), indent=1, default=float, allow_nan=False))
    tmp.replace(path)


def read_saved(path: Path):
    """A file written by :func:`save_atomic`, with its undefined values NaN again."""
    return _restore_undefined(json.loads(Path(path).read_text()))


def _restore_undefined(value):
    if isinstance(value, dict):
        undefined = value.get("null_reasons", {})
        return {
            key: float("nan") if key in undefined else _restore_undefined(item)
            for key, item in value.items()
            if key != "null_reasons"
        }
    if isinstance(value, list):
        return [_restore_undefined(item) for item in value]
    return value


def meta(s: Settings, fx: FeatureExtractor, **extra) -> dict:
    return {
        "spadim": __version__,
        "weights": fx.weights.describe(),
        "pretrained": fx.weights.pretrained,
        "arch": s.backbone.arch,
        "resize": s.backbone.resize,
        "crop": s.backbone.crop,
        "layers": s.layers_label,
        "seed": s.seed,
        **recorded_options(s),
        **extra,
    }


def recorded_options(s: Settings) -> dict:
    """The methods' options as results record them, the search backend named as it ran."""
    record = s.recorded_options()
    return {**record, "search": search_label(record["search"])} if "search" in record else record


def search_label(name: str) -> str:
    """The nearest-neighbour backend a run used: forced, or 'auto: <the probe's pick>' (PatchCore then
    prunes its bank with ``BoundedSearch`` where that measures faster, falling back to the pick)."""
    from spadim.methods.nearest import probe_report

    if name != "auto":
        return name
    report = probe_report()
    return f"auto: {report['forced'] or report['picked']}"


def start_study(
    s: Settings,
    data: Path | ClassData,
    methods: str,
    classes: str | None = None,
    layer_sets=None,
    check_counts=None,
    output: Output = QUIET,
) -> tuple[list[str], list[Path | ClassData], FeatureExtractor]:
    """Common start of evaluate and the studies -> (methods, class sources, extractor).

    ``data`` is an MVTec AD root or class folder (the sources are class folders), or one class in
    another layout, already indexed (the source is that ClassData). Methods, the layout of every
    class and every image and mask (fully decoded) are checked before the backbone is loaded, so a
    bad file in the last class fails in seconds instead of discarding the finished classes. The
    weights in use are said through ``output``. ``check_counts(methods, class_data)``, when given, checks each
    class's image counts first (:func:`spadim.run.calibration.image_count_check`).
    """
    names = parse_methods(methods)
    if isinstance(data, ClassData):
        if classes:
            raise SpadimError(
                f"`classes={classes}` picks classes of an MVTec AD root; {data.name!r} is a "
                f"single class: drop `classes`"
            )
        sources = [data]
    else:
        sources = find_classes(data, classes)
    indexed = [class_data(c) for c in sources]  # every layout and count first: cheap, then the decoding
    for c in indexed:
        if check_counts is not None:
            check_counts(names, c)
    for c in indexed:
        check_class(c)
    fx = make_extractor(s, output.progress, names, layer_sets)
    output.say(fx.weights.describe())
    return names, sources, fx
