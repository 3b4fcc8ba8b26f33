"""The ONNX export and the scoring graph against the methods they copy (random weights, 64 px)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from spadim.cli import main
from spadim.data.mvtec import load_class, load_images
from spadim.export import onnx as onnx_export
import spadim.methods.maps as maps_module
import spadim.methods.nearest as nearest_module
import spadim.methods.padim as padim_module
import spadim.methods.patchcore as patchcore_module
import spadim.methods.spade as spade_module
from spadim.export.graph import GraphScorer
from spadim.inspect import Inspector

from conftest import FAST

MODELS = {  # name -> fit flags; PaDiM in both of its forms
    "spade": ["--method", "spade", "--layers", "1,2,3"],
    "spade-concat": ["--method", "spade", "--layers", "1,2,3", "--spade-fusion", "concat"],
    "padim-low-rank": ["--method", "padim", "--layers", "1,2,3"],  # 6 images, d = 100: rank 5
    "padim-cholesky": ["--method", "padim", "--layers", "1,2,3", "--d", "4"],  # rank 4 = d
    "patchcore": ["--method", "patchcore", "--layers", "2,3"],
}


@pytest.fixture(scope="module")
def fitted(tiny_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    paths = {}
    for name, flags in MODELS.items():
        paths[name] = folder / f"{name}.pt"
        assert main(["fit", str(tiny_root / "nut"), *flags, "--out", str(paths[name]), *FAST]) == 0
    return paths


@pytest.fixture(scope="module")
def frames(tiny_root, fitted):
    """The test images. (A training image repeats SPADE gallery rows, where |q|^2 - 2 q.g + |g|^2 leaves
    ~1e-3 of float32 cancellation that differs between faiss, torch and onnxruntime.)"""
    data = load_class(tiny_root / "nut")
    return load_images(data.test, Inspector.load(fitted["spade"]).pre)[0]


@pytest.mark.parametrize("as_on_a_gpu", [False, True], ids=["cpu", "matmul-search"])
@pytest.mark.parametrize("name", list(MODELS))
def test_scoring_graph_equals_the_method(name, as_on_a_gpu, fitted, frames, monkeypatch):
    """The graph --device cuda runs (backbone + the method's module), here on the CPU, against the method's
    score; ``as_on_a_gpu``: with the searches in the batched matrix form a GPU and the export run."""
    inspector = Inspector.load(fitted[name])
    if as_on_a_gpu:
        monkeypatch.setattr(nearest_module, "traceable", lambda tensor: True)
    if name.startswith("padim"):
        assert inspector.method.form == name.removeprefix("padim-")
    maps, scores, _ = inspector.score_frames(frames)
    graph = GraphScorer(inspector.extractor.model, inspector.method, inspector.pre.crop, torch.device("cpu"))
    graph_maps, graph_scores = graph(frames)
    np.testing.assert_allclose(graph_maps, maps, rtol=1e-4, atol=1e-4 * np.abs(maps).max())
    np.testing.assert_allclose(graph_scores, scores, rtol=1e-4)


@pytest.mark.parametrize("name", list(MODELS))
def test_onnx_export_runs_in_onnxruntime_and_matches_torch(name, fitted, frames, tmp_path):
    out = tmp_path / "export"
    assert main(["export", str(fitted[name]), "--out", str(out), *FAST[2:4]]) == 0
    meta = json.loads((out / "spadim.json").read_text())
    torch_side = Inspector.load(fitted[name])
    assert meta["method"] == torch_side.method.name and meta["calibration"] == torch_side.meta["calibration"]
    onnx_side = Inspector.load(out, runtime="onnx")
    assert onnx_side.meta["preprocess"] == torch_side.meta["preprocess"]
    # it carries the version it came from and the level in force; its decisions are recorded under it
    assert meta["version"]["id"] == torch_side.model_version == onnx_side.model_version
    assert meta["version"]["region_threshold"] == torch_side.calibration.region_threshold
    maps, scores, _ = torch_side.score_frames(frames)
    onnx_maps, onnx_scores, _ = onnx_side.score_frames(frames)
    assert onnx_maps.shape == maps.shape
    np.testing.assert_allclose(onnx_maps, maps, rtol=1e-4, atol=1e-4 * np.abs(maps).max())
    np.testing.assert_allclose(onnx_scores, scores, rtol=1e-4)
    point = torch_side.operating_point()
    assert onnx_side.operating_point() == point  # the calibration travels in the metadata


def _altered(monkeypatch) -> None:
    """Change each method's scoring module in two places: the shared map step (no blur) and the method's
    own distance (doubled)."""
    operator = maps_module.map_operator
    monkeypatch.setattr(maps_module, "map_operator", lambda grid, size, sigma=4.0: operator(grid, size, 0.0))
    for module, name in ((spade_module, "nearest_in_images"), (patchcore_module, "nearest_distances")):
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *args, original=original: 2 * original(*args))
    squared = padim_module.PadimScorer.squared_distances
    monkeypatch.setattr(
        padim_module.PadimScorer, "squared_distances", lambda self, *a, **k: 4 * squared(self, *a, **k)
    )


@pytest.mark.parametrize("name", list(MODELS))
def test_the_export_runs_the_methods_own_scoring_module(name, fitted, frames, tmp_path, monkeypatch):
    """One code path: altering the method's scoring module changes the CPU score and the exported ONNX
    graph alike (the export traces that module; there is no second implementation to stay behind)."""
    before, _, _ = Inspector.load(fitted[name]).score_frames(frames)
    _altered(monkeypatch)
    maps, scores, _ = Inspector.load(fitted[name]).score_frames(frames)
    assert np.abs(maps - before).max() > 0.1 * np.abs(before).max()  # the alteration shows
    onnx_export.export_onnx(fitted[name], tmp_path / "altered", "random", say=lambda _: None)
    onnx_maps, onnx_scores, _ = Inspector.load(tmp_path / "altered", runtime="onnx").score_frames(frames)
    np.testing.assert_allclose(onnx_maps, maps, rtol=1e-4, atol=1e-4 * np.abs(maps).max())
    np.testing.assert_allclose(onnx_scores, scores, rtol=1e-4)


def test_predict_and_serve_runtimes_give_the_same_decisions(fitted, tiny_root, tmp_path):
    export = tmp_path / "padim_export"
    assert main(["export", str(fitted["padim-low-rank"]), "--out", str(export), *FAST[2:4]]) == 0
    test = str(tiny_root / "nut" / "test")
    assert (
        main(["predict", str(fitted["padim-low-rank"]), test, "--out", str(tmp_path / "t"), *FAST[2:4]]) == 0
    )
    assert main(["predict", str(export), test, "--out", str(tmp_path / "o"), "--runtime", "onnx"]) == 0
    records = {}
    for side in ("t", "o"):
        lines = (tmp_path / side / "predictions.jsonl").read_text().splitlines()
        records[side] = [json.loads(line) for line in lines]
    assert len(records["t"]) == len(records["o"]) == 6  # 2 good, 2 + 2 defective
    for torch_record, onnx_record in zip(records["t"], records["o"]):
        assert torch_record["decision"] == onnx_record["decision"]
        assert onnx_record["region_score"] == pytest.approx(torch_record["region_score"], rel=1e-4)
        assert len(onnx_record["regions"]) == len(torch_record["regions"])
    from fastapi.testclient import TestClient

    from spadim.serve import create_app, load_inspectors

    server = TestClient(create_app(load_inspectors([export], runtime="onnx")))
    assert server.get("/models").json()["models"][0]["runtime"] == "onnx"
    for record in records["t"]:
        image = Path(record["image"])
        answer = server.post("/predict", files={"image": (image.name, image.read_bytes())}).json()
        assert answer["decision"] == record["decision"]
        assert answer["region_score"] == pytest.approx(record["region_score"], rel=1e-4)


def test_large_graphs_keep_their_constants_in_external_data(fitted, frames, tmp_path, monkeypatch):
    """Above 1.8 GB of constants protobuf's 2 GB limit is near: they go to model.onnx.data (forced here)."""
    monkeypatch.setattr(onnx_export, "EXTERNAL_ABOVE", 0)
    out = tmp_path / "big"
    onnx_export.export_onnx(fitted["padim-cholesky"], out, "random", say=lambda _: None)
    assert (out / onnx_export.DATA_FILE).stat().st_size > (out / onnx_export.MODEL_FILE).stat().st_size
    maps, _, _ = Inspector.load(fitted["padim-cholesky"]).score_frames(frames)
    onnx_maps, _, _ = Inspector.load(out, runtime="onnx").score_frames(frames)
    np.testing.assert_allclose(onnx_maps, maps, rtol=1e-4, atol=1e-4 * np.abs(maps).max())


def test_export_writes_nothing_on_a_bad_model_and_keeps_an_earlier_export(fitted, tmp_path, capsys):
    out = tmp_path / "keep"
    out.mkdir()
    (out / "model.onnx").write_text("earlier")
    (out / "spadim.json").write_text("{}")  # an earlier export: it may be replaced, but only by a good one
    assert main(["export", str(tmp_path / "missing.pt"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert (out / "model.onnx").read_text() == "earlier"


def test_onnx_runtime_refuses_what_it_cannot_run(fitted, tiny_root, tmp_path, capsys):
    test = str(tiny_root / "nut" / "test")
    assert (
        main(["predict", str(fitted["spade"]), test, "--out", str(tmp_path / "p"), "--runtime", "onnx"]) == 2
    )
    assert "not an ONNX export" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert (
            main(["predict", str(fitted["spade"]), test, "--out", str(tmp_path / "q"), "--device", "cuda"])
            == 2
        )
        assert "no CUDA device" in capsys.readouterr().err


def test_openvino_reads_the_export_unchanged_and_agrees(fitted, frames, tmp_path):
    """OpenVINO's CPU plugin compiles model.onnx as written; in float32 (its default is bfloat16 on CPUs with
    bfloat16 units) its maps are the torch path's."""
    import openvino as ov

    from spadim.data.mvtec import normalize

    out = tmp_path / "vino"
    assert main(["export", str(fitted["patchcore"]), "--out", str(out), *FAST[2:4]]) == 0
    compiled = ov.Core().compile_model(str(out / "model.onnx"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled(normalize(frames))
    maps, scores, _ = Inspector.load(fitted["patchcore"]).score_frames(frames)
    vino_maps = np.asarray(result[compiled.output(0)])
    np.testing.assert_allclose(vino_maps, maps, rtol=1e-4, atol=1e-4 * np.abs(maps).max())
    np.testing.assert_allclose(np.asarray(result[compiled.output(1)]), scores, rtol=1e-4)


def test_export_refuses_a_folder_that_is_not_an_export(fitted, tmp_path, capsys):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"not ours")
    assert main(["export", str(fitted["padim-low-rank"]), "--out", str(out), *FAST[2:4]]) == 2
    assert "holds no spadim export" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["holiday.jpg"]
