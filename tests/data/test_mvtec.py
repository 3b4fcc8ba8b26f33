import cv2
import numpy as np
import pytest

from spadim.data.mvtec import (
    Preprocess,
    check_class,
    check_images,
    find_classes,
    load_class,
    load_images,
    load_masks,
    normalize,
    read_rgb,
)
from spadim.errors import SpadimError


def test_preprocess_geometry_non_square():
    pre = Preprocess(resize=32, crop=24)
    img = np.zeros((60, 120, 3), np.uint8)
    img[:, 60:] = 255  # right half white
    out = pre.image(img)
    assert out.shape == (24, 24, 3)
    # shorter side 60 -> 32, width 120 -> 64; crop centred at column 32: left half black, right half white
    assert out[:, :10].max() == 0 and out[:, 14:].min() == 255
    m = pre.mask(img[:, :, 0] > 0)
    assert m.shape == (24, 24) and m.dtype == bool
    assert not m[:, :12].any() and m[:, 12:].all()


def test_mask_stays_aligned_with_image():
    pre = Preprocess(256, 224)
    img = np.zeros((300, 300, 3), np.uint8)
    mask = np.zeros((300, 300), bool)
    img[100:140, 200:260] = 255
    mask[100:140, 200:260] = True
    out_i, out_m = pre.image(img)[:, :, 0] > 127, pre.mask(mask)
    assert (out_i != out_m).mean() < 0.005


def test_read_rgb_formats(tmp_path):
    gray = (np.arange(64 * 64).reshape(64, 64) % 256).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    g = read_rgb(tmp_path / "g.png")
    assert g.shape == (64, 64, 3) and (g == gray[:, :, None]).all()
    bgra = np.zeros((8, 8, 4), np.uint8)
    bgra[..., 2] = 200  # red in BGR order
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    assert read_rgb(tmp_path / "a.png")[0, 0].tolist() == [200, 0, 0]
    cv2.imwrite(str(tmp_path / "w.png"), np.full((4, 4), 65535, np.uint16))
    assert read_rgb(tmp_path / "w.png").max() == 255
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(SpadimError, match="bad.png"):
        read_rgb(tmp_path / "bad.png")


def test_normalize_matches_imagenet_stats():
    x = normalize(np.full((1, 2, 2, 3), 255, np.uint8))
    assert x.shape == (1, 3, 2, 2)
    np.testing.assert_allclose(x[0, :, 0, 0], (1 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]), rtol=1e-6)


def test_load_class_and_masks(tiny_root):
    data = load_class(tiny_root / "nut")
    assert len(data.train) == 6 and len(data.test) == 6
    assert sorted(set(data.defects)) == ["chip", "good", "scratch"]
    assert data.labels.sum() == 4
    pre = Preprocess(72, 64)
    imgs, shapes = load_images(data.test, pre)
    masks = load_masks(data, pre, shapes)
    assert imgs.shape == (6, 64, 64, 3) and masks.shape == (6, 64, 64)
    assert all(masks[i].any() == bool(data.labels[i]) for i in range(6))
    assert [p.name for p in find_classes(tiny_root)] == ["nut", "tile"]
    assert [p.name for p in find_classes(tiny_root, "tile")] == ["tile"]
    assert find_classes(tiny_root / "nut") == [tiny_root / "nut"]


def test_bad_layouts(tiny_copy, tmp_path):
    with pytest.raises(SpadimError, match="does not exist"):
        load_class(tmp_path / "nope")
    with pytest.raises(SpadimError, match="'zzz' not found"):
        find_classes(tiny_copy, "zzz")
    for f in (tiny_copy / "tile" / "train" / "good").iterdir():
        f.unlink()
    with pytest.raises(SpadimError, match="no training images"):
        load_class(tiny_copy / "tile")
    mask = next((tiny_copy / "nut" / "ground_truth" / "chip").iterdir())
    mask.unlink()
    with pytest.raises(SpadimError, match="missing mask"):
        load_class(tiny_copy / "nut")
    cv2.imwrite(str(mask), np.zeros((10, 12), np.uint8))
    data = load_class(tiny_copy / "nut")
    pre = Preprocess(72, 64)
    _, shapes = load_images(data.test, pre)
    with pytest.raises(SpadimError, match="is 12x10 but image"):
        load_masks(data, pre, shapes)


@pytest.mark.parametrize("ext", [".jpg", ".png", ".bmp"])
def test_truncated_images_are_errors(tmp_path, ext):
    """Decoders may return a grey-filled image for a cut-short file and only warn."""
    rng = np.random.default_rng(0)
    img = cv2.resize((rng.random((30, 30, 3)) * 255).astype(np.uint8), (200, 200))
    path = tmp_path / f"photo{ext}"
    cv2.imwrite(str(path), img)
    full = read_rgb(path)
    assert full.shape == (200, 200, 3)
    data = path.read_bytes()
    for keep in (len(data) - 2, len(data) // 2):
        path.write_bytes(data[:keep])
        with pytest.raises(SpadimError, match=r"cannot read image .*photo.*truncated"):
            read_rgb(path)
    if ext == ".jpg":  # bytes after the end-of-image marker (some cameras pad) are fine
        path.write_bytes(data + b"\0" * 16)
        assert (read_rgb(path) == full).all()


def test_check_class_decodes_images_and_masks(tiny_copy):
    data = load_class(tiny_copy / "nut")
    check_class(data)
    assert check_images(data.train[:2]) == [(96, 96), (96, 96)]
    mask = next(m for m in data.masks if m is not None)
    mask.write_bytes(mask.read_bytes()[:-20])
    with pytest.raises(SpadimError, match=f"cannot read mask {mask}.*truncated"):
        check_class(data)
    cv2.imwrite(str(mask), np.zeros((10, 12), np.uint8))
    with pytest.raises(SpadimError, match="is 12x10 but image"):
        check_class(data)


def test_classes_of_a_class_folder(tiny_root):
    nut = tiny_root / "nut"
    assert find_classes(nut, "nut") == [nut]
    with pytest.raises(SpadimError, match="`classes` names 'tile' but .* is the class folder 'nut'"):
        find_classes(nut, "tile")
    with pytest.raises(SpadimError, match="given twice"):
        find_classes(nut, "nut,nut")
    with pytest.raises(SpadimError, match="given twice"):
        find_classes(tiny_root, "nut,tile,nut")
