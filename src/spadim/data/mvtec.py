"""MVTec AD layout: discovery, image/mask reading and the standard preprocessing.

Layout::

    <root>/<class>/train/good/*.png
    <root>/<class>/test/good/*.png
    <root>/<class>/test/<defect>/*.png
    <root>/<class>/ground_truth/<defect>/<name>_mask.png

Preprocessing follows the SPADE/PaDiM reference code: resize the shorter side to
``resize`` (256), centre-crop ``crop`` (224), ImageNet normalisation. Images are
resized with area interpolation when shrinking (the anti-aliased analogue of PIL's
filter used by the reference code) and bilinear when enlarging; masks with nearest.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from spadim.errors import SpadimError
from .guard import check_header
from spadim.lists import parse_list

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


FRAMES = ("crop", "whole")


@dataclass(frozen=True)
class Preprocess:
    """``frame="crop"`` (the papers): resize the shorter side to ``resize``, centre-crop ``crop`` x ``crop``.
    ``frame="whole"`` (inspection): squash the whole image to ``crop`` x ``crop``, so that no border is
    lost; the aspect ratio is not kept because SPADE's and PaDiM's per-position statistics need one grid
    for every image (a line's camera gives one aspect ratio anyway)."""

    resize: int = 256
    crop: int = 224
    frame: str = "crop"

    def __post_init__(self):
        if self.resize < 1 or self.crop < 1 or self.crop > self.resize:
            raise SpadimError(
                f"invalid sizes resize={self.resize} crop={self.crop}: need 1 <= crop <= resize"
            )
        if self.frame not in FRAMES:
            raise SpadimError(f"unknown frame {self.frame!r}: choose one of {', '.join(FRAMES)}")

    def _geometry(self, h: int, w: int) -> tuple[int, int, int, int]:
        if self.frame == "whole":
            return self.crop, self.crop, 0, 0
        scale = self.resize / min(h, w)
        nh, nw = max(self.resize, round(h * scale)), max(self.resize, round(w * scale))
        return nh, nw, (nh - self.crop) // 2, (nw - self.crop) // 2

    def image(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 HxWx3 RGB -> uint8 crop x crop x 3 RGB."""
        nh, nw, top, left = self._geometry(*rgb.shape[:2])
        interp = cv2.INTER_AREA if nh <= rgb.shape[0] else cv2.INTER_LINEAR
        out = cv2.resize(rgb, (nw, nh), interpolation=interp)
        return out[top : top + self.crop, left : left + self.crop]

    def mask(self, mask: np.ndarray) -> np.ndarray:
        """bool HxW -> bool crop x crop (nearest neighbour)."""
        nh, nw, top, left = self._geometry(*mask.shape[:2])
        out = cv2.resize(mask.astype(np.uint8), (nw, nh), interpolation=cv2.INTER_NEAREST)
        return out[top : top + self.crop, left : left + self.crop].astype(bool)

    def to_original(self, score_map: np.ndarray, shape: tuple[int, int], fill: float = 0.0) -> np.ndarray:
        """float crop x crop map -> float32 H x W on the original image's pixels (bilinear).

        With ``frame="crop"`` the border that was cropped away was never inspected; it gets ``fill``."""
        h, w = int(shape[0]), int(shape[1])
        nh, nw, top, left = self._geometry(h, w)
        canvas = np.full((nh, nw), fill, np.float32)
        canvas[top : top + self.crop, left : left + self.crop] = score_map
        return cv2.resize(canvas, (w, h), interpolation=cv2.INTER_LINEAR)


def normalize(images: np.ndarray) -> np.ndarray:
    """uint8 [N,H,W,3] RGB -> float32 [N,3,H,W] with ImageNet mean/std."""
    x = images.astype(np.float32) / 255.0
    x = (x - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _truncation(data: bytes) -> str | None:
    """Why a PNG/JPEG/BMP file is cut short, or None. Decoders may fill a truncated file's
    missing rows with grey and only warn, which silently spoils the metrics."""
    if data.startswith(_PNG_MAGIC):
        end = data.rfind(b"IEND")
        whole = end >= 12 and data[end - 4 : end] == b"\0\0\0\0" and len(data) >= end + 8  # + CRC
        return None if whole else "no complete PNG IEND chunk at the end"
    if data.startswith(b"\xff\xd8"):
        # EOI marker; some writers pad after it, so look at the tail only (never in entropy-coded data)
        return None if b"\xff\xd9" in data.rstrip(b"\0 \r\n")[-32:] else "no JPEG end-of-image marker (FFD9)"
    if data.startswith(b"BM") and len(data) >= 6 and len(data) < int.from_bytes(data[2:6], "little"):
        return f"BMP header says {int.from_bytes(data[2:6], 'little')} bytes, file has {len(data)}"
    return None


def _decode(path: Path, flags: int, what: str) -> np.ndarray:
    """Read and decode a file; truncated or undecodable files raise SpadimError naming it."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        why = exc.strerror or exc
        raise SpadimError(f"cannot read {what} {path}: {why}; check the file and its permissions") from None
    why = _truncation(data)
    if why:
        raise SpadimError(f"cannot read {what} {path}: file is truncated ({why}); replace it or copy it again")
    check_header(data, str(path))
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flags) if data else None
    if img is None or img.size == 0:
        raise SpadimError(f"cannot read {what} {path}: file is corrupt or not an image; replace or remove it")
    return img


def read_rgb(path: Path) -> np.ndarray:
    """Read an image as uint8 RGB; grayscale is replicated to 3 channels, alpha dropped."""
    return _to_rgb(_decode(path, cv2.IMREAD_UNCHANGED, "image"), path)


def decode_rgb(data: bytes, name: str = "upload") -> np.ndarray:
    """An encoded image held in memory (an upload) -> uint8 RGB, with the file checks of read_rgb."""
    why = _truncation(data)
    if why:
        raise SpadimError(f"cannot read image {name}: file is truncated ({why}); send the whole file")
    check_header(data, name)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if img is None or img.size == 0:
        raise SpadimError(f"cannot read image {name}: not an image OpenCV can decode (PNG, JPEG, BMP, TIFF)")
    return _to_rgb(img, name)


def _to_rgb(img: np.ndarray, path) -> np.ndarray:
    if img.dtype == np.uint16:
        img = (img / 257.0).round().astype(np.uint8)
    elif img.dtype != np.uint8:
        raise SpadimError(f"unsupported pixel type {img.dtype} in {path}: save it as 8- or 16-bit PNG/JPEG")
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    if img.shape[2] == 1:
        return np.repeat(img, 3, axis=2)
    if img.shape[2] == 4:
        img = img[:, :, :3]
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_mask(path: Path, shape: tuple[int, int], image_path: Path) -> np.ndarray:
    """Read a ground-truth mask as bool; it must have the image's height and width."""
    m = _decode(path, cv2.IMREAD_GRAYSCALE, "mask")
    if m.shape != tuple(shape):
        raise SpadimError(
            f"mask {path} is {m.shape[1]}x{m.shape[0]} but image {image_path} is "
            f"{shape[1]}x{shape[0]}: masks must have the image's size"
        )
    return m > 0


def list_images(folder: Path) -> list[Path]:
    """Sorted image files of a folder (not recursive)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


@dataclass
class ClassData:
    """One class: training images and labelled test images (MVTec AD layout or plain folders).

    ``has_masks=False``: no ground truth was given at all, so pixel metrics are not measured ("n/a"),
    which is not the same as a class whose masks happen to be empty (undefined, NaN)."""

    name: str
    root: Path
    train: list[Path]
    test: list[Path]
    defects: list[str] = field(default_factory=list)  # per test image: "good" or defect type
    masks: list[Path | None] = field(default_factory=list)  # per test image, None for good
    has_masks: bool = True
    origin: str = ""  # where the images came from, for reports; empty for the MVTec AD layout

    @property
    def labels(self) -> np.ndarray:
        return np.array([d != "good" for d in self.defects], dtype=np.int64)


def load_class(class_dir: Path, need_test: bool = True) -> ClassData:
    """Index one class folder; raises SpadimError on missing/empty folders or masks."""
    class_dir = Path(class_dir)
    if not class_dir.is_dir():
        raise SpadimError(f"class folder {class_dir} does not exist: give <root>/<class> in the MVTec AD layout")
    train_dir = class_dir / "train" / "good"
    if not train_dir.is_dir():
        raise SpadimError(f"missing training folder {train_dir}: normal images go in <class>/train/good/")
    train = list_images(train_dir)
    if not train:
        raise SpadimError(f"no training images in {train_dir}: add normal images (.png/.jpg) there")
    data = ClassData(name=class_dir.name, root=class_dir, train=train, test=[])
    test_dir = class_dir / "test"
    if not need_test:
        return data
    if not test_dir.is_dir():
        raise SpadimError(f"missing test folder {test_dir}: test images go in <class>/test/<good|defect>/")
    for sub in sorted(p for p in test_dir.iterdir() if p.is_dir()):
        for img in list_images(sub):
            data.test.append(img)
            data.defects.append(sub.name)
            if sub.name == "good":
                data.masks.append(None)
                continue
            mask = class_dir / "ground_truth" / sub.name / f"{img.stem}_mask.png"
            if not mask.is_file():
                raise SpadimError(
                    f"missing mask {mask} for test image {img}: add it or move the image to test/good"
                )
            data.masks.append(mask)
    if not data.test:
        raise SpadimError(f"no test images under {test_dir}: add images to test/good and test/<defect>")
    return data


def find_classes(root: Path, only: str | None = None) -> list[Path]:
    """Class folders under an MVTec root (those with train/good), or the one named ``only``.

    ``root`` may also be a class folder itself; ``only`` must then name just that class.
    """
    root = Path(root)
    if not root.is_dir():
        raise SpadimError(f"data folder {root} does not exist: give an MVTec AD root or class folder")
    if (root / "train").is_dir():
        if only:  # a class folder: the classes may only name that class
            name = root.resolve().name
            wrong = [n for n in parse_list(only, "class", "classes", example=name) if n != name]
            if wrong:
                raise SpadimError(f"`classes` names {wrong[0]!r} but {root} is the class folder {name!r}: give "
                                  f"the MVTec root ({root.resolve().parent}) to choose classes, or drop `classes`")
        return [root]
    if only:
        names = parse_list(only, "class", "classes", example="hazelnut,grid")
        missing = [n for n in names if not (root / n).is_dir()]
        if missing:
            have = ", ".join(sorted(p.name for p in root.iterdir() if (p / "train").is_dir()))
            raise SpadimError(f"class {missing[0]!r} not found in {root}; available: {have or 'none'}")
        return [root / n for n in names]
    classes = sorted(p for p in root.iterdir() if p.is_dir() and (p / "train").is_dir())
    if not classes:
        raise SpadimError(f"no class folders with train/good under {root}: expected the MVTec AD layout")
    return classes


def load_images(paths: list[Path], pre: Preprocess) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Read and preprocess images -> (uint8 [N, crop, crop, 3] RGB, original (H, W) of each)."""
    out = np.zeros((len(paths), pre.crop, pre.crop, 3), np.uint8)
    shapes = []
    for i, p in enumerate(paths):
        rgb = read_rgb(p)
        shapes.append(rgb.shape[:2])
        out[i] = pre.image(rgb)
    return out, shapes


def load_masks(data: ClassData, pre: Preprocess, shapes: list[tuple[int, int]]) -> np.ndarray:
    """Ground-truth masks of the test images -> bool [N, crop, crop] (all False for good).

    ``shapes`` are the original image sizes from :func:`load_images` of ``data.test``.
    """
    out = np.zeros((len(data.test), pre.crop, pre.crop), dtype=bool)
    for i, (img, mask) in enumerate(zip(data.test, data.masks)):
        if mask is not None:
            out[i] = pre.mask(read_mask(mask, shapes[i], img))
    return out


def check_images(paths: list[Path]) -> list[tuple[int, int]]:
    """Decode every image once -> original (H, W) of each; the first unreadable one raises.

    Run before the backbone so that a bad file anywhere stops a run before any work,
    not after hours of it. Threads: OpenCV decodes without the GIL.
    """
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda p: read_rgb(p).shape[:2], paths))


def check_class(data: ClassData) -> None:
    """Decode all train and test images and ground-truth masks of a class (sizes checked)."""
    check_images(data.train)
    shapes = check_images(data.test)
    for img, mask, shape in zip(data.test, data.masks, shapes):
        if mask is not None:
            read_mask(mask, shape, img)
