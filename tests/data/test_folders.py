"""Plain folders: recursive image discovery, test labels from folder names, mask matching."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from spadim.data.folders import find_images, load_plain, training_images
from spadim.data.mvtec import Preprocess, check_class, load_class, load_images, load_masks, read_rgb
from spadim.errors import SpadimError


def _image(path: Path, h: int = 20, w: int = 30, value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((h, w, 3), value, np.uint8))
    return path


def _mask(path: Path, h: int = 20, w: int = 30) -> Path:
    m = np.zeros((h, w), np.uint8)
    m[5:10, 5:10] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), m)
    return path


def test_find_images_recurses_sorted_and_skips_hidden(tmp_path):
    for rel in ["b.png", "a/2.jpg", "a/1.PNG", "a/deep/0.bmp", "z.tif"]:
        _image(tmp_path / rel)
    _image(tmp_path / ".hidden.png")
    _image(tmp_path / "a" / "._resource_fork.png")
    _image(tmp_path / ".cache" / "x.png")
    (tmp_path / "notes.txt").write_text("not an image")
    found = [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)]
    assert found == ["a/1.PNG", "a/2.jpg", "a/deep/0.bmp", "b.png", "z.tif"]


def test_find_images_errors_name_the_folder(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    _image(tmp_path / "empty" / ".only_hidden.png")
    with pytest.raises(SpadimError, match=r"no images .* under .*empty"):
        find_images(tmp_path / "empty")
    with pytest.raises(SpadimError, match="nope is not an existing folder"):
        find_images(tmp_path / "nope")


def test_training_images_of_an_mvtec_class_and_of_any_folder(tiny_root, tmp_path):
    name, paths = training_images(tiny_root / "nut")
    assert name == "nut" and paths == sorted((tiny_root / "nut" / "train" / "good").glob("*.png"))
    for rel in ["line_a/1.png", "line_a/night/2.png", "3.png"]:
        _image(tmp_path / "bolts" / rel)
    name, paths = training_images(tmp_path / "bolts")
    assert name == "bolts" and [p.name for p in paths] == ["3.png", "1.png", "2.png"]


def test_training_images_refuses_folders_holding_test_images(tiny_root, tmp_path):
    with pytest.raises(SpadimError, match="is an MVTec AD root .* give one class folder"):
        training_images(tiny_root)
    _image(tmp_path / "cls" / "train" / "1.png")
    _image(tmp_path / "cls" / "test" / "crack" / "1.png")
    with pytest.raises(SpadimError, match=r"holds a test/ folder"):
        training_images(tmp_path / "cls")
    with pytest.raises(SpadimError, match="does not exist"):
        training_images(tmp_path / "missing")


def _plain(root: Path, mask_suffix: str = "") -> tuple[Path, Path, Path]:
    """train/ (nested), test/OK + test/Normal + test/crack (nested) + test/scratch, masks/<defect>/..."""
    for rel in ["1.png", "sub/2.png", "sub/deeper/3.png"]:
        _image(root / "train" / rel)
    for rel in ["OK/1.png", "Normal/2.png", "crack/1.png", "crack/batch7/4.jpg", "scratch/1.png"]:
        _image(root / "test" / rel)
    for rel in ["crack/1", "crack/batch7/4", "scratch/1"]:
        _mask(root / "masks" / f"{rel}{mask_suffix}.png")
    return root / "train", root / "test", root / "masks"


@pytest.mark.parametrize("suffix", ["", "_mask"])
def test_load_plain_labels_and_masks(tmp_path, suffix):
    train, test, masks = _plain(tmp_path / "line3", suffix)
    data = load_plain(train, test, masks)
    assert data.name == "line3" and data.has_masks
    assert [p.relative_to(train).as_posix() for p in data.train] == ["1.png", "sub/2.png",
                                                                      "sub/deeper/3.png"]
    rel = [p.relative_to(test).as_posix() for p in data.test]
    assert rel == ["Normal/2.png", "OK/1.png", "crack/1.png", "crack/batch7/4.jpg", "scratch/1.png"]
    assert data.defects == ["good", "good", "crack", "crack", "scratch"]
    assert data.labels.tolist() == [0, 0, 1, 1, 1]
    expected = [None, None, "crack/1", "crack/batch7/4", "scratch/1"]
    assert [m and m.relative_to(masks).as_posix() for m in data.masks] == [
        e and f"{e}{suffix}.png" for e in expected]
    check_class(data)


def test_load_plain_mvtec_ground_truth_as_masks(tiny_root):
    """An MVTec class read as plain folders: ground_truth/<defect>/<stem>_mask.png are its masks."""
    cls = tiny_root / "nut"
    plain, mvtec = load_plain(cls / "train", cls / "test", cls / "ground_truth", name="nut"), load_class(cls)
    assert (plain.train, plain.test, plain.defects, plain.masks) == (mvtec.train, mvtec.test, mvtec.defects,
                                                                     mvtec.masks)
    assert sum(m is not None for m in plain.masks) == 4


def test_load_plain_without_masks_has_no_pixel_labels(tmp_path):
    train, test, _ = _plain(tmp_path / "line3")
    data = load_plain(train, test, name="bolts")
    assert data.name == "bolts" and not data.has_masks and data.masks == [None] * 5
    assert data.labels.tolist() == [0, 0, 1, 1, 1]
    assert "masks none" in data.origin


def test_load_plain_missing_mask_names_image_and_expected_paths(tmp_path):
    train, test, masks = _plain(tmp_path / "line3")
    (masks / "scratch" / "1.png").unlink()
    _image(masks / "crack" / "unrelated.png")
    with pytest.raises(SpadimError) as err:
        load_plain(train, test, masks)
    msg = str(err.value)
    assert "\n" not in msg and str(test / "scratch" / "1.png") in msg
    assert str(masks / "scratch" / "1.png") in msg and str(masks / "scratch" / "1_mask.png") in msg
    assert "drop `masks_dir`" in msg


def test_load_plain_two_matching_masks_are_refused(tmp_path):
    train, test, masks = _plain(tmp_path / "line3")
    _mask(masks / "crack" / "1_mask.png")
    with pytest.raises(SpadimError, match=r"2 masks match test image .*crack.1\.png"):
        load_plain(train, test, masks)


def test_load_plain_bad_layouts(tmp_path):
    train, test, masks = _plain(tmp_path / "line3")
    _image(test / "loose.png")
    with pytest.raises(SpadimError, match=r"loose\.png is directly in .*move it to .*good"):
        load_plain(train, test)
    (test / "loose.png").unlink()
    with pytest.raises(SpadimError, match="`test_dir=.*nope` does not exist"):
        load_plain(train, tmp_path / "nope")
    with pytest.raises(SpadimError, match="overlap"):
        load_plain(tmp_path / "line3", test)
    with pytest.raises(SpadimError, match="`masks_dir=.*` lies inside"):
        load_plain(train, test, test / "crack")
    empty = tmp_path / "empty_train"
    empty.mkdir()
    with pytest.raises(SpadimError, match=r"no images .* under .*empty_train"):
        load_plain(empty, test)


def test_mixed_sizes_grayscale_and_16_bit_through_the_folder_path(tmp_path):
    root = tmp_path / "cam"
    _image(root / "train" / "wide.png", 40, 90)
    _image(root / "train" / "tall" / "tall.jpg", 100, 30)
    gray = root / "train" / "gray.png"
    assert cv2.imwrite(str(gray), np.full((50, 50), 77, np.uint8))
    deep = root / "test" / "good" / "deep16.png"
    deep.parent.mkdir(parents=True)
    assert cv2.imwrite(str(deep), np.full((60, 80, 3), 65535, np.uint16))
    defect = root / "test" / "dent" / "gray16.png"
    defect.parent.mkdir(parents=True)
    assert cv2.imwrite(str(defect), np.full((70, 45), 257 * 40, np.uint16))
    centre = np.zeros((70, 45), np.uint8)
    centre[30:40, 18:28] = 255  # inside the centre crop
    (root / "masks" / "dent").mkdir(parents=True)
    assert cv2.imwrite(str(root / "masks" / "dent" / "gray16.png"), centre)
    data = load_plain(root / "train", root / "test", root / "masks")
    check_class(data)
    pre = Preprocess(72, 64)
    train, shapes = load_images(data.train, pre)
    assert train.shape == (3, 64, 64, 3) and train.dtype == np.uint8
    assert sorted(shapes) == [(40, 90), (50, 50), (100, 30)]
    assert (train[[p.name for p in data.train].index("gray.png")] == 77).all()
    test, test_shapes = load_images(data.test, pre)
    assert test_shapes == [(70, 45), (60, 80)] and (test[1] == 255).all() and (test[0] == 40).all()
    masks = load_masks(data, pre, test_shapes)
    assert masks.shape == (2, 64, 64) and masks[0].any() and not masks[1].any()
    assert read_rgb(defect).shape == (70, 45, 3)


def test_mask_of_another_size_fails_the_check(tmp_path):
    train, test, masks = _plain(tmp_path / "line3")
    _mask(masks / "scratch" / "1.png", 21, 30)
    data = load_plain(train, test, masks)
    with pytest.raises(SpadimError, match=r"mask .*scratch.1\.png is 30x21 but image .* is 30x20"):
        check_class(data)
