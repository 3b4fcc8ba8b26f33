"""``spadim predict`` as a function: stream any number of images through an :class:`Inspector`.

Results are appended image by image (``predictions.jsonl`` and ``predictions.csv``, flushed), so
memory stays flat in the number of images and a crash loses at most the batch in flight. A rerun
with the same ``--out`` checks that model and operating point are the same, drops a half-written
last line and resumes after the last finished image; other settings are refused, never mixed.
"""

from __future__ import annotations

import csv
import json
import time
import uuid
from pathlib import Path

import cv2
import numpy as np

from spadim.data.mvtec import read_rgb
from spadim.errors import SpadimError
from spadim.features.backbone import file_sha256
from spadim.record import RecordStore, decision_row, review_picture
from spadim.report.figures import save_rgb, subplots
from spadim.report.tables import json_ready
from .inspector import Inspector, ObjectMask, OperatingPoint

CSV_COLUMNS = [
    "image",
    "decision",
    "region_score",
    "score",
    "normalized_score",
    "regions",
    "defect_pixels",
    "largest_region",
    "mask",
    "overlay",
]
RUN_FILE = "run.json"


def _settings(inspector: Inspector, point: OperatingPoint, min_area: float, save_maps: bool) -> dict:
    return {
        "model_sha256": inspector.sha256,
        "region_threshold": point.region_threshold,
        "image_threshold": point.image_threshold,
        "pixel_threshold": point.pixel_threshold,
        "min_area": min_area,
        "save_maps": save_maps,
    }


def _finished(jsonl: Path) -> list[dict]:
    """Complete lines of an earlier run; a half-written last line (a crash) is cut off the file."""
    if not jsonl.is_file():
        return []
    raw = jsonl.read_bytes()
    done, keep = [], 0
    for line in raw.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            done.append(json.loads(line))
        except json.JSONDecodeError:
            break
        keep += len(line)
    if keep != len(raw):
        with open(jsonl, "r+b") as handle:
            handle.truncate(keep)
    return done


def _start(out: Path, settings: dict, inspector: Inspector, point: OperatingPoint) -> tuple[list[dict], str]:
    """-> the finished records and the run's id (kept by a resumed run, so its record keys match)."""
    run_file = out / RUN_FILE
    run_id = uuid.uuid4().hex[:16]
    if out.exists() and any(out.iterdir()):
        if not run_file.is_file():
            raise SpadimError(
                f"`out={out}` is not empty and holds no predict run ({RUN_FILE}): choose a new `out`"
            )
        earlier_run = json.loads(run_file.read_text())
        earlier = earlier_run.get("settings", {})
        run_id = earlier_run.get("run_id", run_id)
        changed = {k: (earlier.get(k), v) for k, v in settings.items() if earlier.get(k) != v}
        if changed:
            raise SpadimError(
                f"`out={out}` holds predictions made with other settings {sorted(changed)}: "
                f"choose a new `out` (results are never mixed or overwritten)"
            )
    out.mkdir(parents=True, exist_ok=True)
    done = _finished(out / "predictions.jsonl")
    low, high = inspector.colour_range(point)
    info = {
        "run_id": run_id,
        "settings": settings,
        "model": inspector.describe(),
        "operating_point": point.__dict__,
        "colour_range": {"low": low, "high": high, "threshold": point.pixel_threshold},
        "warnings": inspector.warnings(point),
    }
    (out / RUN_FILE).write_text(json.dumps(json_ready(info), indent=1, allow_nan=False))
    _colour_bar(out / "colorbar.png", low, high, point.pixel_threshold)
    with open(out / "predictions.csv", "w", newline="") as handle:  # rebuilt from the complete JSON lines
        writer = csv.DictWriter(handle, CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(_csv_row(record) for record in done)
    return done, run_id


def _colour_bar(path: Path, low: float, high: float, threshold: float) -> None:
    """The fixed colour scale of every heatmap and overlay, with the pixel threshold marked."""
    fig, ax = subplots(figsize=(5, 0.9))
    ax.imshow(np.linspace(0, 1, 256)[None], aspect="auto", cmap="jet", extent=(low, high, 0, 1))
    ax.axvline(threshold, color="white", lw=2)
    ax.axvline(threshold, color="black", lw=1, ls="--")
    ax.set_yticks([])
    ax.set_xlabel(f"pixel score (threshold {threshold:.4g}; blue = normal median)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _csv_row(record: dict) -> dict:
    largest = max(record["regions"], key=lambda r: r["area"], default=None)
    return {
        "image": record["image"],
        "decision": record["decision"],
        "region_score": f"{record['region_score']:.6g}",
        "score": f"{record['score']:.6g}",
        "normalized_score": "n/a"
        if record["normalized_score"] is None
        else f"{record['normalized_score']:.4f}",
        "regions": len(record["regions"]),
        "defect_pixels": record["defect_pixels"],
        "largest_region": ""
        if largest is None
        else f"x={largest['x']} y={largest['y']} w={largest['width']} h={largest['height']}",
        "mask": record.get("mask", ""),
        "overlay": record.get("overlay", ""),
    }


def predict_records(
    inspector: Inspector,
    batch: list[tuple[int, Path]],
    out: Path,
    point: OperatingPoint,
    min_area: float,
    save_maps: bool = False,
    object_mask: ObjectMask | None = None,
) -> list[dict]:
    """One batch of (index, path): read, predict, write each image's pictures; -> its JSON records, in
    order. The unit of work of both this process's loop and a Ray worker (:mod:`spadim.scale`)."""
    images = [read_rgb(p) for _, p in batch]
    predictions = inspector.predict_batch(images, [str(p) for _, p in batch], point, min_area, object_mask)
    records = []
    for (index, path), rgb, prediction in zip(batch, images, predictions):
        pictures = _write_pictures(
            out, f"{index:05d}_{Path(path).stem}", inspector, rgb, prediction, point, save_maps
        )
        records.append(json_ready({**prediction.to_json(point), **pictures}))
    return records


def predict_paths(
    inspector: Inspector,
    paths: list[Path],
    out: Path,
    point: OperatingPoint,
    min_area: float | None = None,
    save_maps: bool = False,
    batch_size: int = 8,
    progress=None,
    object_mask: ObjectMask | None = None,
    runner=None,
    store: RecordStore | None = None,
) -> dict:
    """Predict every path not finished in ``out`` yet; returns counts and timing of this call.

    With a ``store``, each decision is committed there before its line is written, keyed by this run
    and the image: a run killed between the two finds the record on resume instead of adding another.

    ``runner(batches, out, point, min_area, save_maps, object_mask)``, when given, yields each batch's
    records in order from elsewhere (Ray Data, :func:`spadim.scale.ray_jobs.ray_runner`); this process
    still owns predictions.jsonl/.csv, so files and resuming are the same either way."""
    out = Path(out)
    inspector.check_object_mask(object_mask)
    min_area = point.min_area if min_area is None else min_area
    settings = {
        **_settings(inspector, point, min_area, save_maps),
        "object_mask": None
        if object_mask is None
        else {**object_mask.config.__dict__, "multiplier": object_mask.multiplier},
    }
    done, run_id = _start(out, settings, inspector, point)
    finished = {record["image"] for record in done}
    todo = [(i, p) for i, p in enumerate(paths) if str(p) not in finished]
    batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
    started = time.perf_counter()
    defects = sum(record["decision"] == "defect" for record in done)
    if runner is None:
        shown = progress(batches, "predict", len(todo)) if progress and batches else batches
        results = (
            predict_records(inspector, batch, out, point, min_area, save_maps, object_mask) for batch in shown
        )
    else:
        results = runner(batches, out, point, min_area, save_maps, object_mask)
    with (
        open(out / "predictions.jsonl", "a") as jsonl,
        open(out / "predictions.csv", "a", newline="") as table,
    ):
        writer = csv.DictWriter(table, CSV_COLUMNS)
        for records in results:
            for record in records:
                if store is not None:
                    record["record_id"] = _record(store, inspector, point, record, run_id, out)["id"]
                jsonl.write(json.dumps(record, allow_nan=False) + "\n")
                writer.writerow(_csv_row(record))
                defects += record["decision"] == "defect"
            jsonl.flush()
            table.flush()
    seconds = time.perf_counter() - started
    images = len(done) + len(todo)  # counted as written: the file is not read a second time
    return {
        "images": images,
        "new": len(todo),
        "resumed_after": len(done),
        "defect": defects,
        "ok": images - defects,
        "seconds": seconds,
    }


def _record(
    store: RecordStore, inspector: Inspector, point: OperatingPoint, record: dict, run_id: str, out: Path
) -> dict:
    index = Path(record["overlay"]).name.split("_", 1)[0]  # the image's place in the run, as in its files
    overlay = cv2.imread(str(out / record["overlay"]))[..., ::-1]
    return store.add(
        decision_row(
            record,
            image_sha256=file_sha256(Path(record["image"])),
            model_version=inspector.model_version,
            method=inspector.method.name,
            far=point.far,
            source="predict",
            run_key=f"{run_id}:{index}:{record['image']}",
            overlay=record.get("overlay"),
        ),
        review_picture(overlay),
    )


def _write_pictures(
    out: Path, stem: str, inspector: Inspector, rgb: np.ndarray, prediction, point, save_maps: bool
) -> dict:
    paths = {
        "mask": f"masks/{stem}.png",
        "overlay": f"overlays/{stem}.png",
        "heatmap": f"heatmaps/{stem}.png",
    }
    (out / "masks").mkdir(exist_ok=True)
    cv2.imwrite(str(out / paths["mask"]), prediction.defect_mask.astype(np.uint8) * 255)
    save_rgb(out / paths["heatmap"], inspector.heatmap(prediction, point))
    save_rgb(out / paths["overlay"], inspector.overlay(rgb, prediction, point))
    if save_maps:
        paths["map"] = f"maps/{stem}.npy"
        (out / "maps").mkdir(exist_ok=True)
        np.save(out / paths["map"], prediction.anomaly_map.astype(np.float32))
    return paths
