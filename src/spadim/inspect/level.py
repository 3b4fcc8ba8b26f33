"""``spadim level``: the only way the decision level changes after fit, with the reason kept.

The level is the calibration's conformal rank at another false-alarm rate (what-if in ``spadim status``
shows what each would have caught and cost among reviewed images); the change is a new model version,
and the record, when given, keeps the event with its reason."""

from __future__ import annotations

from pathlib import Path

from spadim.errors import SpadimError
from spadim.record import RecordStore
from spadim.decision.conformal import Calibration, check_far
from spadim.run.modelfile import load_model, write_blob
from .versions import commit_version, ensure_logged, one_writer, version_id


@one_writer
def set_level(model: Path, far: float, reason: str, store: RecordStore | None = None, say=print) -> dict:
    if not reason or not reason.strip():
        raise SpadimError("say why the level changes (`reason`): the version log and the record keep it")
    check_far(far)
    model = Path(model)
    _, blob = load_model(model)
    if not blob.get("calibration"):
        raise SpadimError(f"model {model} has no calibration: run spadim calibrate first")
    before = Calibration.from_json(blob["calibration"])
    after = before.at(far)
    parent = ensure_logged(
        model,
        lambda: {"n_images": before.n_images, "level_after": before.region_threshold, "far": before.far},
    )
    blob["calibration"] = after.to_json()
    written = write_blob(model, blob)
    entry = commit_version(
        model,
        "level",
        parent["id"],
        written=written,
        n_images=before.n_images,
        level_before=before.region_threshold,
        level_after=after.region_threshold,
        far=far,
        far_before=before.far,
        reason=reason,
    )
    if store is not None:
        store.log_event(
            "level",
            {
                "far_before": before.far,
                "far": far,
                "level_before": before.region_threshold,
                "level_after": after.region_threshold,
                "parent": parent["id"],
            },
            reason=reason,
            model_version=version_id(model),
        )
    say(
        f"{model}: far {before.far:g} -> {far:g}, region level {before.region_threshold:.4g} -> "
        f"{after.region_threshold:.4g} (version {entry['id']}; reason: {reason})"
    )
    return entry
