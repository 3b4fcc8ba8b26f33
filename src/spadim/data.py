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

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .errors import SpadimError
from .lists import parse_list

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@dataclass(frozen=True)
class Preprocess:
    """Resize the shorter side to ``resize``, then centre-crop ``crop`` x ``crop``."""

    resize: int = 256
    crop: int = 224

    def __post_init__(self):
        if self.resize < 1 or self.crop < 1 or self.crop > self.resize:
            raise SpadimError(
                f"invalid sizes resize={self.resize} crop={self.crop}: need 1 <= crop <= resize"
            )

    def _geometry(self, h: int, w: int) -> tuple[int, int, int, int]:
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


def normalize(images: np.ndarray) -> np.ndarray:
    """uint8 [N,H,W,3] RGB -> float32 [N,3,H,W] with ImageNet mean/std."""
    x = images.astype(np.float32) / 255.0
    x = (x - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def read_rgb(path: Path) -> np.ndarray:
    """Read an image as uint8 RGB; grayscale is replicated to 3 channels, alpha dropped."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise SpadimError(f"cannot read image {path}: file is corrupt or not an image; replace or remove it")
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
    m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise SpadimError(f"cannot read mask {path}: file is corrupt or not an image; replace it")
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
    """One MVTec class: training images and labelled test images."""

    name: str
    root: Path
    train: list[Path]
    test: list[Path]
    defects: list[str] = field(default_factory=list)  # per test image: "good" or defect type
    masks: list[Path | None] = field(default_factory=list)  # per test image, None for good

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

    ``root`` may also be a class folder itself.
    """
    root = Path(root)
    if not root.is_dir():
        raise SpadimError(f"data folder {root} does not exist: give an MVTec AD root or class folder")
    if (root / "train").is_dir():
        return [root]
    if only:
        names = parse_list(only, "class", "--classes", example="hazelnut,grid")
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
