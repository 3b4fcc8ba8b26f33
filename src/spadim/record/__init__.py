"""The line's memory: every decision recorded (SQLite embedded, PostgreSQL for a line), operators'
verdicts with their history, and the watch over the false-alarm promise and drift."""

from .export import FORMATS, write_records
from .rows import decision_row, default_store, open_store, review_picture
from .status import line_status
from .schema import SCHEMA_VERSION, VERDICTS
from .store import RecordStore, sha256_bytes, sha256_file, store_url
from .watch import DriftWatch, FalseAlarmWatch, watch_drift, watch_false_alarms, what_if

__all__ = [
    "FORMATS",
    "SCHEMA_VERSION",
    "VERDICTS",
    "DriftWatch",
    "FalseAlarmWatch",
    "RecordStore",
    "decision_row",
    "default_store",
    "line_status",
    "open_store",
    "review_picture",
    "sha256_bytes",
    "sha256_file",
    "store_url",
    "watch_drift",
    "watch_false_alarms",
    "what_if",
    "write_records",
]
