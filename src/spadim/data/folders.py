"""Plain folders in: images in any tree, not only the MVTec AD layout.

A production line rarely stores its images as ``<class>/train/good``. Here the training folder is
every image under it, at any depth, and a test image's label is the name of the first folder below
the test folder::

    train/**/*.png                      normal images only
    test/good|ok|normal/**/*.png        normal (case-insensitive)
    test/<defect>/**/*.png              defective, of type <defect>
    masks/<defect>/**/<stem>.png        its mask; <stem>_mask.png (MVTec AD) also works; optional

Without a masks folder the class has no pixel labels: only image-level metrics are defined.
"""

from __future__ import annotations

import os
from pathlib import Path

from spadim.errors import SpadimError

from .mvtec import IMAGE_EXTS, ClassData, load_class

NORMAL_NAMES = ("good", "ok", "normal")  # test subfolders of normal images, compared case-insensitively
MASK_SUFFIXES = ("", "_mask")  # <stem>.<ext> or, as MVTec AD names them, <stem>_mask.<ext>
NOT_TRAINING = ("test", "ground_truth")  # subfolders that say a folder holds more than normal images


def _is_hidden(name: str) -> bool:
    return name.startswith(".")  # .git, .DS_Store, macOS ._resource forks


def find_images(folder: Path) -> list[Path]:
    """Every image under ``folder`` at any depth, sorted by relative path; hidden files and folders
    are skipped. Symlinked folders are followed once each, so a link cycle cannot loop."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SpadimError(f"{folder} is not an existing folder: give the folder that holds the images")
    found, seen = [], set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = [d for d in dirnames if not _is_hidden(d)]
        here = Path(dirpath)
        found += [
            here / f
            for f in filenames
            if not _is_hidden(f) and Path(f).suffix.lower() in IMAGE_EXTS and (here / f).is_file()
        ]
    if not found:
        exts = ", ".join(IMAGE_EXTS)
        raise SpadimError(f"no images ({exts}) under {folder}: add images or give another folder")
    return sorted(found, key=lambda p: p.relative_to(folder).parts)


def _mvtec_classes(folder: Path) -> list[str]:
    return sorted(c.name for c in folder.iterdir() if c.is_dir() and (c / "train" / "good").is_dir())


def training_images(folder: Path) -> tuple[str, list[Path]]:
    """(class name, normal training images) of an MVTec class folder (its train/good) or of any other
    folder (every image under it). A folder that also holds test images is refused: training on
    defects would silently spoil the model."""
    folder = Path(folder)
    name = folder.resolve().name
    if (folder / "train" / "good").is_dir():
        return name, load_class(folder, need_test=False).train
    if not folder.is_dir():
        raise SpadimError(f"training folder {folder} does not exist: give a folder of normal images")
    classes = _mvtec_classes(folder)
    if classes:
        more = ", ..." if len(classes) > 4 else ""
        raise SpadimError(
            f"{folder} is an MVTec AD root (classes {', '.join(classes[:4])}{more}): give one "
            f"class folder, e.g. {folder / classes[0]}"
        )
    mixed = sorted(c.name for c in folder.iterdir() if c.is_dir() and c.name.lower() in NOT_TRAINING)
    if mixed:
        raise SpadimError(
            f"{folder} holds a {mixed[0]}/ folder, so not only normal images: give the folder "
            f"of normal training images (e.g. {folder / 'train'})"
        )
    return name, find_images(folder)


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def _mask_index(masks_dir: Path) -> dict[Path, list[Path]]:
    """Mask files by relative path without extension, so any image extension matches."""
    index: dict[Path, list[Path]] = {}
    for m in find_images(masks_dir):
        index.setdefault(m.relative_to(masks_dir).with_suffix(""), []).append(m)
    return index


def _find_mask(img: Path, test_dir: Path, masks_dir: Path, index: dict[Path, list[Path]]) -> Path:
    rel = img.relative_to(test_dir)
    keys = [rel.parent / f"{img.stem}{suffix}" for suffix in MASK_SUFFIXES]
    matches = [m for key in keys for m in index.get(key, [])]
    if len(matches) > 1:
        raise SpadimError(
            f"{len(matches)} masks match test image {img}: {', '.join(map(str, matches))}; keep one of them"
        )
    if not matches:
        expected = " or ".join(str(masks_dir / k) + ".png" for k in keys)
        raise SpadimError(
            f"missing mask for test image {img}: expected {expected} (any image extension); "
            f"add it, move the image to {test_dir / 'good'}, or drop `masks_dir` (image metrics "
            f"only)"
        )
    return matches[0]


def load_plain(
    train_dir: Path, test_dir: Path, masks_dir: Path | None = None, name: str | None = None
) -> ClassData:
    """One class from plain folders (see the module docstring); named ``name`` or after the training
    folder's parent. Without ``masks_dir`` the class has no pixel labels (``has_masks=False``)."""
    train_dir, test_dir = Path(train_dir), Path(test_dir)
    masks_dir = Path(masks_dir) if masks_dir is not None else None
    for param, folder in (("train_dir", train_dir), ("test_dir", test_dir), ("masks_dir", masks_dir)):
        if folder is not None and not folder.is_dir():
            raise SpadimError(f"`{param}={folder}` does not exist or is not a folder: give a folder of images")
    if _inside(test_dir, train_dir) or _inside(train_dir, test_dir):
        raise SpadimError(
            f"`train_dir={train_dir}` and `test_dir={test_dir}` overlap: give two separate folders, "
            f"or the training images would be tested (or the test images trained on)"
        )
    if masks_dir is not None and (_inside(masks_dir, train_dir) or _inside(masks_dir, test_dir)):
        raise SpadimError(
            f"`masks_dir={masks_dir}` lies inside `train_dir` or `test_dir`: move the masks to a folder "
            f"of their own, or they would be read as images"
        )
    name = name or train_dir.resolve().parent.name
    masks_text = masks_dir or "none (image metrics only)"
    data = ClassData(
        name=name,
        root=train_dir.resolve().parent,
        train=find_images(train_dir),
        test=[],
        has_masks=masks_dir is not None,
        origin=f"train {train_dir}, test {test_dir}, masks {masks_text}",
    )
    index = _mask_index(masks_dir) if masks_dir is not None else {}
    for img in find_images(test_dir):
        rel = img.relative_to(test_dir)
        if len(rel.parts) == 1:
            raise SpadimError(
                f"test image {img} is directly in {test_dir}: move it to {test_dir / 'good'}/ "
                f"if it is normal, or to a folder named after its defect, e.g. "
                f"{test_dir / 'scratch'}/"
            )
        normal = rel.parts[0].lower() in NORMAL_NAMES
        data.test.append(img)
        data.defects.append("good" if normal else rel.parts[0])
        mask = None if normal or masks_dir is None else _find_mask(img, test_dir, masks_dir, index)
        data.masks.append(mask)
    return data
