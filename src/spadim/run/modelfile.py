"""Fitted-model files: one method's state plus everything needed to reuse it.

A file records the method, its configuration and tensors, the preprocessing sizes,
the backbone architecture and the SHA-256 of the weights it was fitted with (not the
weights themselves). Files are read with ``torch.load(weights_only=True)``: no code runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from spadim import __version__
from spadim.features.backbone import Weights
from spadim.data.mvtec import Preprocess
from spadim.errors import SpadimError
from spadim.methods.registry import from_state

FORMAT = "spadim-model"
FORMAT_VERSION = 2  # 2: per-layer SPADE fusion, PaDiM lower-triangle factors


def save_model(path: Path, method, weights: Weights, pre: Preprocess, class_name: str, ref_images: np.ndarray) -> None:
    """Write atomically (temporary file, then rename). ``ref_images`` (uint8 [n, crop, crop, 3])
    are normal frames kept for keypoint object masks at predict time."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "spadim_version": __version__,
        "method": method.name,
        "class_name": class_name,
        "backbone": {"arch": weights.arch, "source": weights.source, "sha256": weights.sha256},
        "preprocess": {"resize": pre.resize, "crop": pre.crop},
        "state": method.state(),
        "ref_images": torch.from_numpy(np.ascontiguousarray(ref_images)),
    }
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(blob, tmp)
    tmp.replace(path)


def load_model(path: Path) -> tuple[object, dict]:
    """-> (method instance, metadata). Raises SpadimError for foreign or outdated files."""
    path = Path(path)
    if not path.is_file():
        raise SpadimError(f"model file {path} does not exist: create one with `spadim fit`")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - anything unreadable is not a model file of ours
        raise SpadimError(f"{path} is not a spadim model file (unreadable): create one with `spadim fit`") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise SpadimError(f"{path} is not a spadim model file: create one with `spadim fit`")
    if blob.get("format_version") != FORMAT_VERSION:
        raise SpadimError(
            f"model file {path} has format version {blob.get('format_version')} (spadim {blob.get('spadim_version')}), "
            f"this spadim ({__version__}) reads version {FORMAT_VERSION}: refit it with `spadim fit`"
        )
    method = from_state(blob["method"], blob["state"])
    return method, blob
