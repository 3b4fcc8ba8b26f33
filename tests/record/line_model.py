"""A small fitted model and its test images (random resnet18, 64 px: plumbing, not accuracy)."""

from __future__ import annotations

import pytest
from conftest import FAST

from spadim.cli import main
from spadim.data.embedded.dataset import make_dataset


@pytest.fixture(scope="session")
def line(tmp_path_factory):
    root = tmp_path_factory.mktemp("line")
    make_dataset(root / "toy", classes=("nut",), n_train=6, n_test_good=12, n_test_defect=3, size=96, seed=1)
    model = root / "nut.pt"
    fit = ["fit", str(root / "toy" / "nut"), "--method", "padim", "--far", "0.2", "--out", str(model)]
    assert main([*fit, *FAST, "--layers", "1,2,3"]) == 0
    images = sorted((root / "toy" / "nut" / "test").rglob("*.png"))
    return root, model, images
