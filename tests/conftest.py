"""Shared fixtures: a tiny generated data set and fast settings (random resnet18, 64 px)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from spadim.data.embedded.dataset import make_dataset

# Tests never reach the internet: weight downloads are off unless a test serves them on 127.0.0.1.
os.environ["SPADIM_OFFLINE"] = "1"
# The search-backend probe remembers its result in the user's cache: tests keep theirs private.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="spadim-test-cache-")
SHARED = Path(__file__).resolve().parents[2] / "shared"
CAFFE_WEIGHTS = SHARED / "weights" / "resnet50_caffe-44e9675b.pth"
SUBSET = SHARED / "data" / "mvtec_ad_subset"

# Plumbing tests use an untrained network on purpose: they check computations, not accuracy.
FAST = ["--arch", "resnet18", "--weights", "random", "--resize", "72", "--crop", "64", "--seed", "0"]


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """Two classes (a texture and an object), 96 px, 6 train / 2 good / 2+2 defective test images."""
    root = tmp_path_factory.mktemp("data") / "toy"
    make_dataset(root, classes=("tile", "nut"), n_train=6, n_test_good=2, n_test_defect=2, size=96, seed=0)
    return root


@pytest.fixture
def tiny_copy(tiny_root, tmp_path) -> Path:
    """A private copy of the tiny data set that a test may damage."""
    dst = tmp_path / "toy"
    shutil.copytree(tiny_root, dst)
    return dst


# A real PostgreSQL, started on demand by the tests that ask for it (tests/record).
from postgres_server import fresh_postgres, postgres_url  # noqa: E402, F401


def good_with_odd(source: Path, folder: Path) -> Path:
    """``folder``: the good images of ``source`` plus ``odd.png``, the first one's colours inverted (a part
    no good image resembles, filed as good), for the audit to flag."""
    import cv2

    folder.mkdir(parents=True)
    paths = sorted(source.glob("*.png"))
    for path in paths:
        shutil.copy(path, folder / path.name)
    cv2.imwrite(str(folder / "odd.png"), 255 - cv2.imread(str(paths[0])))
    return folder
