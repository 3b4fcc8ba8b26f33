"""``spadim records``: the record as CSV or JSON lines, filtered, for a spreadsheet or another tool."""

from __future__ import annotations

import csv
import json
from datetime import datetime
from typing import TextIO

from .schema import decisions
from .store import RecordStore

FORMATS = ("csv", "jsonl")
COLUMNS = [column.name for column in decisions.columns]


def _plain(value):
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def write_records(store: RecordStore, stream: TextIO, fmt: str = "csv", **filters) -> int:
    """Write every decision matching ``filters`` (:meth:`RecordStore.query`) to ``stream``; -> rows."""
    rows = store.query(**filters)
    if fmt == "jsonl":
        for row in rows:
            stream.write(json.dumps({key: _plain(value) for key, value in row.items()}) + "\n")
    else:
        writer = csv.DictWriter(stream, COLUMNS)
        writer.writeheader()
        for row in rows:
            plain = {key: _plain(value) for key, value in row.items()}
            plain["regions"] = json.dumps(row["regions"])
            writer.writerow(plain)
    return len(rows)
