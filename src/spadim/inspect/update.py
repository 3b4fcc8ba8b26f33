"""``spadim update``: grow a fitted model with new good images, without refitting.

What the model holds is never recomputed: each new image passes the backbone once, is scored by the
version in force (which does not hold it, so its statistic is a genuine held-out one), audited
against the calibration's statistics, and only then joins the method (each method's own exact or
incremental ``update``) and the calibration. An image that stands apart is shown and left out unless
the caller keeps it. The result is a new immutable version (:mod:`.versions`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from spadim.data.mvtec import check_images
from spadim.errors import SpadimError
from spadim.features.backbone import file_sha256
from spadim.record import RecordStore
from spadim.decision.audit import AUDIT_Z, audit
from spadim.decision.conformal import grow, region_scores
from spadim.features.extractor import take
from spadim.run.modelfile import write_blob
from spadim.report.fitreport import note_update
from .inspector import Inspector
from .versions import commit_version, ensure_logged, one_writer


def held_images(meta: dict) -> set[str]:
    """SHA-256 of every image the model holds (fit and updates)."""
    return set(meta.get("fit", {}).get("held_sha256") or [])


def _describe(inspector: Inspector) -> dict:
    calibration = inspector.calibration
    return {
        "n_images": inspector.meta.get("fit", {}).get("images"),
        "level_after": None if calibration is None else calibration.region_threshold,
        "far": None if calibration is None else calibration.far,
    }


def confirmed_good(store: RecordStore, held: set[str], folder: Path) -> list[Path]:
    """Images of the record confirmed good and not held yet, once each (by content): the file a record
    names, or the upload kept in the record, written to ``folder`` as ``record-ID-NAME`` (so messages
    name the record)."""
    paths, seen = [], set(held)
    for row in store.query(verdict="good"):
        if row["image_sha256"] in seen:
            continue
        seen.add(row["image_sha256"])
        data = store.image(row["image_sha256"])
        if data is not None:
            named = Path(row["image"])
            path = (
                folder
                / f"record-{row['id']}-{named.stem or row['image_sha256'][:16]}{named.suffix or '.png'}"
            )
            path.write_bytes(data)
            paths.append(path)
        elif Path(row["image"]).is_file() and file_sha256(Path(row["image"])) == row["image_sha256"]:
            paths.append(Path(row["image"]))
    return paths


def grow_inspector(inspector: Inspector, paths: list[Path], *, keep_apart: bool = False, say=print) -> dict:
    """Add the good images ``paths`` to a fitted inspector in memory (nothing is written): each is scored
    by the model as it is, audited, then joins the method and the calibration."""
    method, calibration = inspector.method, inspector.calibration
    if not method.abilities.update:
        raise SpadimError(f"a {method.name} model cannot grow without a refit: fit it again on all images")
    if calibration is None or calibration.region_scores is None:
        raise SpadimError("the model has no region calibration to grow: calibrate it first")
    held = held_images(inspector.meta)
    check_images(paths)
    fresh, seen = [], set(held)
    for path in paths:
        digest = file_sha256(path)
        if digest not in seen:
            seen.add(digest)
            fresh.append((path, digest))
    level_before = calibration.region_threshold
    if not fresh:
        say("nothing to add: the model already holds every given image")
        return {
            "added": [],
            "set_apart": [],
            "stood_apart": [],
            "level_before": level_before,
            "level_after": level_before,
        }
    features = inspector.extractor([p for p, _ in fresh], "update")
    maps, scores = method.score(features, inspector.pre.crop)  # the model as it is: held out
    maps = list(maps)
    regions = region_scores(maps, features.shapes, inspector.pre, calibration.min_area)
    old = calibration.deciding_region_scores  # what the level rests on
    names = [f"<calibration {i}>" for i in range(len(old))] + [str(p) for p, _ in fresh]
    flagged = {
        entry["image"]: entry for entry in audit(np.concatenate([old, regions]), names, calibration.far)
    }
    apart = [i for i, (path, _) in enumerate(fresh) if str(path) in flagged]
    joining = [i for i in range(len(fresh)) if keep_apart or i not in apart]
    for i in apart:
        entry = flagged[str(fresh[i][0])]
        action = "added anyway (keep_apart)" if keep_apart else "left out"
        say(
            f"audit: {fresh[i][0]} stands apart (region score {entry['region_score']:.4g}, robust z "
            f"{entry['robust_z']:.1f} > {AUDIT_Z}): {action}"
        )
    set_apart = [str(fresh[i][0]) for i in apart if i not in joining]
    stood_apart = [str(fresh[i][0]) for i in apart]
    if not joining:
        say("no image joined: every new image stands apart from the calibration (see the audit lines)")
        return {
            "added": [],
            "set_apart": set_apart,
            "stood_apart": stood_apart,
            "level_before": level_before,
            "level_after": level_before,
        }
    rows = np.asarray(joining)
    method.update(take(features, rows.tolist()))
    fit_info = inspector.meta.setdefault("fit", {})
    held_before = fit_info.get("images") or calibration.model_images or calibration.n_images
    fit_info["held_sha256"] = sorted(held | {fresh[i][1] for i in joining})
    fit_info["images"] = held_before + len(joining)
    grown = grow(
        calibration,
        scores[rows],
        [maps[i] for i in joining],
        regions[rows],
        scored_by=held_before,
        model_images=fit_info["images"],
    )
    # what a take-out needs to refit without one of them, and the audit of those that joined apart
    fit_info["added"] = list(fit_info.get("added") or []) + [
        {"image": str(fresh[i][0]), "file": os.path.abspath(fresh[i][0]), "sha256": fresh[i][1]}
        for i in joining
    ]
    fit_info["update_audit"] = list(fit_info.get("update_audit") or []) + [
        flagged[str(fresh[i][0])] for i in apart if i in joining
    ]
    inspector.meta["state"] = method.state()
    inspector.meta["calibration"] = grown.to_json()
    inspector.calibration = grown
    return {
        "added": [str(fresh[i][0]) for i in joining],
        "set_apart": set_apart,
        "stood_apart": stood_apart,
        "n_images": fit_info["images"],
        "level_before": level_before,
        "level_after": grown.region_threshold,
    }


@one_writer
def update_model(
    model: Path,
    images: list[Path] | None = None,
    *,
    store: RecordStore | None = None,
    weights: str | None = None,
    keep_apart: bool = False,
    reason: str | None = None,
    batch_size: int = 8,
    say=print,
) -> dict:
    """``spadim update``: add good ``images`` (files), or every record of ``store`` confirmed good, to the
    model file; the result is a new version."""
    model = Path(model)
    inspector = Inspector.load(model, weights=weights, batch_size=batch_size)
    parent = ensure_logged(model, lambda: _describe(inspector), inspector.sha256)  # hashed by load
    with tempfile.TemporaryDirectory(prefix="spadim-update-") as scratch:
        paths = list(images or [])
        if store is not None:
            paths += confirmed_good(store, held_images(inspector.meta), Path(scratch))
        result = grow_inspector(inspector, paths, keep_apart=keep_apart, say=say)
    if not result["added"]:
        return {"version": parent, **result}
    written = write_blob(model, inspector.meta)
    entry = commit_version(
        model,
        "update",
        parent["id"],
        written=written,
        images_added=result["added"],
        set_apart=result["set_apart"],
        n_images=result["n_images"],
        level_before=result["level_before"],
        level_after=result["level_after"],
        far=inspector.calibration.far,
        reason=reason,
    )
    note_update(model, entry, inspector.calibration, result["stood_apart"])
    grown = inspector.calibration
    say(
        f"updated {model}: +{len(result['added'])} image(s), n={entry['n_images']}, region level "
        f"{result['level_before']:.4g} -> {result['level_after']:.4g} at far={grown.far:g}, resting on "
        f"{grown.n_deciding} of {grown.n_images} held-out statistics (version {entry['id']}, parent "
        f"{parent['id']})"
    )
    return {"version": entry, **result}
