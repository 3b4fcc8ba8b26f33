"""A prediction as a record row, and the default place of a model's record."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .store import RecordStore

SUFFIX = ".records.sqlite"


def default_store(model: Path | str) -> Path:
    """The record beside the model file (or ONNX export folder): ``MODEL.records.sqlite``."""
    model = Path(model)
    return model.with_name(model.name.rstrip("/") + SUFFIX)


def open_store(target, model: Path | str | None = None) -> RecordStore | None:
    """``target``: a path or postgresql:// address, ``False`` for no record, ``None`` for the default
    file beside ``model``."""
    if target is False:
        return None
    if target is None:
        if model is None:
            return None
        target = default_store(model)
    return RecordStore(target)


def decision_row(
    prediction: dict,
    *,
    image_sha256: str,
    model_version: str,
    method: str,
    far: float | None,
    source: str,
    run_key: str | None = None,
    overlay: str | None = None,
) -> dict:
    """One prediction (``Prediction.to_json``) as a row of table ``decisions``."""
    return {
        "image": prediction["image"],
        "image_sha256": image_sha256,
        "model_version": model_version,
        "method": method,
        "score": float(prediction["score"]),
        "region_score": float(prediction["region_score"]),
        "region_threshold": float(prediction["region_threshold"]),
        "far": far,
        "decision": prediction["decision"],
        "regions": prediction["regions"],
        "source": source,
        "run_key": run_key,
        "overlay": overlay,
    }


def review_picture(overlay_rgb: np.ndarray, longest: int = 320) -> bytes:
    """The overlay kept with a record for review: JPEG, longest side ``longest`` pixels."""
    height, width = overlay_rgb.shape[:2]
    scale = min(1.0, longest / max(height, width))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        overlay_rgb = cv2.resize(overlay_rgb, size, interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(
        ".jpg", cv2.cvtColor(overlay_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85]
    )
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return encoded.tobytes()
