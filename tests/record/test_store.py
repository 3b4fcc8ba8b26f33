"""The record store on SQLite and on a real PostgreSQL: committed rows, one row per run key, verdict
history, filters, export and schema upgrades."""

from __future__ import annotations

import csv
import io
import json
import threading

import pytest
from sqlalchemy import Column, Float, create_engine, inspect, select

from spadim.errors import SpadimError
from spadim.record import RecordStore, write_records
from spadim.record import schema as record_schema
from spadim.record.store import store_url


def decision(image: str, region_score: float, decision: str = "ok", run_key: str | None = None) -> dict:
    return {
        "image": image,
        "image_sha256": "0" * 64,
        "model_version": "v1",
        "method": "patchcore",
        "score": region_score * 2,
        "region_score": region_score,
        "region_threshold": 1.0,
        "far": 0.05,
        "decision": decision,
        "regions": [{"x": 1, "y": 2, "width": 3, "height": 4, "area": 12}] if decision == "defect" else [],
        "source": "predict",
        "run_key": run_key,
    }


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    target = (
        tmp_path / "records.sqlite"
        if request.param == "sqlite"
        else request.getfixturevalue("fresh_postgres")
    )
    opened = RecordStore(target)
    yield opened
    opened.close()


def test_add_commits_and_reads_back(store):
    row = store.add(decision("a.png", 1.5, "defect"))
    again = RecordStore(store.target)  # a second connection sees it: the transaction has committed
    try:
        stored = again.get(row["id"])
    finally:
        again.close()
    assert stored["image"] == "a.png" and stored["decision"] == "defect"
    assert stored["region_score"] == 1.5 and stored["regions"][0]["area"] == 12
    assert stored["decided_at"].tzinfo is not None and stored["verdict"] is None


def test_a_run_key_is_recorded_once(store):
    first = store.add(decision("a.png", 0.5, run_key="run1:00000"))
    second = store.add(decision("a.png", 0.7, run_key="run1:00000"))
    assert second["id"] == first["id"] and second["region_score"] == 0.5
    store.add(decision("b.png", 0.5, run_key="run1:00001"))
    store.add(decision("c.png", 0.5))  # serve: no run key, any number of them
    store.add(decision("c.png", 0.5))
    assert store.count() == 4
    assert sorted(store.run_records("run1:")) == ["run1:00000", "run1:00001"]


def test_verdicts_keep_their_history(store):
    row = store.add(decision("a.png", 1.5, "defect"))
    store.review(row["id"], "good", by="ann")
    changed = store.review(row["id"], "defect", by="bob", note="scratch under the label")
    assert changed["verdict"] == "defect" and changed["verdict_by"] == "bob"
    history = store.history(row["id"])
    assert [(h["verdict"], h["verdict_by"]) for h in history] == [("good", "ann"), ("defect", "bob")]
    assert history[1]["note"] == "scratch under the label"
    with pytest.raises(SpadimError, match="no decision 999"):
        store.review(999, "good")
    with pytest.raises(SpadimError, match="give one of good, defect"):
        store.review(row["id"], "fine")


def test_filters(store):
    scores = [0.5, 0.9, 1.1, 2.0]
    rows = [store.add(decision(f"{i}.png", s, "defect" if s > 1 else "ok")) for i, s in enumerate(scores)]
    store.review(rows[0]["id"], "good")
    assert [r["image"] for r in store.query(decision="defect")] == ["2.png", "3.png"]
    assert [r["image"] for r in store.query(near=0.2)] == ["1.png", "2.png"]  # 0.8 to 1.2 times the level
    assert [r["image"] for r in store.query(unreviewed=True)] == ["1.png", "2.png", "3.png"]
    assert [r["image"] for r in store.query(verdict="good")] == ["0.png"]
    assert [r["image"] for r in store.query(limit=2, newest_first=True)] == ["3.png", "2.png"]
    assert store.count(decision="ok") == 2


def test_export_csv_and_jsonl(store):
    store.add(decision("a.png", 1.5, "defect"))
    store.add(decision("b.png", 0.5))
    text = io.StringIO()
    assert write_records(store, text, "csv", decision="defect") == 1
    (row,) = list(csv.DictReader(io.StringIO(text.getvalue())))
    assert row["image"] == "a.png" and json.loads(row["regions"])[0]["width"] == 3
    lines = io.StringIO()
    assert write_records(store, lines, "jsonl") == 2
    assert [json.loads(line)["image"] for line in lines.getvalue().splitlines()] == ["a.png", "b.png"]


def test_concurrent_writers_lose_nothing(tmp_path):
    store = RecordStore(tmp_path / "records.sqlite")
    errors = []

    def write(worker: int) -> None:
        own = RecordStore(tmp_path / "records.sqlite")  # one store per worker process, as serve's
        try:
            for i in range(50):
                own.add(decision(f"{worker}-{i}.png", 0.1))
        except Exception as error:  # pragma: no cover - reported by the assertion below
            errors.append(error)
        finally:
            own.close()

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and store.count() == 200
    store.close()


def test_a_newer_spadim_upgrades_an_older_store(tmp_path, monkeypatch):
    path = tmp_path / "records.sqlite"
    old = RecordStore(path)
    first = old.add(decision("a.png", 1.5, "defect"))
    old.review(first["id"], "defect", by="ann")
    old.close()

    def add_column(connection) -> None:
        connection.exec_driver_sql("ALTER TABLE decisions ADD COLUMN latency_ms FLOAT")

    monkeypatch.setattr(record_schema, "SCHEMA_VERSION", 2)
    monkeypatch.setitem(record_schema.MIGRATIONS, 2, add_column)
    monkeypatch.setattr("spadim.record.store.SCHEMA_VERSION", 2)
    record_schema.decisions.append_column(Column("latency_ms", Float))
    try:
        upgraded = RecordStore(path)
        assert upgraded.version == 2
        kept = upgraded.get(first["id"])
        assert kept["image"] == "a.png" and kept["verdict"] == "defect" and kept["latency_ms"] is None
        assert len(upgraded.history(first["id"])) == 1
        engine = create_engine(store_url(path))
        with engine.connect() as connection:
            assert connection.execute(select(record_schema.schema_table.c.version)).scalar() == 2
            assert "latency_ms" in {c["name"] for c in inspect(connection).get_columns("decisions")}
        engine.dispose()
        upgraded.close()
    finally:
        record_schema.decisions._columns.remove(record_schema.decisions.c.latency_ms)


def test_a_store_from_a_newer_spadim_is_refused(tmp_path):
    path = tmp_path / "records.sqlite"
    RecordStore(path).close()
    engine = create_engine(store_url(path))
    with engine.begin() as connection:
        connection.execute(record_schema.schema_table.update().values(version=99))
    engine.dispose()
    with pytest.raises(SpadimError, match="schema version 99, newer than this spadim's 1"):
        RecordStore(path)


def test_bad_address():
    with pytest.raises(SpadimError, match="postgresql://user@host/db"):
        RecordStore("mysql://x/y")
