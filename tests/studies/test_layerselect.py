"""--layers auto: the split, the tie-break, a class where only layer 1 sees the defects,
determinism, no test label read during selection, and the CLI end to end on tiny data."""

from __future__ import annotations

import builtins
import csv
import json
import math
import pathlib

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import spadim.data.mvtec
from spadim.cli import main
from spadim.cli.args import layers_arg
from spadim.errors import SpadimError
from spadim.features.extractor import ALL_COMBOS, FeatureSet
from spadim.data.defects import KINDS
from spadim.run.layerchoice import (
    COPIES,
    MOST_VALIDATED,
    fold_rows,
    pick,
    select_layers,
    select_many,
    validation_folds,
)
from spadim.features.config import BackboneConfig
from spadim.methods import PadimConfig, SpadeConfig
from spadim.run.pipeline import AUTO, Settings, make_extractor

from conftest import FAST

CROP = 64


def _small_settings() -> Settings:
    """resnet18 on 64 px frames, SPADE with 3 neighbours and PaDiM with 40 channels."""
    return Settings(
        backbone=BackboneConfig(arch="resnet18", resize=72, crop=CROP),
        configs={"spade": SpadeConfig(k=3), "padim": PadimConfig(d=40)},
    )


def test_folds_are_seeded_partitions_and_the_validated_one_is_at_least_a_fifth():
    for n in (2, 3, 6, 20, 51):
        folds = fold_rows(n, seed=3)
        assert sorted(i for f in folds for i in f) == list(range(n))  # every image in exactly one part
        assert len(folds) >= 2 and all(0 < len(f) < n for f in folds)
        assert len(folds[0]) >= 0.2 * n  # the part that validates by default
        assert folds == fold_rows(n, seed=3)
    assert fold_rows(20, 0) != fold_rows(20, 1)
    with pytest.raises(SpadimError):
        fold_rows(1, 0)


def test_at_most_sixteen_images_validate_and_the_rest_fit():
    fx = FineOnlyBackbone()
    for n in (20, 80, 81, 200):
        train = fx.features(_normal_images(n, 3))
        folds, _ = validation_folds(fx, train, seed=4)
        part = fold_rows(n, 4)[0]
        val = folds.val_rows[0]
        assert val == (part if len(part) <= MOST_VALIDATED else sorted(val))
        assert len(val) == min(len(part), MOST_VALIDATED) and set(val) <= set(part)
        fit, held = folds.fold(0)
        assert len(fit) == n - len(val) and len(held) == len(val) * (1 + COPIES)
    assert validation_folds(fx, train, seed=4)[0].val_rows == folds.val_rows  # seeded


def test_pick_breaks_ties_towards_fewer_then_lower_layers():
    auprs = {"1+2": 0.5, "3": 0.5, "2": 0.5, "1+3+4": 0.5, "4": 0.1}
    assert pick(auprs) == (2,)
    assert pick({"1+2": 0.5, "1+3": 0.5, "2+3": 0.5}) == (1, 2)
    assert pick({"1": 0.4, "2+3": 0.6}) == (2, 3)
    assert pick({"1": float("nan"), "2": 0.1}) == (2,)


def test_layers_auto_marker():
    assert layers_arg("auto") == AUTO and layers_arg(" AUTO ") == AUTO
    assert layers_arg("3,1") == (1, 3)
    with pytest.raises(SpadimError):
        layers_arg("automatic")
    with pytest.raises(SpadimError):
        Settings(layers="best")
    s = Settings(backbone=BackboneConfig(arch="resnet18"), layers=AUTO)
    assert s.auto_layers and s.layers_label == "auto"
    with pytest.raises(SpadimError):
        s.method("padim")  # a subset must be chosen first


# ---------------------------------------------------------------- a fake backbone where only layer 1 is fine
class FineOnlyBackbone:
    """Layer 1 sees the image at 4 px (a defect changes its features in place); layers 2-4 see it
    only through coarse pooling and carry strong per-image noise, so fine defects are invisible there.
    Stands in for ``FeatureExtractor.frames`` without a network."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.proj = {layer: torch.randn(3, 8 * layer, generator=g) for layer in (1, 2, 3, 4)}
        self.n_forward = 0

    def features(self, images: np.ndarray) -> FeatureSet:
        x = torch.from_numpy(images).float().permute(0, 3, 1, 2) / 255.0
        layers = {}
        for layer in (1, 2, 3, 4):
            pooled = F.avg_pool2d(x, 4 * 2 ** (layer - 1))  # 16, 8, 4, 2 px grids
            feats = torch.einsum("nchw,cd->ndhw", pooled, self.proj[layer])
            if layer > 1:  # per-image noise, reproducible from the image content
                seeds = [int(np.asarray(im, np.int64).sum()) % 2**31 for im in images]
                feats = feats + torch.stack(
                    [torch.randn(feats.shape[1:], generator=torch.Generator().manual_seed(s)) for s in seeds]
                )
            layers[layer] = feats.contiguous(memory_format=torch.channels_last)
        self.n_forward += len(images)
        return FeatureSet(
            [pathlib.Path(f"<{i}>") for i in range(len(images))],
            layers,
            layers[4].mean((2, 3)),
            images,
            [images.shape[1:3]] * len(images),
        )

    def frames(self, images: np.ndarray, desc: str = "") -> FeatureSet:
        return self.features(images)


def _normal_images(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.normal(128, 4, (n, CROP, CROP, 1)).repeat(3, axis=3)
    return np.clip(base, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("method", ["spade", "padim"])
def test_fine_defects_choose_a_subset_with_layer_1(method):
    fx = FineOnlyBackbone()
    train = fx.features(_normal_images(20, 0))
    s = _small_settings()
    sel = select_layers(fx, train, s, method, seed=0)
    assert 1 in sel.chosen, sel.synthetic_aupr
    assert set(sel.synthetic_aupr) == {"+".join(map(str, c)) for c in ALL_COMBOS}
    assert sel.synthetic_aupr["1"] > sel.synthetic_aupr["4"]
    assert len(sel.folds) == 1 and len(sel.folds[0]) >= 4
    assert fx.n_forward == 20 + COPIES * len(sel.folds[0])  # only the synthetic frames passed again
    assert len(sel.kinds) == COPIES * len(sel.folds[0]) and set(sel.kinds) <= set(KINDS)


def test_choice_is_deterministic_for_a_seed():
    s = _small_settings()
    runs = []
    for _ in range(2):
        fx = FineOnlyBackbone()
        runs.append(select_many(fx, fx.features(_normal_images(12, 1)), s, ["spade", "padim"], seed=5))
    for m in ("spade", "padim"):
        a, b = runs[0][m], runs[1][m]
        assert a.chosen == b.chosen and a.folds == b.folds and a.kinds == b.kinds
        assert a.synthetic_aupr == pytest.approx(b.synthetic_aupr, rel=1e-6)


# ---------------------------------------------------------------- no test label read
@pytest.fixture
def no_ground_truth(monkeypatch):
    """Every way spadim reads a file or lists a folder fails under ``ground_truth/`` or ``test/``."""
    touched = []

    def guard(path):
        p = str(path)
        if "ground_truth" in p or "/test/" in p or p.endswith("/test"):
            touched.append(p)
            raise AssertionError(f"selection touched {p}")

    def wrap(fn):
        def wrapped(*args, **kw):
            guard(args[0])
            return fn(*args, **kw)

        return wrapped

    def wrap_method(fn):
        def wrapped(self, *args, **kw):
            guard(self)
            return fn(self, *args, **kw)

        return wrapped

    for name in ("iterdir", "open", "read_bytes", "is_file", "is_dir", "exists", "stat", "glob"):
        monkeypatch.setattr(pathlib.Path, name, wrap_method(getattr(pathlib.Path, name)))
    monkeypatch.setattr(builtins, "open", wrap(builtins.open))
    monkeypatch.setattr(cv2, "imread", wrap(cv2.imread))
    monkeypatch.setattr(np, "fromfile", wrap(np.fromfile))
    monkeypatch.setattr(spadim.data.mvtec, "read_mask", lambda *a, **k: guard("ground_truth (read_mask)"))
    monkeypatch.setattr(spadim.data.mvtec, "load_masks", lambda *a, **k: guard("ground_truth (load_masks)"))
    return touched


def test_selection_never_touches_ground_truth(tiny_root, no_ground_truth):
    s = Settings(
        backbone=BackboneConfig(arch="resnet18", weights="random", resize=72, crop=CROP), layers=AUTO
    )
    with pytest.raises(AssertionError):  # the guard works
        (tiny_root / "nut" / "ground_truth").iterdir().__next__()
    no_ground_truth.clear()
    fx = make_extractor(s, None, ["spade", "padim"])
    sel = select_layers(fx, tiny_root / "nut", s, "padim")
    assert sel.chosen and no_ground_truth == []
    paths = sorted((tiny_root / "tile" / "train" / "good").glob("*.png"))
    sels = select_many(fx, paths, s, ["spade"])
    assert sels["spade"].chosen and no_ground_truth == []


# ---------------------------------------------------------------- CLI
def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_evaluate_and_fit_with_layers_auto(tiny_root, tmp_path):
    out = tmp_path / "ev"
    assert (
        main(
            [
                "evaluate",
                str(tiny_root),
                "--layers",
                "auto",
                "--examples",
                "0",
                "--out",
                str(out),
                *FAST,
                "--methods",
                "spade,padim",
            ]
        )
        == 0
    )
    rows = _rows(out / "results.csv")
    assert {r["method"] for r in rows} == {"spade", "padim"}
    for r in rows:
        if r["class"] != "mean":
            assert tuple(int(x) for x in r["layers"].split("+")) in ALL_COMBOS
    meta = json.loads((out / "results.json").read_text())["meta"]
    assert meta["layers"] == "auto" and len(meta["layer_choices"]) == 4
    html = (out / "report.html").read_text()
    assert "Layers chosen from normal images" in html
    model = tmp_path / "m.pt"
    assert (
        main(
            [
                "fit",
                str(tiny_root / "nut"),
                "--method",
                "spade",
                "--layers",
                "auto",
                "--out",
                str(model),
                *FAST,
            ]
        )
        == 0
    )
    chosen = json.loads((tmp_path / "m.pt.layers.json").read_text())["chosen"]
    by_class = {(c["class"], c["method"]): c["layers"] for c in meta["layer_choices"]}
    assert chosen == by_class[("nut", "spade")]  # same data, same seed: the same choice
    assert (
        main(
            [
                "evaluate",
                str(tiny_root),
                "--layers",
                "autoo",
                "--out",
                str(tmp_path / "x"),
                *FAST,
                "--methods",
                "spade,padim",
            ]
        )
        == 2
    )


def test_layer_select_writes_regret_table_and_report(tiny_root, tmp_path):
    out = tmp_path / "ls"
    assert main(["layer-select", str(tiny_root), "--out", str(out), *FAST]) == 0
    rows = _rows(out / "layer_select.csv")
    assert [r["class"] for r in rows] == ["nut", "nut", "tile", "tile", "mean", "mean"]
    subsets = _rows(out / "subsets.csv")
    assert len(subsets) == 2 * 2 * 15
    for r in rows:
        assert math.isclose(float(r["regret"]), float(r["oracle_aupr"]) - float(r["auto_aupr"]), abs_tol=2e-4)
        assert float(r["cost_ratio"]) > 0
        if r["class"] == "mean":
            continue
        # the oracle is the best real AUPR of the 15 subsets, the auto AUPR the chosen subset's real AUPR
        real = {
            s["layers"]: float(s["real_aupr"])
            for s in subsets
            if (s["class"], s["method"]) == (r["class"], r["method"])
        }
        assert float(r["oracle_aupr"]) == pytest.approx(max(real.values()), abs=1e-4)
        assert real[r["oracle_layers"]] == pytest.approx(max(real.values()), abs=1e-4)
        assert float(r["auto_aupr"]) == pytest.approx(real[r["chosen"]], abs=1e-4)
    for method in ("spade", "padim"):
        per_class = [float(r["regret"]) for r in rows if r["method"] == method and r["class"] != "mean"]
        (mean,) = [r for r in rows if r["method"] == method and r["class"] == "mean"]
        assert float(mean["regret"]) == pytest.approx(np.mean(per_class), abs=2e-4)
    results = json.loads((out / "results.json").read_text())["rows"]
    assert {r["layers"] for r in results if r["class"] != "mean"} == {
        r["chosen"] for r in rows if r["chosen"]
    }
    html = (out / "report.html").read_text()
    assert "Layer subset chosen from normal images (regret)" in html and "oracle" in html
    assert sorted(f.name for f in (out / "per_class").iterdir()) == ["nut.json", "tile.json"]
    before = (out / "layer_select.csv").read_text()
    assert (
        main(["layer-select", str(tiny_root), "--out", str(out), *FAST]) == 0
    )  # resumes: nothing recomputed
    assert (out / "layer_select.csv").read_text() == before


def test_cross_validation_pools_every_fold_and_one_fold_is_its_first_part():
    s = _small_settings()
    fx = FineOnlyBackbone()
    train = fx.features(_normal_images(10, 2))
    full = select_many(fx, train, s, ["spade"], seed=1, folds=5, validated=5, copies=1)["spade"]
    assert sorted(i for f in full.folds for i in f) == list(range(10)) and len(full.kinds) == 10
    one = select_many(fx, train, s, ["spade"], seed=1, folds=5, validated=1, copies=1)["spade"]
    assert one.folds == full.folds[:1]
    assert one.synthetic_aupr != full.synthetic_aupr  # pooled over 5 folds, not the first one alone
