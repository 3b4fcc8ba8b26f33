"""The record's tables, its schema version and the steps that bring an older store up to date.

One schema for SQLite and PostgreSQL, written with SQLAlchemy Core so that no SQL dialect is
spelled by hand. The version lives in the store itself (table ``spadim_schema``); opening a store
applies, in one transaction, every step from its version to :data:`SCHEMA_VERSION`, so a line's
history survives an upgrade. A store written by a newer spadim is refused, never rewritten.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

SCHEMA_VERSION = 1
VERDICTS = ("good", "defect")

metadata = MetaData()

schema_table = Table("spadim_schema", metadata, Column("version", Integer, nullable=False))

decisions = Table(
    "decisions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("decided_at", DateTime(timezone=True), nullable=False, index=True),
    Column("image", Text, nullable=False),
    Column("image_sha256", String(64), nullable=False, index=True),
    Column("model_version", String(64), nullable=False, index=True),
    Column("model_sha256", String(64)),
    Column("method", String(32), nullable=False),
    Column("score", Float, nullable=False),
    Column("region_score", Float, nullable=False),
    Column("region_threshold", Float, nullable=False),
    Column("far", Float),
    Column("decision", String(16), nullable=False, index=True),
    Column("regions", JSON, nullable=False),
    Column("source", String(16), nullable=False),
    # predict's run and the image's place in it: a resumed run finds its committed records by this key
    Column("run_key", Text),
    Column("overlay", Text),
    Column("verdict", String(16), index=True),
    Column("verdict_at", DateTime(timezone=True)),
    Column("verdict_by", Text),
    UniqueConstraint("run_key", name="decisions_run_key"),
)

verdicts = Table(
    "verdicts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("decision_id", Integer, ForeignKey("decisions.id"), nullable=False, index=True),
    Column("verdict", String(16), nullable=False),
    Column("verdict_at", DateTime(timezone=True), nullable=False),
    Column("verdict_by", Text),
    Column("note", Text),
)

pictures = Table(
    "pictures",
    metadata,
    Column("decision_id", Integer, ForeignKey("decisions.id"), primary_key=True),
    Column("overlay_jpeg", LargeBinary, nullable=False),  # a small overlay for review (longest side 320)
)

images = Table(
    "images",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("name", Text, nullable=False),
    Column("data", LargeBinary, nullable=False),  # an upload as sent (serve), kept so it can join the model
)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("model_version", String(64)),
    Column("detail", JSON, nullable=False),
    Column("reason", Text),
)

#: version -> the step from the version before it (a function of a SQLAlchemy connection). Version 1
#: is the first schema, created whole; a later change adds its step here, e.g. ``2: add_column(...)``.
MIGRATIONS: dict[int, object] = {}
