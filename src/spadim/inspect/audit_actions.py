"""Acting on the audit: each good image that stood apart is kept (a recorded decision, the model
unchanged) or taken out (a new version of the model without it).

A take-out is a refit on the images the model holds minus the ones taken out, with the model's own
method, options, layers, seed, preprocessing and operating point (far, pixel far): the new version is
exactly what ``spadim fit`` on the remaining images gives with those settings. Nothing less would do:
the flagged image's own held-out statistic is usually the one that set the level, so the calibration
must be recomputed without it, and PatchCore's coreset and PaDiM's Gaussians hold its features.

Decisions are logged in ``MODEL.versions/audit.jsonl`` (one line each: image, action, reason, the
version it applied to and, for a take-out, the version it made) and, when a record store is given,
as an event of the record. An audited image is *pending* until a decision names it.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from spadim.errors import SpadimError
from spadim.features.backbone import file_sha256
from spadim.features.config import BackboneConfig
from spadim.features.extractor import combo_name
from spadim.record import RecordStore
from spadim.run.calibration import DEFAULT_FOLDS, check_image_count
from spadim.run.modelfile import load_model, write_blob
from spadim.run.pipeline import Settings, make_extractor
from spadim.decision.conformal import DEFAULT_FAR, DEFAULT_PIXEL_FAR
from spadim.report.fitreport import write_fit_report
from .fitting import fit_features, write_audit_file
from .versions import commit_version, ensure_logged, one_writer, version_id, versions_dir

DECISIONS = "audit.jsonl"
PENDING, KEPT, TAKEN_OUT = "pending", "kept", "taken out"


def audit_entries(meta: dict) -> list[dict]:
    """The audited images the model holds: the fit's audit and, for a model grown by ``update``, each
    image that stood apart and joined anyway (``keep_apart``); each entry names its ``source``."""
    fit = meta.get("fit") or {}
    return [{**entry, "source": "fit"} for entry in fit.get("audit") or []] + [
        {**entry, "source": "update"} for entry in fit.get("update_audit") or []
    ]


def decisions(model: Path) -> list[dict]:
    """Every keep and take-out logged for ``model``, oldest first."""
    log = versions_dir(model) / DECISIONS
    if not log.is_file():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def audit_list(model: Path) -> list[dict]:
    """The audited images of the version in force, each with its ``state`` (pending or kept), then the
    images taken out of earlier versions (state ``taken out``, with the version that dropped them)."""
    model = Path(model)
    _, meta = load_model(model)
    last = {}
    for decision in decisions(model):
        last[decision["image"]] = decision
    listed = []
    for entry in _check_audited(model, meta):
        decision = last.get(entry["image"])
        kept = decision is not None and decision["action"] == KEPT
        listed.append({**entry, "state": KEPT if kept else PENDING, "decision": decision if kept else None})
    shown = {entry["image"] for entry in listed}
    for image, decision in last.items():
        if decision["action"] == TAKEN_OUT and image not in shown:
            listed.append(
                {
                    "image": image,
                    "region_score": decision.get("region_score"),
                    "robust_z": decision.get("robust_z"),
                    "source": decision.get("source"),
                    "state": TAKEN_OUT,
                    "decision": decision,
                }
            )
    return listed


def audit_line(entry: dict) -> str:
    """One line of ``spadim audit``."""
    score, z = entry.get("region_score"), entry.get("robust_z")
    parts = [
        entry["image"],
        "region score " + ("n/a" if score is None else f"{score:.4g}"),
        "robust z " + ("n/a" if z is None else f"{z:.1f}"),
        entry["state"],
    ]
    decision = entry.get("decision")
    if decision and decision.get("made"):
        parts.append(f"-> version {decision['made']}")
    if decision and decision.get("reason"):
        parts.append(f"({decision['reason']})")
    return "  ".join(parts)


def _check_audited(model: Path, meta: dict) -> list[dict]:
    fit = meta.get("fit") or {}
    if "audit" not in fit:
        raise SpadimError(
            f"model {model} carries no audit of its good images: fit it again with `spadim fit`"
        )
    return audit_entries(meta)


def _log(model: Path, records: list[dict], store: RecordStore | None, reason: str | None) -> None:
    log = versions_dir(model) / DECISIONS
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    if store is not None:
        for record in records:
            store.log_event(
                f"audit {record['action']}", record, reason=reason, model_version=record["version"]
            )


def _decision(entry: dict, action: str, version: str, reason: str | None, **more) -> dict:
    return {
        "image": entry["image"],
        "action": action,
        "reason": reason,
        "version": version,
        "region_score": entry.get("region_score"),
        "robust_z": entry.get("robust_z"),
        "source": entry.get("source"),
        "decided_at": datetime.now(timezone.utc).isoformat(),
        **more,
    }


def keep(model: Path, images, *, reason: str | None, store: RecordStore | None = None) -> list[dict]:
    """Record that each audited image in ``images`` stays in the model (a rare variant, not a defect):
    it no longer shows as pending; the model file is not touched."""
    model = Path(model)
    _, meta = load_model(model)
    entries = _check_audited(model, meta)
    names = [entry["image"] for entry in entries]
    chosen = [entries[names.index(_match(names, image, model, "audited image"))] for image in _listed(images)]
    version = version_id(model)
    records = [_decision(entry, KEPT, version, reason) for entry in chosen]
    _log(model, records, store, reason)
    return records


def training_set(meta: dict) -> list[dict]:
    """The images the model holds, in fit order then update order: name, file and SHA-256 (when known)."""
    fit = meta.get("fit") or {}
    names = (fit.get("held_out") or {}).get("images") or []
    files = fit.get("training_files") or names
    digests = fit.get("training_sha256") or [None] * len(names)
    held = [{"image": n, "file": f, "sha256": d} for n, f, d in zip(names, files, digests)]
    return held + [dict(entry) for entry in fit.get("added") or []]


@one_writer
def take_out(
    model: Path,
    images,
    *,
    reason: str | None = None,
    weights: str | None = None,
    store: RecordStore | None = None,
    batch_size: int = 8,
    say=print,
) -> dict:
    """A new version of ``model`` without the training ``images``: a refit on the others with the
    model's own settings (method options, layers, seed, preprocessing, far, pixel far), calibration and
    audit recomputed. ``weights``: the checkpoint it was fitted with; ``store``: a record store that
    keeps images added from it (their temporary files are gone)."""
    model = Path(model)
    method, meta = load_model(model)
    entries = {entry["image"]: entry for entry in _check_audited(model, meta)}
    held = training_set(meta)
    names = [item["image"] for item in held]
    if not names or any(name.startswith("<frame ") for name in names):
        raise SpadimError(
            f"model {model} does not record the files it was fitted on (fitted from arrays): "
            f"fit it again from files without the image instead"
        )
    removed = sorted(
        {_match(names, image, model, "training image") for image in _listed(images)}, key=names.index
    )
    remaining = [item for item in held if item["image"] not in removed]
    check_image_count(len(remaining), [method.name], f"{model} without the image(s) taken out")
    calibration = meta.get("calibration") or {}
    settings = _settings(meta, method, weights, batch_size)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="spadim-take-out-") as scratch:
        paths = [_readable(item, store, Path(scratch), model) for item in remaining]
        parent = ensure_logged(
            model,
            lambda: {
                "n_images": (meta.get("fit") or {}).get("images"),
                "level_after": calibration.get("region_threshold"),
            },
        )
        extractor = make_extractor(settings, None, [method.name])
        if extractor.weights.sha256 != meta["backbone"]["sha256"]:
            raise SpadimError(
                f"model {model} was fitted with {meta['backbone']['arch']} weights sha256 "
                f"{meta['backbone']['sha256'][:12]} but the weights found are {extractor.weights.sha256[:12]} "
                f"({extractor.weights.source}): pass the same checkpoint as `weights`"
            )
        train = extractor(paths, "take-out")
        fitted = fit_features(
            train,
            extractor,
            settings,
            method.name,
            far=calibration.get("far", DEFAULT_FAR),
            folds=calibration.get("folds") if calibration.get("how") == "out-of-fold" else DEFAULT_FOLDS,
            refs=len(meta.get("ref_images", [])),
            pixel_far=calibration.get("pixel_far", DEFAULT_PIXEL_FAR),
            class_name=meta.get("class_name", "good"),
            say=lambda _line: None,
        )
    blob, after = fitted["blob"], fitted["calibration"]
    fit_info = blob["fit"]
    known_as = {str(path): item["image"] for path, item in zip(paths, remaining)}  # the names the model knew
    fit_info["held_out"]["images"] = [known_as[name] for name in fit_info["held_out"]["images"]]
    for flagged in fitted["audit"]:
        flagged["image"] = known_as[flagged["image"]]
    fit_info["training_files"] = [item["file"] for item in remaining]
    kept_from_parent = ("folder", "layer_choice")
    fit_info.update({key: meta["fit"][key] for key in kept_from_parent if key in meta.get("fit", {})})
    fit_info["taken_out"] = list((meta.get("fit") or {}).get("taken_out") or []) + removed
    seconds = time.perf_counter() - started
    level_before = calibration.get("region_threshold")
    written = write_blob(model, blob)
    write_audit_file(model, after, fit_info)
    write_fit_report(
        model,
        method.name,
        after,
        fitted["held_out"],
        fit_info["held_out"]["images"],
        train.images,
        fitted["audit"],
        extractor.weights.banner,
    )
    entry = commit_version(
        model,
        "take-out",
        parent["id"],
        written=written,
        images_removed=removed,
        n_images=len(remaining),
        level_before=level_before,
        level_after=after.region_threshold,
        far=after.far,
        reason=reason,
    )
    records = [
        _decision(entries.get(name, {"image": name}), TAKEN_OUT, parent["id"], reason, made=entry["id"])
        for name in removed
    ]
    _log(model, records, store, reason)
    before = "n/a" if level_before is None else f"{level_before:.4g}"
    say(
        f"took {len(removed)} image(s) out of {model}: refit {method.name} on layers "
        f"{combo_name(fitted['layers'])} with the other {len(remaining)} in {seconds:.1f} s, region level "
        f"{before} -> {after.region_threshold:.4g} at far={after.far:g} (version {entry['id']}, "
        f"parent {parent['id']}); {len(fitted['audit'])} image(s) stand apart now"
    )
    return {
        "version": entry,
        "removed": removed,
        "n_images": len(remaining),
        "level_before": level_before,
        "level_after": after.region_threshold,
        "audit": fitted["audit"],
        "seconds": seconds,
    }


def _listed(images) -> list[str]:
    items = [images] if isinstance(images, (str, Path)) else list(images)
    if not items:
        raise SpadimError("name at least one image (as `spadim audit MODEL` lists it)")
    return [str(item) for item in items]


def _match(names: list[str], image: str, model: Path, what: str) -> str:
    """The name in ``names`` that ``image`` means: the same string, the same file, or a unique file name."""
    if image in names:
        return image
    given = Path(image).resolve()
    same = [name for name in names if Path(name).resolve() == given]
    if not same:
        same = [name for name in names if Path(name).name == Path(image).name]
    if len(same) == 1:
        return same[0]
    if len(same) > 1:
        raise SpadimError(
            f"{image} matches {len(same)} {what}s of {model}: give its path as `spadim audit` lists it"
        )
    raise SpadimError(f"model {model} has no {what} {image}: list them with `spadim audit {model}`")


def _readable(item: dict, store: RecordStore | None, scratch: Path, model: Path) -> Path:
    """The file of a held image: at its recorded path, or kept in the record store (by SHA-256)."""
    path = Path(item["file"])
    if path.is_file():
        if item.get("sha256") is None or file_sha256(path) == item["sha256"]:
            return path
        if store is None or store.image(item["sha256"]) is None:
            raise SpadimError(
                f"training image {path} of {model} changed since the model took it in (its SHA-256 differs): "
                f"put the original back at that path"
            )
    data = store.image(item["sha256"]) if store is not None and item.get("sha256") else None
    if data is not None:
        copy = scratch / f"{item['sha256'][:16]}{path.suffix or '.png'}"
        copy.write_bytes(data)
        return copy
    raise SpadimError(
        f"training image {item['file']} of {model} is no longer there (a take-out refits on the images "
        f"the model holds): put it back at that path"
        + (" or give the record store it came from" if item.get("sha256") else "")
    )


def _settings(meta: dict, method, weights: str | None, batch_size: int) -> Settings:
    """The run settings the model was fitted with, as far as its file records them."""
    backbone, pre = meta["backbone"], meta["preprocess"]
    random = backbone.get("source") == "random"
    layers = method.fitted_layers()
    network = BackboneConfig(
        arch=backbone["arch"],
        weights="random" if random else weights,
        resize=pre["resize"],
        crop=pre["crop"],
        frame=pre.get("frame", "crop"),
        batch_size=batch_size,
    )
    return Settings(
        backbone=network,
        configs={method.name: method.with_layers(layers)},  # its options (its seed too) as fitted
        layers=layers,
        layers_given=True,
        seed=int(backbone["sha256"].removeprefix("random-seed")) if random else Settings.seed,
    )
