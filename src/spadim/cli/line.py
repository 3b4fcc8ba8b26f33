"""The line's commands over the record: ``records`` (export), ``review`` (a verdict), ``status`` (the
watch), and the ``--record``/``--no-record`` flags of predict and serve."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from spadim.data.folders import find_images
from spadim.errors import SpadimError
from spadim.record import FORMATS, VERDICTS, RecordStore, default_store, open_store, write_records


def add_record_args(parser) -> None:
    parser.add_argument(
        "--record",
        default=None,
        metavar="STORE",
        help="where every decision is recorded: a SQLite file or a postgresql:// address "
        "(default: MODEL.records.sqlite beside the model)",
    )
    parser.add_argument("--no-record", action="store_true", help="do not record the decisions")


def record_target(a, model: Path) -> RecordStore | None:
    if a.no_record and a.record:
        raise SpadimError("give --record STORE or --no-record, not both")
    return open_store(False if a.no_record else a.record, model)


def serve_stores(a, inspectors: dict) -> dict:
    """One record per served model (beside each model file), or the one ``--record`` for all."""
    if a.no_record and a.record:
        raise SpadimError("give --record STORE or --no-record, not both")
    if a.no_record:
        return {name: None for name in inspectors}
    if a.record:
        shared = RecordStore(a.record)
        return {name: shared for name in inspectors}
    return {name: open_store(None, inspector.model_path) for name, inspector in inspectors.items()}


def add_filter_args(parser) -> None:
    parser.add_argument("--decision", choices=("ok", "defect"), default=None)
    parser.add_argument("--verdict", choices=VERDICTS, default=None, help="only reviewed as this")
    parser.add_argument("--unreviewed", action="store_true", help="only decisions without a verdict")
    parser.add_argument(
        "--near", type=float, default=None, help="only region scores within this fraction of the level (0.2)"
    )
    parser.add_argument("--model-version", default=None)


def filters_from(a) -> dict:
    return {
        "decision": a.decision,
        "verdict": a.verdict,
        "unreviewed": a.unreviewed,
        "near": a.near,
        "model_version": a.model_version,
    }


def _store(target: str) -> RecordStore:
    if "://" not in target and not Path(target).is_file():
        raise SpadimError(f"record store {target} does not exist: give the file predict or serve wrote")
    return RecordStore(target)


def cmd_records(a) -> None:
    if a.format not in FORMATS:
        raise SpadimError(f"--format {a.format}: choose one of {', '.join(FORMATS)}")
    store = _store(a.store)
    if a.out is None:
        count = write_records(store, sys.stdout, a.format, **filters_from(a))
    else:
        with open(a.out, "w", newline="") as handle:
            count = write_records(store, handle, a.format, **filters_from(a))
        print(f"{count} record(s) -> {a.out}", file=sys.stderr)


def cmd_review(a) -> None:
    if a.good == a.defect:
        raise SpadimError("give exactly one of --good or --defect")
    store = _store(a.store)
    row = store.review(a.id, "good" if a.good else "defect", by=a.by, note=a.note)
    history = store.history(a.id)
    print(
        f"decision {a.id} ({row['image']}, decided {row['decision']}) reviewed {row['verdict']}"
        + (f" by {a.by}" if a.by else "")
        + (f"; {len(history) - 1} earlier verdict(s) kept" if len(history) > 1 else "")
    )


def cmd_status(a) -> int:
    """The watch, one line each; exit status 1 while an alert holds (for cron and monitors)."""
    from spadim.inspect import Inspector
    from spadim.inspect.watching import model_status

    store = _store(a.record or str(default_store(a.model)))
    status = model_status(Inspector.load(a.model, weights=a.weights), store, all_versions=a.all_versions)
    if a.json:
        print(dumps(status))
    else:
        print(f"{status['decisions']} decision(s) recorded in {store.target}, {status['reviewed']} reviewed")
        for line in status["lines"]:
            print(line)
        for row in status["what_if"]:
            if row["defects"] or row["good"]:
                recall = "n/a" if row["recall"] is None else f"{row['recall']:.2f}"
                print(
                    f"what if ({row['label']}, level {row['level']:.4g}): {row['defects_caught']} of "
                    f"{row['defects']} confirmed defects caught (recall {recall}), {row['false_alarms']} of "
                    f"{row['good']} confirmed good flagged"
                )
    return 1 if status["alert"] else 0


def cmd_update(a) -> None:
    from spadim.inspect.update import update_model

    if not a.images and not a.source:
        raise SpadimError("give a folder of good images, --from STORE (records confirmed good), or both")
    images = []
    for folder in a.images:
        images += find_images(folder)
    store = _store(a.source) if a.source else None
    update_model(a.model, images, store=store, weights=a.weights, keep_apart=a.keep_apart, reason=a.reason)


def cmd_versions(a) -> None:
    from spadim.inspect.versions import (
        list_versions,
        prune,
        pruned_ids,
        version_id,
        version_line,
        versions_dir,
    )

    entries = list_versions(a.model)
    if not entries:
        raise SpadimError(f"model {a.model} keeps no versions yet (it was fitted before versions were kept)")
    if a.keep is not None:
        done = prune(a.model, a.keep, a.reason)
        print(
            f"{a.model}: deleted the files of {len(done['removed'])} older version(s), "
            f"{done['freed_bytes'] / 2**20:.0f} MiB; the log keeps their lines"
        )
    in_force, folder = version_id(a.model), versions_dir(a.model)
    pruned = {version for version in pruned_ids(a.model) if not (folder / f"{version}.pt").is_file()}
    for entry in entries:
        print(
            version_line(entry)
            + ("  (file pruned)" if entry["id"] in pruned and entry["id"] != in_force else "")
            + ("  <- in force" if entry is entries[-1] and entry["id"] == in_force else "")
        )


def cmd_rollback(a) -> None:
    from spadim.inspect.versions import rollback

    entry = rollback(a.model, a.version, a.reason)
    print(f"{a.model}: version {entry['restored']} is in force again (logged as {entry['id']}, rollback)")


def cmd_level(a) -> None:
    from spadim.inspect.level import set_level

    store = _store(a.record) if a.record else open_store(None, a.model)
    set_level(a.model, a.far, a.reason, store)


def cmd_audit(a) -> None:
    """List the audited training images with their state; keep one, or take it out (a refit)."""
    from spadim.inspect.audit_actions import audit_line, audit_list, keep, take_out

    if a.take_out and a.keep:
        raise SpadimError("give --take-out IMAGE or --keep IMAGE, not both")
    listed = audit_list(a.model)  # a foreign or unaudited model fails here, before any work
    if a.take_out or a.keep:
        store = _store(a.record) if a.record else None
        if a.keep:
            for record in keep(a.model, a.keep, reason=a.reason, store=store):
                print(f"{a.model}: {record['image']} kept (version {record['version']} unchanged)")
        else:
            take_out(a.model, a.take_out, reason=a.reason, weights=a.weights, store=store)
        return
    if not listed:
        print(f"{a.model}: no good image stood apart when it was fitted or updated")
    for entry in listed:
        print(audit_line(entry))


def add_line_commands(sub) -> None:
    p = sub.add_parser(
        "audit",
        help="the good images the audit flagged: list them, keep one, or take it out (a new version)",
    )
    p.add_argument("model", type=Path)
    p.add_argument(
        "--take-out", nargs="+", default=None, metavar="IMAGE", help="refit without these training images"
    )
    p.add_argument("--keep", nargs="+", default=None, metavar="IMAGE", help="keep these flagged images")
    p.add_argument("--reason", default=None, help="kept in the decision log (and the version log)")
    p.add_argument("--record", default=None, metavar="STORE", help="also log the decision in this record")
    p.add_argument("--weights", default=None, help="checkpoint the model was fitted with")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("level", help="change a model's decision level (another far), with the reason kept")
    p.add_argument("model", type=Path)
    p.add_argument("--far", type=float, required=True, help="the new false-alarm rate")
    p.add_argument("--reason", required=True, help="why: kept in the version log and the record")
    p.add_argument("--record", default=None, metavar="STORE", help="default: MODEL.records.sqlite")
    p.set_defaults(func=cmd_level)

    p = sub.add_parser(
        "update", help="grow a fitted model with good images, without refitting (a new version)"
    )
    p.add_argument("model", type=Path)
    p.add_argument("images", type=Path, nargs="*", help="folders or files of good images")
    p.add_argument("--from", dest="source", default=None, metavar="STORE", help="add records confirmed good")
    p.add_argument("--keep-apart", action="store_true", help="add images the audit sets apart, too")
    p.add_argument("--reason", default=None, help="kept in the version log")
    p.add_argument("--weights", default=None, help="checkpoint the model was fitted with")
    p.set_defaults(func=cmd_update)

    p = sub.add_parser("versions", help="list a model's versions, one line each, the newest last")
    p.add_argument("model", type=Path)
    p.add_argument(
        "--keep",
        type=int,
        default=None,
        metavar="N",
        help="first delete the files of all but the newest N versions (never the one in force); "
        "their log lines stay",
    )
    p.add_argument("--reason", default=None, help="kept in MODEL.versions/pruned.jsonl")
    p.set_defaults(func=cmd_versions)

    p = sub.add_parser("rollback", help="put an earlier version of a model back in force")
    p.add_argument("model", type=Path)
    p.add_argument("version", help="a version id from spadim versions (a unique prefix is enough)")
    p.add_argument("--reason", default=None, help="kept in the version log")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser(
        "status", help="the watch: false alarms among confirmed good images, drift, what-if (exit 1 on alert)"
    )
    p.add_argument("model", type=Path)
    p.add_argument("--record", default=None, metavar="STORE", help="default: MODEL.records.sqlite")
    p.add_argument("--weights", default=None, help="checkpoint the model was fitted with")
    p.add_argument(
        "--all-versions", action="store_true", help="every model version's records, not the current's"
    )
    p.add_argument("--json", action="store_true", help="the whole status as JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("records", help="export the record of decisions as CSV or JSON lines, filtered")
    p.add_argument("store", help="record store: a SQLite file or a postgresql:// address")
    p.add_argument("--format", default="csv", help="csv or jsonl (default: %(default)s)")
    p.add_argument("--out", type=Path, default=None, help="file to write (default: standard output)")
    add_filter_args(p)
    p.set_defaults(func=cmd_records)

    p = sub.add_parser("review", help="an operator's verdict on one recorded decision (good or defect)")
    p.add_argument("store", help="record store: a SQLite file or a postgresql:// address")
    p.add_argument("id", type=int, help="the decision's id (column id of spadim records)")
    p.add_argument("--good", action="store_true", help="the image is good (a false alarm if flagged)")
    p.add_argument("--defect", action="store_true", help="the image is a defect (missed if decided ok)")
    p.add_argument("--by", default=None, help="who reviewed it")
    p.add_argument("--note", default=None)
    p.set_defaults(func=cmd_review)


def dumps(value) -> str:
    return json.dumps(value, indent=1, default=str)
