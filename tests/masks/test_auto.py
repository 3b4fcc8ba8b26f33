"""Learned foreground mask and the ``auto`` object-mask choice."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from spadim.data.embedded import dataset as synth
from spadim.masks import auto
from spadim.masks.auto import MaskPlanner, consensus, edge_defects, split_indices, validation_set
from spadim.features.backbone import load_backbone
from spadim.cli import main
from spadim.cli.args import parse_detectors
from spadim.data.mvtec import Preprocess
from spadim.features.extractor import FeatureExtractor
from spadim.masks.foreground import ForegroundConfig, clean, fit_foreground, leading_eigenvectors
from spadim.masks.keypoints import MaskConfig

from conftest import CAFFE_WEIGHTS, FAST

needs_weights = pytest.mark.skipif(not CAFFE_WEIGHTS.is_file(), reason=f"real weights {CAFFE_WEIGHTS} absent")


def scenes(cls: str, n: int, size: int, seed: int = 5):
    """In-memory normal frames of a synthetic class, dust (clutter) on every object image, and the
    object's silhouette (footprint with its holes filled)."""
    kind = synth._KINDS[cls]
    frames, silhouettes = [], []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        state = kind.render(rng, 2 * size)
        img = kind.finish(rng, state, size, kind.is_object)
        frames.append(np.repeat(img, 3, 2) if img.shape[-1] == 1 else img)
        if kind.is_object:
            silhouettes.append(clean(synth._down(state.alpha.astype(np.float32), size) >= 0.5, 0.0))
    return np.stack(frames), (np.stack(silhouettes) if silhouettes else None)


def extractor(arch: str, weights, crop: int, layers=(2, 3)) -> FeatureExtractor:
    model, w = load_backbone(arch, weights, 0)
    return FeatureExtractor(model, w, Preprocess(crop, crop), 8, None, None, layers, False)


class _Data:
    def __init__(self, n):
        self.train = [None] * n


def planner_on(fx, frames, kp=("orb",), seed=0) -> MaskPlanner:
    fs = fx.frames(frames)
    p = MaskPlanner(fx.layers, frames.shape[1], seed, {d: MaskConfig(detector=d) for d in kp})
    p.start(_Data(len(frames)))
    p.train_chunk(fs)
    return p


@needs_weights
def test_features_mask_covers_object_on_cluttered_background():
    frames, sil = scenes("nut", 12, 224)
    fx = extractor("resnet50_caffe", str(CAFFE_WEIGHTS), 224, (3,))
    feats = fx.frames(frames).layers[3]
    # the mask itself, without the default 4-px safety margin (which trades precision, 0.74 here, for coverage)
    fg = fit_foreground(feats[:8], 224, ForegroundConfig(margin=0))
    masks = fg.masks(feats[8:])
    gt = sil[8:]
    coverage = (masks & gt).sum((1, 2)) / gt.sum((1, 2))
    precision = (masks & gt).sum((1, 2)) / masks.sum((1, 2))
    assert coverage.min() >= 0.9 and precision.min() >= 0.8, (coverage, precision)


@needs_weights
def test_auto_chooses_no_mask_on_texture():
    frames, _ = scenes("tile", 12, 224)
    fx = extractor("resnet50_caffe", str(CAFFE_WEIGHTS), 224, (3,))
    dec = planner_on(fx, frames).decide(fx, frames)
    assert dec.mask == "none" and dec.r == 1.0 and dec.reason.startswith("texture")


def test_auto_is_deterministic_and_defects_lie_inside_the_mask(monkeypatch):
    frames, _ = scenes("nut", 10, 64)
    fx = extractor("resnet18", "random", 64)
    a, b = planner_on(fx, frames), planner_on(fx, frames)
    # force the object branch and let every candidate count as stable, so that the whole path (masks,
    # synthetic defects, the (mask, r) validation) runs on random weights
    monkeypatch.setattr(auto, "MIN_AGREEMENT", 0.0)
    for p in (a, b):
        p.foreground().train_area, p.foreground().structure = 0.3, 0.5
    da, db = a.decide(fx, frames), b.decide(fx, frames)
    assert (da.mask, da.r, da.agreement, da.aupr_by_r, da.reason) == (
        db.mask,
        db.r,
        db.agreement,
        db.aupr_by_r,
        db.reason,
    )
    assert da.aupr_by_r  # the validation ran: one synthetic AUPR per (mask, r)
    truth, clutter_px, regions = a.synthetic
    assert truth.any() and not (truth & clutter_px).any()
    # each defect lies inside the mask it was made for or at its edge (edge defects reach 9% of 64 px out)
    grown = np.stack(
        [cv2.dilate(r.astype(np.uint8), np.ones((13, 13), np.uint8)).astype(bool) for r in regions]
    )
    assert not (truth & ~grown).any()


def test_validation_set_defects_in_or_at_the_mask_clutter_away_from_it_and_exact():
    frames, sil = scenes("nut", 6, 112)
    regions = np.stack([cv2.dilate(m.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) for m in sil])
    bad, truth, clutter_px = validation_set(frames, regions, frames[::-1], seed=3)
    changed = (bad != frames).any(axis=3)
    assert (
        (changed == (truth | clutter_px)).all()
        and truth.any(1).any(1).all()
        and clutter_px.any(1).any(1).all()
    )
    # defects inside the mask or touching its boundary; clutter >= 4 px (112 // 28) from mask and defects
    grown = np.stack(
        [
            cv2.dilate(r.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=12).astype(bool)
            for r in regions
        ]
    )
    assert not (truth & ~grown).any()
    near = np.stack(
        [cv2.dilate(m.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool) for m in regions | truth]
    )
    assert not (clutter_px & near).any()
    again = validation_set(frames, regions, frames[::-1], seed=3)
    assert all((x == y).all() for x, y in zip(again, (bad, truth, clutter_px)))


def test_consensus_is_the_strict_majority():
    a, b, c = (np.array([[1, 1, 0, 0]], bool), np.array([[1, 0, 1, 0]], bool), np.array([[1, 1, 1, 0]], bool))
    assert consensus([a, b, c]).tolist() == [[True, True, True, False]]
    assert consensus([a, b]).tolist() == [[True, False, False, False]]  # 1 of 2 is no majority


def test_edge_defects_change_the_silhouette_and_their_masks_are_exact():
    rng = np.random.default_rng(0)
    img = np.full((8, 64, 64, 3), 200, np.uint8)
    img[:, 16:48, 16:48] = np.random.default_rng(1).integers(0, 80, (8, 32, 32, 3))  # textured dark square
    reg = np.zeros((8, 64, 64), bool)
    reg[:, 16:48, 16:48] = True
    out, truth = edge_defects(img, reg, rng)
    changed = (out != img).any(axis=3)
    assert (truth == changed).all() and truth.any(1).any(1).all()
    edge = reg & ~cv2.erode(reg[0].astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)[None]
    for t, e in zip(truth, edge):  # every defect touches the boundary's neighbourhood
        assert (
            t & cv2.dilate(e.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=6).astype(bool)
        ).any()


def test_split_indices_hold_back_and_fit_are_disjoint_and_seeded():
    held, fit = split_indices(20, 3)
    assert len(held) == 5 and not set(held) & set(fit) and split_indices(20, 3) == (held, fit)
    assert split_indices(3, 0)[0] == []


def test_parse_detectors_accepts_learned_masks():
    assert parse_detectors("orb,features,auto") == ["orb", "features", "auto"]


def _evaluate(tiny_root, out, *flags) -> dict:
    args = ["evaluate", str(tiny_root), "--out", str(out), "--examples", "0", "--no-operating-point", *FAST]
    assert main([*args, "--layers", "1,2,3", *flags]) == 0
    return json.loads((out / "results.json").read_text())


def test_evaluate_features_mask_scales_padim_outside_the_learned_mask(tiny_root, tmp_path):
    """evaluate --object-mask features against the same run by hand: the learned masks of the test images
    (from the streamed features), PaDiM's maps times r outside them, its image score their maximum."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    from spadim.features.config import BackboneConfig
    from spadim.run.pipeline import Settings, evaluate_class, make_extractor

    saved = _evaluate(tiny_root, tmp_path / "features", "--methods", "padim", "--object-mask", "features")
    s = Settings(
        backbone=BackboneConfig(arch="resnet18", weights="random", resize=72, crop=64, frame="whole"),
        layers=(1, 2, 3),
    )
    fx = make_extractor(s, None, ["padim"])
    for cls in ("nut", "tile"):
        planner = MaskPlanner(fx.layers, s.backbone.crop, s.seed)
        run, _ = evaluate_class(fx, tiny_root / cls, s, ["padim"], observer=planner)
        inside = planner.test_masks
        assert 0 < inside.mean() <= 1
        maps = np.where(inside, run.maps["padim"], 0.6 * run.maps["padim"])  # the default r
        (row,) = [r for r in saved["rows"] if r["class"] == cls]
        assert row["pixel_aupr"] == pytest.approx(average_precision_score(run.masks.ravel(), maps.ravel()))
        assert row["pixel_auroc"] == pytest.approx(roc_auc_score(run.masks.ravel(), maps.ravel()))
        assert row["image_auroc"] == pytest.approx(
            roc_auc_score(run.labels, maps.reshape(len(maps), -1).max(1))
        )


def test_evaluate_auto_mask_at_r_one_leaves_the_metrics_and_reports_its_choice(tiny_root, tmp_path):
    plain = _evaluate(tiny_root, tmp_path / "plain", "--methods", "spade,padim")
    saved = _evaluate(tiny_root, tmp_path / "auto", "--methods", "spade,padim", "--object-mask", "auto")
    decisions = {d["class"]: d for d in saved["meta"]["mask_decisions"]}
    assert set(decisions) == {"nut", "tile"}
    assert "Object mask chosen" in (tmp_path / "auto" / "report.html").read_text()
    for cls, decision in decisions.items():
        assert decision["r"] in auto.MULTIPLIERS
        if decision["r"] == 1.0:  # a mask at r = 1 changes no score
            rows = [r for r in saved["rows"] if r["class"] == cls]
            assert rows == [r for r in plain["rows"] if r["class"] == cls]
    assert any(d["r"] == 1.0 for d in decisions.values())  # the equality above was checked at least once


def test_mask_sweep_with_learned_masks(tiny_root, tmp_path):
    out = tmp_path / "ms"
    assert (
        main(
            [
                "mask-sweep",
                str(tiny_root),
                "--detectors",
                "orb,features,auto",
                "--multipliers",
                "0,0.6,1",
                "--examples",
                "1",
                "--out",
                str(out),
                *FAST,
            ]
        )
        == 0
    )
    rows = (out / "mask_comparison.csv").read_text()
    assert all(m in rows for m in ("none", "orb", "features", "auto"))
    assert "auto" in (out / "suitability.csv").read_text() and (out / "auto_decisions.csv").is_file()


@pytest.mark.parametrize("kind", ["auto", "features"])
def test_predict_rejects_learned_masks(tmp_path, capsys, kind):
    assert main(["predict", str(tmp_path / "m.pt"), str(tmp_path), "--object-mask", kind]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"predict --object-mask {kind} is not supported" in err[0]


def test_leading_eigenvectors_match_a_full_eigendecomposition():
    g = torch.Generator().manual_seed(2)
    basis = torch.linalg.qr(torch.randn(200, 200, generator=g, dtype=torch.float64))[0]
    spectrum = torch.cat(
        [torch.tensor([9.0, 6.0, 4.0, 3.0]), torch.rand(196, generator=g, dtype=torch.float64)]
    )
    cov = basis @ torch.diag(spectrum) @ basis.T
    v = leading_eigenvectors(cov, 4)
    ref = torch.linalg.eigh(cov)[1][:, [-1, -2, -3, -4]]
    assert torch.allclose((v * ref).sum(0).abs(), torch.ones(4, dtype=torch.float64), atol=1e-8)
