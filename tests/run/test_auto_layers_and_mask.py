"""``--layers auto`` with ``--object-mask auto``: the layers are chosen first, each as if alone, and the
mask chosen from normal images multiplies the chosen layers' maps outside it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import FAST as CLI_FAST
from sklearn.metrics import average_precision_score, roc_auc_score

from spadim.cli import main
from spadim.masks import auto
from spadim.masks.auto import Decision, MaskPlanner
from spadim.masks.keypoints import MaskConfig, available_detectors
from spadim.run import layerchoice
from spadim.run.evaluate import ClassPlan, evaluate_source
from spadim.features.config import BackboneConfig
from spadim.run.pipeline import Settings, evaluate_class, make_extractor

METHODS = ["spade", "padim"]
FAST = BackboneConfig(arch="resnet18", weights="random", resize=72, crop=64, frame="whole")  # as the CLI


@pytest.fixture(scope="module")
def both(tiny_root):
    """The auto layers alone, the auto mask alone (at the fixed layers 1,2,3) and the plan for both."""
    source = tiny_root / "nut"
    s = Settings(backbone=FAST, layers="auto")
    fx = make_extractor(s, None, METHODS)
    alone_run, _, alone_sels = layerchoice.evaluate_auto(fx, source, s, METHODS)
    fixed = Settings(backbone=FAST, layers=(1, 2, 3), layers_given=True)
    fx_fixed = make_extractor(fixed, None, METHODS)
    candidates = {d: MaskConfig(detector=d) for d in available_detectors()}
    planner = MaskPlanner(fx_fixed.layers, fixed.backbone.crop, fixed.seed, candidates)
    mask_run, _ = evaluate_class(fx_fixed, source, fixed, METHODS, observer=planner)
    decision = planner.decide(fx_fixed, mask_run.train.images)
    plan = ClassPlan(METHODS, "auto", None, candidates, examples=0, far=None)
    return source, s, fx, alone_run, alone_sels, decision, planner.test_masks, plan


def test_each_choice_is_the_one_it_makes_alone(both, tmp_path):
    source, s, fx, alone_run, alone_sels, decision, _, plan = both
    result = evaluate_source(fx, source, s, plan, tmp_path)
    assert {c["method"]: c["layers"] for c in result["choices"]} == {
        m: sel.name for m, sel in alone_sels.items()
    }
    (chosen,) = result["decisions"]
    assert (chosen["mask"], chosen["r"], chosen["reason"]) == (decision.mask, decision.r, decision.reason)
    if decision.r == 1.0:  # no score changes: the metrics are those of the chosen layers alone
        for row in result["rows"]:
            maps = alone_run.maps[row["method"]]
            expected = average_precision_score(alone_run.masks.ravel(), maps.ravel())
            assert row["pixel_aupr"] == pytest.approx(expected, abs=1e-12)


def test_a_mask_below_one_scales_the_auto_layers_maps_outside_it(both, tmp_path, monkeypatch):
    """A decision of r = 0.4 forced on the learned mask: each method's metrics are those of its auto-chosen
    layers' maps with the scores outside the learned mask multiplied by 0.4, computed here by hand."""
    source, s, fx, alone_run, _, _, learned_masks, plan = both
    assert 0 < learned_masks.mean() < 1  # the mask covers part of the frame, so r changes the maps
    monkeypatch.setattr(
        auto.MaskPlanner, "decide", lambda self, fx, images: Decision("features", "forced", 0.4)
    )
    result = evaluate_source(fx, source, s, plan, tmp_path)
    truth = alone_run.masks.ravel()
    for row in result["rows"]:
        unmasked = alone_run.maps[row["method"]]
        masked = np.where(learned_masks, unmasked, 0.4 * unmasked)
        assert row["pixel_aupr"] == pytest.approx(average_precision_score(truth, masked.ravel()), abs=1e-9)
        assert row["pixel_auroc"] == pytest.approx(roc_auc_score(truth, masked.ravel()), abs=1e-9)
        assert row["pixel_aupr"] != pytest.approx(average_precision_score(truth, unmasked.ravel()), abs=1e-6)


def test_evaluate_runs_both_autos_from_the_command_line(both, tiny_root, tmp_path):
    """The documented ``spadim evaluate DATA --object-mask auto`` with fit's default ``--layers auto``."""
    _, _, _, _, alone_sels, decision, _, _ = both
    out = tmp_path / "ev"
    args = ["evaluate", str(tiny_root), "--classes", "nut", "--methods", "padim", "--examples", "0"]
    assert main([*args, "--no-operating-point", "--object-mask", "auto", "--out", str(out), *CLI_FAST]) == 0
    saved = json.loads((out / "results.json").read_text())
    (row,) = [r for r in saved["rows"] if r["class"] == "nut"]
    assert row["layers"] == alone_sels["padim"].name
    (chosen,) = saved["meta"]["mask_decisions"]
    assert (chosen["mask"], chosen["r"]) == (decision.mask, decision.r)
