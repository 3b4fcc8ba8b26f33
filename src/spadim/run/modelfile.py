"""Fitted-model files: one method's state plus everything needed to reuse it.

A file records the method, its configuration and tensors, the preprocessing sizes,
the backbone architecture and the SHA-256 of the weights it was fitted with (not the
weights themselves). Files are read with ``torch.load(weights_only=True)``: no code runs.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from spadim import __version__
from spadim.features.backbone import Weights, load_backbone
from spadim.data.mvtec import Preprocess
from spadim.errors import SpadimError
from spadim.methods.registry import from_state

FORMAT = "spadim-model"
FORMAT_VERSION = 3  # 3: calibration (operating point) and preprocessing frame; 2: no calibration
READABLE_VERSIONS = (2, 3)  # version 2 files load as uncalibrated, cropped-frame models


def model_blob(
    method,
    weights: Weights,
    pre: Preprocess,
    class_name: str,
    ref_images: np.ndarray,
    calibration: dict | None = None,
    fit_info: dict | None = None,
) -> dict:
    """Everything a model file holds, in memory (what :func:`write_blob` writes). ``ref_images`` (uint8
    [n, crop, crop, 3]) are normal frames kept for keypoint object masks at predict time; ``calibration``
    is :meth:`spadim.decision.conformal.Calibration.to_json` (plain data, loadable without code)."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "spadim_version": __version__,
        "method": method.name,
        "class_name": class_name,
        "backbone": {"arch": weights.arch, "source": weights.source, "sha256": weights.sha256},
        "preprocess": {"resize": pre.resize, "crop": pre.crop, "frame": pre.frame},
        "calibration": calibration,
        "fit": fit_info or {},
        "state": method.state(),
        "ref_images": torch.from_numpy(np.ascontiguousarray(ref_images)),
    }


@dataclass(frozen=True)
class Written:
    """A file as :func:`write_blob` left it: the SHA-256 of the bytes written and what identifies the file
    (device, inode, size, mtime), so a version can be logged without reading it back."""

    sha256: str
    stamp: tuple[int, int, int, int]


def file_stamp(stat: os.stat_result) -> tuple[int, int, int, int]:
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


class _HashingWriter:
    """The file object torch.save writes to: every byte is hashed on its way to the file."""

    def __init__(self, handle):
        self.handle, self.digest = handle, hashlib.sha256()

    def write(self, data) -> int:
        self.digest.update(data)
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()


def write_blob(path: Path, blob: dict) -> Written:
    """Atomic: a crash leaves the old file or the new one, never half of one. The bytes are hashed as they
    are written (a model file is hundreds of MB; reading it back to hash it cost 0.13-0.24 s)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as handle:
        writer = _HashingWriter(handle)
        torch.save(blob, writer)
    written = Written(writer.digest.hexdigest(), file_stamp(tmp.stat()))
    tmp.replace(path)
    return written


def load_model(path: Path) -> tuple[object, dict]:
    """-> (method instance, metadata). Raises SpadimError for foreign or outdated files."""
    path = Path(path)
    if not path.is_file():
        raise SpadimError(f"model file {path} does not exist: create one with `spadim fit`")
    try:
        # read into memory, not memory-mapped: a served model must survive its file being truncated or
        # written over in place (a mapped page of a truncated file kills the process with SIGBUS)
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - anything unreadable is not a model file of ours
        raise SpadimError(
            f"{path} is not a spadim model file (unreadable): create one with `spadim fit`"
        ) from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise SpadimError(f"{path} is not a spadim model file: create one with `spadim fit`")
    if blob.get("format_version") not in READABLE_VERSIONS:
        raise SpadimError(
            f"model file {path} has format version {blob.get('format_version')} (spadim {blob.get('spadim_version')}), "
            f"this spadim ({__version__}) reads versions {READABLE_VERSIONS}: refit it with `spadim fit`"
        )
    try:
        method = from_state(blob["method"], blob["state"])
    except (KeyError, TypeError, ValueError) as exc:
        raise SpadimError(
            f"model file {path} is damaged ({type(exc).__name__}: {exc}): refit it with `spadim fit`"
        ) from None
    blob.setdefault("calibration", None)
    blob["preprocess"].setdefault("frame", "crop")
    return method, blob


def load_fitted(path: Path, weights: str | None = None, check=None):
    """-> (method, metadata, backbone network, Weights): a model file with the very checkpoint it was fitted
    with (the SHA-256 must match; random weights are rebuilt from their seed). ``check(metadata)`` runs
    before the backbone loads, so a model that cannot serve the call fails in a second."""
    method, meta = load_model(path)
    if check is not None:
        check(meta)
    backbone = meta["backbone"]
    random = backbone["source"] == "random"
    seed = int(backbone["sha256"].removeprefix("random-seed")) if random else 0
    network, found = load_backbone(backbone["arch"], "random" if random else weights, seed)
    if found.sha256 != backbone["sha256"]:
        raise SpadimError(
            f"model {path} was fitted with {backbone['arch']} weights sha256 "
            f"{backbone['sha256'][:12]} but the weights found are {found.sha256[:12]} "
            f"({found.source}): pass the same checkpoint as `weights`"
        )
    return method, meta, network, found
