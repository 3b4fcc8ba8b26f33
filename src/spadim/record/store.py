"""The record of every decision: SQLite embedded (one file, WAL), or PostgreSQL for a line.

:meth:`RecordStore.add` returns only after its transaction has committed, so a caller that answers
or writes a prediction line afterwards never reports a decision the store does not hold. predict
gives each record a ``run_key`` (its run and image); adding a key that is already there returns the
committed row instead of a second one, so a run killed at any point and resumed leaves exactly one
record per image. Verdicts keep their history: the decision row holds the latest, ``verdicts`` every
one.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import create_engine, event, func, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError

from spadim.errors import SpadimError
from .schema import (
    MIGRATIONS,
    SCHEMA_VERSION,
    VERDICTS,
    decisions,
    events,
    images,
    metadata,
    pictures,
    schema_table,
    verdicts,
)

POSTGRES_PREFIXES = ("postgresql://", "postgres://")


def store_url(target: str | Path) -> str:
    """A path (SQLite) or a ``postgresql://`` address -> a SQLAlchemy URL (PostgreSQL through psycopg)."""
    text = str(target)
    for prefix in POSTGRES_PREFIXES:
        if text.startswith(prefix):
            return "postgresql+psycopg://" + text[len(prefix) :]
    if "://" in text:
        if text.startswith(("sqlite://", "postgresql+")):
            return text
        raise SpadimError(
            f"record store {text!r}: give a file path (SQLite) or a postgresql://user@host/db address"
        )
    return f"sqlite:///{Path(text).resolve()}"


def _sqlite_pragmas(connection, _record) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer (serve's page, status)
    cursor.execute("PRAGMA busy_timeout=30000")  # several writers (serve workers) wait instead of failing
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def now() -> datetime:
    return datetime.now(timezone.utc)


def _utc(value):
    """SQLite returns naive datetimes; every time in the store is UTC."""
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


def _row(mapping) -> dict:
    return {key: _utc(value) for key, value in dict(mapping).items()}


class RecordStore:
    """One store, opened once per process; safe to share between threads (one pool of connections)."""

    def __init__(self, target: str | Path):
        self.url = store_url(target)
        self.target = str(target)
        if self.url.startswith("sqlite:"):
            Path(self.url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = create_engine(self.url, future=True)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        try:
            self.version = self._upgrade()
        except OperationalError as error:
            raise SpadimError(f"record store {self.target}: cannot open it ({error.orig})") from None

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def _upgrade(self) -> int:
        """Create a new store, or bring an older one to :data:`SCHEMA_VERSION`, in one transaction."""
        with self.engine.begin() as connection:
            metadata.create_all(connection, tables=[schema_table])
            found = connection.execute(select(schema_table.c.version)).scalar()
            if found is None:
                metadata.create_all(connection)
                connection.execute(insert(schema_table).values(version=SCHEMA_VERSION))
                return SCHEMA_VERSION
            if found > SCHEMA_VERSION:
                raise SpadimError(
                    f"record store {self.target} has schema version {found}, newer than this spadim's "
                    f"{SCHEMA_VERSION}: upgrade spadim (the store is left unchanged)"
                )
            for version in range(found + 1, SCHEMA_VERSION + 1):
                MIGRATIONS[version](connection)
            if found < SCHEMA_VERSION:
                connection.execute(update(schema_table).values(version=SCHEMA_VERSION))
        return SCHEMA_VERSION

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------ decisions
    def add(self, record: dict, overlay_jpeg: bytes | None = None, image: bytes | None = None) -> dict:
        """Insert one decision (with its review picture, and the image's bytes when given) and commit;
        -> the stored row. A ``run_key``
        already stored returns that row unchanged (a resumed predict), so each key has one record."""
        row = {"decided_at": now(), **record}
        if image is not None:  # kept first: a committed decision always finds its upload
            self.keep_image(row["image_sha256"], row["image"], image)
        try:
            with self.engine.begin() as connection:
                new_id = connection.execute(insert(decisions).values(**row)).inserted_primary_key[0]
                if overlay_jpeg is not None:
                    connection.execute(insert(pictures).values(decision_id=new_id, overlay_jpeg=overlay_jpeg))
        except IntegrityError:
            if row.get("run_key") is None:
                raise
            found = self.by_run_key(row["run_key"])
            if found is None:
                raise
            return found
        return self.get(new_id)

    def keep_image(self, sha256: str, name: str, data: bytes) -> None:
        """Keep an image's bytes once per content (two servers may race to keep the same upload)."""
        try:
            with self.engine.begin() as connection:
                if (
                    connection.execute(select(images.c.sha256).where(images.c.sha256 == sha256)).first()
                    is None
                ):
                    connection.execute(insert(images).values(sha256=sha256, name=name, data=data))
        except IntegrityError:
            pass  # kept by another writer in the meantime

    def image(self, sha256: str) -> bytes | None:
        with self.engine.connect() as connection:
            return connection.execute(select(images.c.data).where(images.c.sha256 == sha256)).scalar()

    def get(self, decision_id: int) -> dict | None:
        with self.engine.connect() as connection:
            found = (
                connection.execute(select(decisions).where(decisions.c.id == decision_id)).mappings().first()
            )
        return None if found is None else _row(found)

    def overlay(self, decision_id: int) -> bytes | None:
        with self.engine.connect() as connection:
            return connection.execute(
                select(pictures.c.overlay_jpeg).where(pictures.c.decision_id == decision_id)
            ).scalar()

    def by_run_key(self, run_key: str) -> dict | None:
        with self.engine.connect() as connection:
            found = (
                connection.execute(select(decisions).where(decisions.c.run_key == run_key)).mappings().first()
            )
        return None if found is None else _row(found)

    def run_records(self, run_prefix: str) -> dict[str, dict]:
        """Every record of one predict run (keys starting with ``run_prefix``), by key."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(decisions).where(decisions.c.run_key.startswith(run_prefix, autoescape=True))
            ).mappings()
            return {row["run_key"]: _row(row) for row in rows}

    def count(self, **filters) -> int:
        query = self._filtered(select(func.count()).select_from(decisions), **filters)
        with self.engine.connect() as connection:
            return int(connection.execute(query).scalar())

    def query(self, *, limit: int | None = None, newest_first: bool = False, **filters) -> list[dict]:
        """Decisions matching ``filters`` (see :meth:`_filtered`), oldest first unless ``newest_first``."""
        order = decisions.c.id.desc() if newest_first else decisions.c.id
        query = self._filtered(select(decisions), **filters).order_by(order)
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as connection:
            return [_row(row) for row in connection.execute(query).mappings()]

    @staticmethod
    def _filtered(
        query,
        *,
        decision: str | None = None,
        verdict: str | None = None,
        unreviewed: bool = False,
        near: float | None = None,
        model_version: str | None = None,
        source: str | None = None,
        since: datetime | None = None,
        after_id: int | None = None,
    ):
        """``near``: region score within this fraction of the level (0.2: 0.8 to 1.2 times the level)."""
        if decision is not None:
            query = query.where(decisions.c.decision == decision)
        if verdict is not None:
            query = query.where(decisions.c.verdict == verdict)
        if unreviewed:
            query = query.where(decisions.c.verdict.is_(None))
        if near is not None:
            low, high = 1.0 - near, 1.0 + near
            query = query.where(
                decisions.c.region_score >= low * decisions.c.region_threshold,
                decisions.c.region_score <= high * decisions.c.region_threshold,
            )
        if model_version is not None:
            query = query.where(decisions.c.model_version == model_version)
        if source is not None:
            query = query.where(decisions.c.source == source)
        if since is not None:
            query = query.where(decisions.c.decided_at >= since)
        if after_id is not None:
            query = query.where(decisions.c.id > after_id)
        return query

    # ------------------------------------------------------------------ verdicts
    def review(self, decision_id: int, verdict: str, by: str | None = None, note: str | None = None) -> dict:
        """An operator's verdict on one decision; an earlier verdict stays in the history."""
        if verdict not in VERDICTS:
            raise SpadimError(f"verdict {verdict!r}: give one of {', '.join(VERDICTS)}")
        at = now()
        with self.engine.begin() as connection:
            changed = connection.execute(
                update(decisions)
                .where(decisions.c.id == decision_id)
                .values(verdict=verdict, verdict_at=at, verdict_by=by)
            ).rowcount
            if not changed:
                raise SpadimError(f"record store {self.target} holds no decision {decision_id}")
            connection.execute(
                insert(verdicts).values(
                    decision_id=decision_id, verdict=verdict, verdict_at=at, verdict_by=by, note=note
                )
            )
        return self.get(decision_id)

    def history(self, decision_id: int) -> list[dict]:
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(verdicts).where(verdicts.c.decision_id == decision_id).order_by(verdicts.c.id)
            ).mappings()
            return [_row(row) for row in rows]

    # ------------------------------------------------------------------ events
    def log_event(self, kind: str, detail: dict, reason: str | None = None, model_version: str | None = None):
        """A change the line should remember (a new level, an audit action, an alert), with its reason."""
        with self.engine.begin() as connection:
            connection.execute(
                insert(events).values(
                    at=now(), kind=kind, detail=detail, reason=reason, model_version=model_version
                )
            )

    def events(self, kind: str | None = None) -> list[dict]:
        query = select(events).order_by(events.c.id)
        if kind is not None:
            query = query.where(events.c.kind == kind)
        with self.engine.connect() as connection:
            return [_row(row) for row in connection.execute(query).mappings()]
