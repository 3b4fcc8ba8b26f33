"""Tests for the deterministic synthetic MVTec-layout data set."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from spadim.errors import SpadimError
from spadim.data.embedded.dataset import DEFAULT_CLASSES, DEFECTS, MARKER_NAME, make_dataset

SMALL = {"n_train": 3, "n_test_good": 2, "n_test_defect": 2, "size": 64, "seed": 0}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("synth") / "data", **SMALL)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_layout_and_masks(small_set: Path) -> None:
    assert sorted(p.name for p in small_set.iterdir() if p.is_dir()) == sorted(
        DEFAULT_CLASSES
    )
    for cls in DEFAULT_CLASSES:
        base = small_set / cls
        assert sorted(p.name for p in base.iterdir()) == [
            "ground_truth",
            "test",
            "train",
        ]
        assert sorted(p.name for p in (base / "train").iterdir()) == ["good"]
        assert sorted(p.name for p in (base / "test").iterdir()) == sorted(
            ("good",) + DEFECTS[cls]
        )
        assert sorted(p.name for p in (base / "ground_truth").iterdir()) == sorted(
            DEFECTS[cls]
        )
        assert [p.name for p in sorted((base / "train/good").iterdir())] == [
            "000.png",
            "001.png",
            "002.png",
        ]
        assert [p.name for p in sorted((base / "test/good").iterdir())] == [
            "000.png",
            "001.png",
        ]
        for defect in DEFECTS[cls]:
            images = sorted((base / "test" / defect).iterdir())
            masks = sorted((base / "ground_truth" / defect).iterdir())
            assert [p.name for p in images] == ["000.png", "001.png"]
            assert [p.name for p in masks] == ["000_mask.png", "001_mask.png"]
            for img_path, mask_path in zip(images, masks, strict=True):
                img = cv2.imread(str(img_path), cv2.IMREAD_UNCHANGED)
                mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
                assert mask.dtype == np.uint8 and mask.ndim == 2
                assert mask.shape == img.shape[:2] == (64, 64)
                assert set(np.unique(mask)) == {0, 255}


def test_channels(small_set: Path) -> None:
    for cls in DEFAULT_CLASSES:
        for p in (small_set / cls).glob("t*/*/*.png"):
            img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
            assert img.dtype == np.uint8
            if cls == "plate":
                assert img.shape == (64, 64)
            else:
                assert img.shape == (64, 64, 3)


def test_deterministic_and_seeded(small_set: Path, tmp_path: Path) -> None:
    again = make_dataset(tmp_path / "again", **SMALL)
    assert _files(again) == _files(small_set)
    other = make_dataset(tmp_path / "other", **{**SMALL, "seed": 1})
    for rel in (
        "tile/train/good/000.png",
        "nut/test/chip/000.png",
        "plate/test/good/001.png",
    ):
        assert (other / rel).read_bytes() != (small_set / rel).read_bytes()


def test_images_differ_within_class(small_set: Path) -> None:
    for cls in DEFAULT_CLASSES:
        a, b = (
            cv2.imread(str(small_set / cls / "train/good" / f), cv2.IMREAD_UNCHANGED)
            for f in ("000.png", "001.png")
        )
        assert np.abs(a.astype(int) - b.astype(int)).mean() > 1.0


def test_rerun_is_noop(small_set: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in small_set.rglob("*")}
    messages: list[str] = []
    assert make_dataset(small_set, progress=messages.append, **SMALL) == small_set
    assert {p: p.stat().st_mtime_ns for p in small_set.rglob("*")} == before
    assert messages and "already" in messages[0]
    marker = json.loads((small_set / MARKER_NAME).read_text())
    assert marker["seed"] == 0 and marker["classes"] == list(DEFAULT_CLASSES)


def test_refuses_foreign_or_different_folder(small_set: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(SpadimError, match="choose an empty folder"):
        make_dataset(foreign, **SMALL)
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(SpadimError, match="different synthetic data set"):
        make_dataset(small_set, **{**SMALL, "seed": 5})
    assert not list(tmp_path.glob(".*partial*"))


def test_empty_existing_folder_is_used(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    make_dataset(
        root, classes=("fabric",), n_train=1, n_test_good=0, n_test_defect=1, size=48
    )
    assert (root / "fabric/ground_truth/hole/000_mask.png").is_file()
    assert (root / MARKER_NAME).is_file()


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(SpadimError, match="valid classes: tile, fabric, nut, plate"):
        make_dataset(tmp_path / "x", classes=("tile", "screw"))
    with pytest.raises(SpadimError, match="size"):
        make_dataset(tmp_path / "x", size=8)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("cls", DEFAULT_CLASSES)
def test_mask_area_at_default_size(cls: str, tmp_path: Path) -> None:
    root = make_dataset(
        tmp_path / "d",
        classes=(cls,),
        n_train=1,
        n_test_good=1,
        n_test_defect=2,
        size=256,
    )
    for defect in DEFECTS[cls]:
        for p in sorted((root / cls / "ground_truth" / defect).iterdir()):
            frac = (cv2.imread(str(p), cv2.IMREAD_UNCHANGED) > 0).mean()
            assert 0.003 <= frac <= 0.05, (p, frac)
    assert not (root / cls / "ground_truth" / "good").exists()


def test_interrupted_run_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spadim.data.embedded import dataset as synth

    real = synth.render_image
    calls = iter(range(1000))

    def flaky(*args, **kwargs):
        if next(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(synth, "render_image", flaky)
    with pytest.raises(KeyboardInterrupt):
        make_dataset(tmp_path / "data", **SMALL)
    assert list(tmp_path.iterdir()) == []
