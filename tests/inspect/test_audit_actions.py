"""Acting on the audit: a take-out is exactly a fit on the remaining images; a keep changes nothing but
the image's state; the CLI refuses bad input in one line before any work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from spadim.cli import main
from spadim.data.mvtec import load_class, load_images
from spadim.errors import SpadimError
from spadim.features.backbone import file_sha256
from spadim.inspect import Inspector
from spadim.inspect.audit_actions import audit_list, keep, take_out
from spadim.inspect.versions import list_versions, version_id
from spadim.run.modelfile import load_model, write_blob

from conftest import FAST, good_with_odd

LAYERS = {"spade": "1,2,3", "padim": "1,2,3", "patchcore": "2,3"}


@pytest.fixture(scope="module")
def folders(tiny_root, tmp_path_factory):
    """(good images with odd.png among them, the same without it)."""
    base = tmp_path_factory.mktemp("audit")
    odd = good_with_odd(tiny_root / "nut" / "train" / "good", base / "with_odd")
    rest = base / "rest"
    shutil.copytree(odd, rest)
    (rest / "odd.png").unlink()
    return odd, rest


def _fit(folder, out, method) -> None:
    flags = ["--method", method, "--layers", LAYERS[method], "--far", "0.2", *FAST]
    assert main(["fit", str(folder), "--out", str(out), *flags]) == 0


def _tensors(path) -> dict:
    return load_model(path)[0].state()["tensors"]


@pytest.mark.parametrize("method", ["spade", "padim", "patchcore"])
def test_take_out_equals_a_fit_on_the_remaining_images(method, folders, tiny_root, tmp_path):
    odd, rest = folders
    model, fresh = tmp_path / "model.pt", tmp_path / "fresh.pt"
    _fit(odd, model, method)
    listed = audit_list(model)
    assert listed[0]["image"] == str(odd / "odd.png") and listed[0]["state"] == "pending"
    assert listed[0]["robust_z"] > 3.5
    parent = version_id(model)
    level_before = Inspector.load(model).calibration.region_threshold
    result = take_out(model, ["odd.png"], reason="a defect filed as good", say=lambda _: None)
    _fit(rest, fresh, method)
    assert result["removed"] == [str(odd / "odd.png")] and result["n_images"] == 6
    # the model: every tensor as the fresh fit's (PatchCore's coreset too: same seed, same images in order)
    taken, expected = _tensors(model), _tensors(fresh)
    assert taken.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(taken[key], expected[key], rtol=0, atol=0)
    # the calibration recomputed without the image, and the maps of the test images
    after, again = Inspector.load(model), Inspector.load(fresh)
    exact = 0 if method != "patchcore" else 1e-5  # PatchCore's left-out search may sum in another order
    np.testing.assert_allclose(
        after.calibration.region_threshold, again.calibration.region_threshold, rtol=exact
    )
    np.testing.assert_allclose(after.calibration.region_scores, again.calibration.region_scores, rtol=exact)
    assert result["level_after"] == after.calibration.region_threshold < level_before
    frames = load_images(load_class(tiny_root / "nut").test, after.pre)[0]
    maps, scores, _ = after.score_frames(frames)
    maps_again, scores_again, _ = again.score_frames(frames)
    np.testing.assert_array_equal(maps, maps_again)
    np.testing.assert_array_equal(scores, scores_again)
    # the version log: a take-out entry with its parent, what left and why
    entry = list_versions(model)[-1]
    assert entry["kind"] == "take-out" and entry["parent"] == parent and entry["id"] == version_id(model)
    assert entry["images_removed"] == [str(odd / "odd.png")] and entry["reason"] == "a defect filed as good"
    assert entry["level_before"] == level_before and entry["n_images"] == 6
    written = json.loads(Path(f"{model}.audit.json").read_text())  # the audit file follows the version
    assert written["images"] == sorted(str(path) for path in odd.glob("0*.png"))
    assert str(odd / "odd.png") not in [e["image"] for e in written["flagged"]]
    report = Path(f"{model}.report/index.html").read_text()  # so does the fit report
    assert "fitted on 6 good images" in report and f"<b>{result['level_after']:.4g}</b>" in report
    gone = [e for e in audit_list(model) if e["image"] == str(odd / "odd.png")]
    assert [e["state"] for e in gone] == ["taken out"] and gone[0]["decision"]["made"] == entry["id"]


def test_keep_changes_nothing_but_the_state(folders, tmp_path):
    odd, _ = folders
    model = tmp_path / "model.pt"
    _fit(odd, model, "padim")
    digest, versions = file_sha256(model), list_versions(model)
    records = keep(model, [str(odd / "odd.png")], reason="a rare variant")
    assert file_sha256(model) == digest and list_versions(model) == versions
    assert records[0]["version"] == version_id(model) and records[0]["reason"] == "a rare variant"
    states = {e["image"]: e["state"] for e in audit_list(model)}
    assert states[str(odd / "odd.png")] == "kept" and "pending" not in states.values()
    with pytest.raises(SpadimError, match="no audited image 001.png"):
        keep(model, ["001.png"], reason=None)  # held, but the audit did not flag it


def test_take_out_of_an_image_added_by_update_restores_the_fit(folders, tmp_path):
    """An image that stood apart and joined through ``update --keep-apart`` is listed (source update);
    taking it out gives the model fitted without it (PaDiM: exact)."""
    odd, rest = folders
    model, original = tmp_path / "model.pt", tmp_path / "original.pt"
    _fit(rest, model, "padim")
    shutil.copy(model, original)
    extra = tmp_path / "extra"
    extra.mkdir()
    shutil.copy(odd / "odd.png", extra / "odd.png")
    assert main(["update", str(model), str(extra), "--keep-apart", "--weights", "random"]) == 0
    listed = {e["image"]: e for e in audit_list(model)}
    assert listed[str(extra / "odd.png")]["source"] == "update"
    take_out(model, [str(extra / "odd.png")], say=lambda _: None)
    taken, expected = _tensors(model), _tensors(original)
    for key in expected:
        torch.testing.assert_close(taken[key], expected[key], rtol=0, atol=0)
    assert [v["kind"] for v in list_versions(model)] == ["fit", "update", "take-out"]


def test_cli_lists_and_refuses_bad_input_before_work(folders, tmp_path, capsys):
    odd, _ = folders
    model = tmp_path / "model.pt"
    _fit(odd, model, "spade")
    capsys.readouterr()
    assert main(["audit", str(model)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{odd / 'odd.png'}  region score ") and out[0].endswith("pending")
    versions = list_versions(model)
    assert main(["audit", str(model), "--take-out", "missing.png"]) == 2
    assert "has no training image missing.png" in capsys.readouterr().err
    assert main(["audit", str(model), "--keep", "missing.png"]) == 2
    assert list_versions(model) == versions
    # a training file moved away: one line naming it and the fix
    moved = tmp_path / "moved"
    shutil.copytree(odd, moved)
    other = tmp_path / "other.pt"
    _fit(moved, other, "spade")
    (moved / "002.png").unlink()
    capsys.readouterr()
    assert main(["audit", str(other), "--take-out", "odd.png"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(moved / "002.png") in err and "put it back" in err
    # a model whose file carries no audit
    _, blob = load_model(model)
    del blob["fit"]["audit"]
    write_blob(tmp_path / "bare.pt", blob)
    assert main(["audit", str(tmp_path / "bare.pt")]) == 2
    assert "carries no audit" in capsys.readouterr().err
    assert main(["audit", str(model), "--keep", "odd.png", "--reason", "rare"]) == 0
    assert capsys.readouterr().out.count("kept") == 1
    assert main(["audit", str(model)]) == 0
    assert "kept  (rare)" in capsys.readouterr().out
