"""Model versions: every fit, update, removal, level change and rollback is an immutable file.

``MODEL`` is the version in force; ``MODEL.versions/`` keeps each version's file under its id (the
first 16 hex digits of its SHA-256, so an id names exactly one content) and ``log.jsonl``, one line
per version with its parent, what changed and the level before and after. ``rollback`` copies an
older version's file back to ``MODEL`` and logs that too; nothing is rewritten, and only ``prune``
deletes. Every record names the version that decided (``Inspector.model_version``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from spadim.errors import SpadimError
from spadim.features.backbone import file_sha256
from spadim.run.modelfile import Written, file_stamp

try:
    import fcntl
except ImportError:  # not POSIX: writers of one model are not serialised across processes
    fcntl = None

LOG = "log.jsonl"


def versions_dir(model: Path) -> Path:
    model = Path(model)
    return model.with_name(model.name + ".versions")


def version_id(model: Path) -> str:
    return file_sha256(Path(model))[:16]


@contextmanager
def writing(model: Path):
    """Hold the model's writer lock (``MODEL.versions/lock``, an exclusive ``flock``): one process or
    thread at a time reads the version in force, writes the next and logs it, so two writers (a page's
    update and a cron job's) never fork the log or lose each other's images."""
    if fcntl is None or not Path(model).is_file():  # a missing model: the action says so, creating nothing
        yield
        return
    folder = versions_dir(model)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def one_writer(action):
    """``action(model, ...)`` runs under :func:`writing` for its model."""

    @functools.wraps(action)
    def locked(model, *args, **kwargs):
        with writing(Path(model)):
            return action(model, *args, **kwargs)

    return locked


def list_versions(model: Path) -> list[dict]:
    log = versions_dir(model) / LOG
    if not log.is_file():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def current_version(model: Path, digest: str | None = None) -> dict | None:
    """The log entry of the file in force (the newest entry with its id), or None if never logged.
    ``digest``: the file's SHA-256 when the caller has it already (a model file is read once)."""
    found = digest[:16] if digest else version_id(model)
    return next((entry for entry in reversed(list_versions(model)) if entry["id"] == found), None)


def _copy_hashing(source: Path, target: Path, written: Written | None = None) -> str:
    """Copy ``source`` to ``target`` and return the SHA-256 of the bytes copied. Both read the one open
    file, so the copy is the content its id names even if ``source`` is replaced meanwhile; the copy runs
    in the kernel (``sendfile``), 10x faster than copying through Python blocks. ``written``: how
    :func:`~spadim.run.modelfile.write_blob` left the file; while the open file is still that one (same
    device, inode, size and mtime), its digest is taken instead of reading the file again."""
    with open(source, "rb") as reader, open(target, "wb") as writer:
        if written is not None and file_stamp(os.fstat(reader.fileno())) == written.stamp:
            hexdigest = written.sha256
        else:
            digest = hashlib.sha256()
            for block in iter(lambda: reader.read(1 << 22), b""):
                digest.update(block)
            hexdigest = digest.hexdigest()
        size, offset = os.fstat(reader.fileno()).st_size, 0
        try:
            while offset < size:
                sent = os.sendfile(writer.fileno(), reader.fileno(), offset, size - offset)
                if sent == 0:
                    break
                offset += sent
        except OSError:  # a platform or file system without file-to-file sendfile
            writer.seek(offset)
            reader.seek(offset)
            shutil.copyfileobj(reader, writer, 1 << 22)
            offset = size
        if offset != size:
            raise SpadimError(f"copying {source} to {target} stopped at byte {offset} of {size}")
    return hexdigest


def commit_version(
    model: Path, kind: str, parent: str | None, *, written: Written | None = None, **details
) -> dict:
    """Log the file now at ``model`` as a new version and keep an immutable copy of it. ``written``: what
    :func:`~spadim.run.modelfile.write_blob` returned for it, so its bytes are not hashed twice."""
    model = Path(model)
    folder = versions_dir(model)
    folder.mkdir(parents=True, exist_ok=True)
    staged = folder / f"staged.tmp{os.getpid()}"
    digest = _copy_hashing(model, staged, written)  # the kept copy is exactly the bytes its id names
    entry = {
        "id": digest[:16],
        "parent": parent,
        "kind": kind,
        "created_at": datetime.now(timezone.utc).isoformat(),
        **details,
    }
    kept = folder / f"{entry['id']}.pt"
    if kept.is_file():
        staged.unlink()
    else:
        staged.replace(kept)
    with open(folder / LOG, "a") as log:
        log.write(json.dumps(entry) + "\n")
        log.flush()
        os.fsync(log.fileno())
    return entry


def ensure_logged(model: Path, describe, digest: str | None = None) -> dict:
    """The entry of the version in force, logging it first (as ``kind: fit``) for a model fitted before
    versions were kept. ``describe()`` -> details of that version (n images, level); ``digest`` as in
    :func:`current_version`."""
    return current_version(model, digest) or commit_version(model, "fit", None, **describe())


@one_writer
def rollback(model: Path, version: str, reason: str | None = None) -> dict:
    """Put an earlier version back in force (a new log line, kind ``rollback``)."""
    model = Path(model)
    matches = [entry for entry in list_versions(model) if entry["id"].startswith(version)]
    ids = sorted({entry["id"] for entry in matches})
    if not ids:
        raise SpadimError(
            f"model {model} has no version {version!r}: list them with `spadim versions {model}`"
        )
    if len(ids) > 1:
        raise SpadimError(f"version {version!r} of {model} is ambiguous ({', '.join(ids)}): give more digits")
    target = matches[-1]
    kept = versions_dir(model) / f"{target['id']}.pt"
    if not kept.is_file():
        why = "was pruned" if target["id"] in pruned_ids(model) else f"is missing from {kept.parent}"
        raise SpadimError(f"the file of version {target['id']} {why}: roll back to a version that is kept")
    parent = version_id(model) if model.is_file() else None
    staged = model.with_name(model.name + f".tmp{os.getpid()}")
    shutil.copyfile(kept, staged)
    staged.replace(model)
    details = {k: target.get(k) for k in ("n_images", "level_after", "far") if k in target}
    return commit_version(model, "rollback", parent, restored=target["id"], reason=reason, **details)


PRUNES = "pruned.jsonl"


@one_writer
def prune(model: Path, keep: int, reason: str | None = None) -> dict:
    """Delete the kept files of all but the newest ``keep`` versions (never the one in force); their log
    lines stay, and ``pruned.jsonl`` says when and why. Every version is a whole model file, so a line
    that updates hourly fills a disk; this is the only path that deletes one."""
    if not isinstance(keep, int) or keep < 1:
        raise SpadimError(f"`keep` must be a whole number of versions, at least 1 (got {keep!r})")
    model = Path(model)
    entries = list_versions(model)
    if not entries:
        raise SpadimError(f"model {model} keeps no versions: nothing to prune")
    newest_first = list(dict.fromkeys(entry["id"] for entry in reversed(entries)))
    kept = set(newest_first[:keep]) | ({version_id(model)} if model.is_file() else set())
    folder = versions_dir(model)
    removed, freed = [], 0
    for version in newest_first:
        path = folder / f"{version}.pt"
        if version in kept or not path.is_file():
            continue
        freed += path.stat().st_size
        path.unlink()
        removed.append(version)
    event = {"at": datetime.now(timezone.utc).isoformat(), "keep": keep, "removed": removed, "reason": reason}
    with open(folder / PRUNES, "a") as log:
        log.write(json.dumps(event) + "\n")
    return {**event, "freed_bytes": freed}


def pruned_ids(model: Path) -> set[str]:
    """The versions whose files ``prune`` deleted."""
    log = versions_dir(model) / PRUNES
    if not log.is_file():
        return set()
    return {
        version
        for line in log.read_text().splitlines()
        if line.strip()
        for version in json.loads(line)["removed"]
    }


def version_line(entry: dict) -> str:
    """One line of ``spadim versions``."""
    parts = [entry["id"], entry["created_at"][:19].replace("T", " "), entry["kind"]]
    if entry.get("parent"):
        parts.append(f"parent {entry['parent']}")
    if entry.get("n_images") is not None:
        parts.append(f"n={entry['n_images']}")
    added, removed = entry.get("images_added") or [], entry.get("images_removed") or []
    if added:
        parts.append(f"+{len(added)} images")
    if removed:
        parts.append(f"-{len(removed)} images")
    if entry.get("level_before") is not None and entry.get("level_after") is not None:
        parts.append(f"level {entry['level_before']:.4g} -> {entry['level_after']:.4g}")
    elif entry.get("level_after") is not None:
        parts.append(f"level {entry['level_after']:.4g}")
    if entry.get("restored"):
        parts.append(f"restores {entry['restored']}")
    if entry.get("reason"):
        parts.append(f"({entry['reason']})")
    return "  ".join(parts)
