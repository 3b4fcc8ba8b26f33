"""ONNX export of a fitted model, and the onnxruntime scorer that ``predict`` and ``serve`` use with
``--runtime onnx``.

An export folder holds ``model.onnx`` (input ``image``: float32 [n, 3, crop, crop], normalised with the
ImageNet mean and std; outputs ``anomaly_map`` [n, crop, crop] and ``image_score`` [n]) and, when the
graph's constants pass 1.8 GB, their external data in ``model.onnx.data`` (protobuf stops at 2 GB).
Everything else a deployment needs (preprocessing, calibration, method, backbone, class) is JSON in the
graph's ``metadata_props`` under ``spadim`` and, for people, in ``spadim.json`` beside it. The decision
is not in the graph: predict and serve apply the same :func:`spadim.decision.judge` to either runtime's
maps.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from spadim.features.backbone import file_sha256

from spadim.data.mvtec import IMAGENET_MEAN, IMAGENET_STD, normalize
from spadim.errors import SpadimError
from spadim.export.graph import ScoringGraph
from spadim.run.modelfile import load_fitted

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
META_FILE = "spadim.json"
EXTERNAL_ABOVE = 1_800_000_000  # bytes of constants above which they go to external data
OPSET = 17


def _require(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise SpadimError(f"the ONNX export and runtime need {module}: pip install 'spadim[onnx]'") from None


def export_metadata(meta: dict, method) -> dict:
    """The model file's metadata as plain JSON: everything but the tensors."""
    keep = ("format_version", "spadim_version", "class_name", "backbone", "preprocess", "calibration", "fit")
    return {
        **{key: meta.get(key) for key in keep},
        "method": method.name,
        "layers": list(method.layers),
        "input": {
            "name": "image",
            "layout": "NCHW, RGB, float32",
            "normalise": {"mean": IMAGENET_MEAN.ravel().tolist(), "std": IMAGENET_STD.ravel().tolist()},
            "scale": "uint8 / 255 before normalising",
        },
        "outputs": ["anomaly_map", "image_score"],
    }


def export_onnx(model_path: Path, out: Path, weights: str | None = None, say=print) -> Path:
    """Write ``out/model.onnx`` (+ external data when large) and ``out/spadim.json``; returns the graph's path.
    The folder is written beside ``out`` and renamed into place, so an earlier export is never half
    overwritten; a non-empty ``out`` that is not an export is refused."""
    onnx = _require("onnx")
    out = Path(out)
    if out.is_dir() and any(out.iterdir()) and not (out / META_FILE).is_file():
        raise SpadimError(
            f"`out={out}` is not empty and holds no spadim export: choose a new folder (only an "
            f"earlier export is replaced)"
        )
    method, model_meta, network, _ = load_fitted(model_path, weights)
    crop = model_meta["preprocess"]["crop"]
    graph = ScoringGraph(network, method, crop).eval()
    meta = export_metadata(model_meta, method)
    calibration = model_meta.get("calibration") or {}
    meta["version"] = {  # the model version it was exported from, and the level in force then
        "id": file_sha256(Path(model_path))[:16],
        "region_threshold": calibration.get("region_threshold"),
        "far": calibration.get("far"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        example = torch.zeros(1, 3, crop, crop)
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
            torch.onnx.export(
                graph,
                (example,),
                str(work / "traced.onnx"),
                input_names=["image"],
                output_names=["anomaly_map", "image_score"],
                dynamic_axes={"image": {0: "n"}, "anomaly_map": {0: "n"}, "image_score": {0: "n"}},
                opset_version=OPSET,
                dynamo=False,
            )
        proto = onnx.load(str(work / "traced.onnx"), load_external_data=True)
        entry = proto.metadata_props.add()
        entry.key, entry.value = "spadim", json.dumps(meta)
        constants = sum(int(np.prod(t.dims)) * 4 for t in proto.graph.initializer)
        large = constants > EXTERNAL_ABOVE
        final = work / "final"
        final.mkdir()
        onnx.save_model(
            proto,
            str(final / MODEL_FILE),
            save_as_external_data=large,
            all_tensors_to_one_file=True,
            location=DATA_FILE,
        )
        (final / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        final.rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    size = sum(f.stat().st_size for f in out.iterdir())
    say(
        f"exported {method.name} ({model_path}) to {out}/{MODEL_FILE}: {size / 1e9:.2f} GB"
        + (f", constants in {DATA_FILE}" if large else "")
    )
    return out / MODEL_FILE


def _graph_path(path: Path) -> Path:
    path = Path(path)
    graph = path / MODEL_FILE if path.is_dir() else path
    if not graph.is_file() or graph.suffix != ".onnx":
        raise SpadimError(
            f"{path} is not an ONNX export (a folder with {MODEL_FILE}, or a .onnx file): create one with "
            f"`spadim export` (export_onnx), or use `runtime=torch` for a model file"
        )
    return graph


def providers(device: str) -> list[str]:
    """onnxruntime execution providers for ``--device``: CUDA first where asked for and installed."""
    ort = _require("onnxruntime")
    available = ort.get_available_providers()
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise SpadimError(
            "`device=cuda` with `runtime=onnx` needs onnxruntime-gpu (CUDAExecutionProvider); "
            f"this onnxruntime has {', '.join(available)}"
        )
    wanted = ["CUDAExecutionProvider"] if device in ("cuda", "auto") else []
    return [p for p in wanted if p in available] + ["CPUExecutionProvider"]


class OnnxScorer:
    """An export run by onnxruntime: uint8 frames in, the graph's maps and image scores out."""

    def __init__(self, path: Path, device: str = "cpu", batch_size: int = 8):
        ort = _require("onnxruntime")
        self.path = _graph_path(path)
        try:
            self.session = ort.InferenceSession(str(self.path), providers=providers(device))
        except SpadimError:
            raise
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types for a bad file
            raise SpadimError(
                f"{self.path} cannot be loaded by onnxruntime ({exc}): export it again"
            ) from None
        props = self.session.get_modelmeta().custom_metadata_map
        if "spadim" not in props:
            raise SpadimError(f"{self.path} is not a spadim export (no spadim metadata): use `spadim export`")
        self.meta = json.loads(props["spadim"])
        self.batch_size = batch_size

    def __call__(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        maps, scores = [], []
        for start in range(0, len(frames), self.batch_size):
            image = normalize(frames[start : start + self.batch_size])
            batch_maps, batch_scores = self.session.run(None, {"image": image})
            maps.append(batch_maps)
            scores.append(batch_scores)
        return np.concatenate(maps).astype(np.float32, copy=False), np.concatenate(scores)
