"""Deterministic synthetic inspection data set in the MVTec AD layout (the embedded default data).

Four classes: two textures (``tile``, ``fabric``) and two posed objects on a plain background
(``nut`` in colour, ``plate`` in grayscale), each with two defect types and pixel masks.
Images are rendered at twice the output size and reduced with area averaging (anti-aliasing).
This module holds the class/defect tables and writing; rendering lives in ``textures`` and
``objects``, on the shared helpers in ``drawing``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from spadim.errors import SpadimError

from .drawing import _F32, _Rng, _down
from .objects import (
    _Scene,
    _finish_object,
    _nut,
    _nut_chip,
    _nut_scratch,
    _plate,
    _plate_contamination,
    _plate_dent,
)
from .textures import (
    _Tex,
    _fabric,
    _fabric_hole,
    _fabric_thread,
    _finish_texture,
    _tile,
    _tile_crack,
    _tile_stain,
)

GENERATOR_VERSION = "spadim-synth/1"
DEFAULT_CLASSES = ("tile", "fabric", "nut", "plate")
DEFECTS = {
    "tile": ("crack", "stain"),
    "fabric": ("hole", "thread"),
    "nut": ("scratch", "chip"),
    "plate": ("dent", "contamination"),
}
MARKER_NAME = ".spadim-synth.json"

_AREA_RANGE = (0.003, 0.05)  # accepted mask area fraction of a defect
_TRIES = 30  # defect redraws before accepting the first non-empty one
_DUST_P = {"train": 0.15, "test": 0.5}  # chance of background dust on object classes


# ----------------------------------------------------------------------------- registry

_State = _Tex | _Scene
_DefectFn = Callable[[_Rng, _State], tuple[_State, np.ndarray]]


@dataclass(frozen=True)
class _Kind:
    render: Callable[[_Rng, int], _State]
    defects: dict[str, _DefectFn]
    finish: Callable[[_Rng, _State, int, bool], np.ndarray]
    is_object: bool


_KINDS: dict[str, _Kind] = {
    "tile": _Kind(_tile, {"crack": _tile_crack, "stain": _tile_stain}, _finish_texture, False),
    "fabric": _Kind(_fabric, {"hole": _fabric_hole, "thread": _fabric_thread}, _finish_texture, False),
    "nut": _Kind(_nut, {"scratch": _nut_scratch, "chip": _nut_chip}, _finish_object, True),
    "plate": _Kind(
        _plate, {"dent": _plate_dent, "contamination": _plate_contamination}, _finish_object, True
    ),
}


def render_image(
    cls: str, rng: _Rng, size: int, defect: str | None = None, test: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """One image (uint8 RGB (H, W, 3), or (H, W) for plate) and its boolean defect mask (None if good)."""
    kind = _KINDS[cls]
    dusty = kind.is_object and rng.random() < _DUST_P["test" if test else "train"]
    state = kind.render(rng, 2 * size)
    mask = None
    if defect is not None:
        chosen = None
        for _ in range(_TRIES):
            cand, m2 = kind.defects[defect](rng, state)
            m = _down(m2.astype(_F32), size) >= 0.5
            frac = float(m.mean())
            if _AREA_RANGE[0] <= frac <= _AREA_RANGE[1]:
                chosen = (cand, m)
                break
            if chosen is None and frac > 0:
                chosen = (cand, m)  # fallback: the first visible draw
        if chosen is None:
            raise RuntimeError(
                f"synth: could not draw a visible {cls}/{defect} defect at size {size}"
            )
        state, mask = chosen
    img = kind.finish(rng, state, size, dusty)
    return (img[..., 0] if img.shape[-1] == 1 else img), mask


# ----------------------------------------------------------------------------- data set


def _write_png(path: Path, img: np.ndarray) -> None:
    out = cv2.cvtColor(img, cv2.COLOR_RGB2BGR) if img.ndim == 3 else img
    if not cv2.imwrite(str(path), out):
        raise SpadimError(f"could not write {path}; check the folder is writable")


def _write_class(
    dest: Path, cls: str, n_train: int, n_good: int, n_defect: int, size: int, seed: int
) -> None:
    ci = DEFAULT_CLASSES.index(cls)
    jobs: list[tuple[Path, Path | None, int, int, str | None]] = []
    jobs += [(dest / "train" / "good", None, 0, i, None) for i in range(n_train)]
    jobs += [(dest / "test" / "good", None, 1, i, None) for i in range(n_good)]
    for k, d in enumerate(DEFECTS[cls]):
        jobs += [
            (dest / "test" / d, dest / "ground_truth" / d, 2 + k, i, d)
            for i in range(n_defect)
        ]
    for img_dir, mask_dir, split, i, defect in jobs:
        rng = np.random.default_rng([seed, ci, split, i])
        img, mask = render_image(cls, rng, size, defect, test=split > 0)
        img_dir.mkdir(parents=True, exist_ok=True)
        _write_png(img_dir / f"{i:03d}.png", img)
        if mask_dir is not None:
            mask_dir.mkdir(parents=True, exist_ok=True)
            _write_png(mask_dir / f"{i:03d}_mask.png", mask.astype(np.uint8) * 255)


def _read_marker(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def make_dataset(
    root: str | os.PathLike[str],
    classes: tuple[str, ...] | list[str] = DEFAULT_CLASSES,
    n_train: int = 20,
    n_test_good: int = 4,
    n_test_defect: int = 4,
    size: int = 256,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Generate the synthetic data set under `root` (MVTec AD layout) and return `root`.

    Deterministic in its arguments; a matching marker file makes a rerun a no-op. The set is built
    in a hidden sibling folder and renamed into place, so an interrupted run leaves no partial set.
    `n_test_defect` is per defect type (two per class).
    """
    root = Path(root)
    classes = tuple(classes)
    for c in classes:
        if c not in _KINDS:
            raise SpadimError(
                f"unknown synthetic class {c!r}; valid classes: {', '.join(DEFAULT_CLASSES)}"
            )
    if len(set(classes)) != len(classes) or not classes:
        raise SpadimError(
            f"synthetic classes must be distinct and non-empty, got {list(classes)}"
        )
    for name, val, low in (
        ("n_train", n_train, 1),
        ("n_test_good", n_test_good, 0),
        ("n_test_defect", n_test_defect, 0),
        ("size", size, 32),
        ("seed", seed, 0),
    ):
        if not isinstance(val, (int, np.integer)) or isinstance(val, bool) or val < low:
            raise SpadimError(
                f"synthetic data set: {name} must be an integer >= {low}, got {val!r}"
            )
    params = {
        "generator": GENERATOR_VERSION,
        "classes": list(classes),
        "n_train": int(n_train),
        "n_test_good": int(n_test_good),
        "n_test_defect": int(n_test_defect),
        "size": int(size),
        "seed": int(seed),
    }
    say = progress or (lambda _msg: None)
    marker = root / MARKER_NAME
    if root.exists():
        if root.is_dir() and _read_marker(marker) == params:
            say(f"synthetic data set already in {root}")
            return root
        if not root.is_dir():
            raise SpadimError(
                f"{root} is a file, not a folder; choose an empty folder or delete it"
            )
        if any(root.iterdir()):
            what = (
                "a different synthetic data set" if marker.exists() else "other files"
            )
            raise SpadimError(
                f"{root} already holds {what}; choose an empty folder or delete it"
            )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        n_images = n_train + n_test_good + 2 * n_test_defect
        for c in classes:
            say(f"generating synthetic class {c!r} ({n_images} images, {size}px)")
            _write_class(tmp / c, c, n_train, n_test_good, n_test_defect, size, seed)
        (tmp / MARKER_NAME).write_text(
            json.dumps(params, indent=2, sort_keys=True) + "\n"
        )
        if root.exists():
            root.rmdir()
        os.replace(tmp, root)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        # A concurrent run may have finished the same set first.
        if _read_marker(marker) == params:
            return root
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"synthetic data set written to {root}")
    return root
