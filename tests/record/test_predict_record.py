"""predict records every decision before its line, and a run killed with SIGKILL and resumed leaves
exactly one record and one prediction line per image."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spadim.cli import main
from spadim.record import RecordStore, sha256_file
from line_model import line  # noqa: F401 (fixture)

CLI = "import sys; from spadim.cli import main; sys.exit(main(sys.argv[1:]))"


def _count(store: Path) -> int:
    if not store.is_file():
        return 0
    with sqlite3.connect(store, timeout=30) as connection:
        try:
            return connection.execute("select count(*) from decisions").fetchone()[0]
        except sqlite3.OperationalError:  # the tables are not created yet
            return 0


def test_predict_records_each_decision(line, tmp_path):
    root, model, images = line
    store = tmp_path / "records.sqlite"
    out = tmp_path / "pred"
    assert (
        main(
            [
                "predict",
                str(model),
                str(root / "toy" / "nut" / "test"),
                "--out",
                str(out),
                "--record",
                str(store),
            ]
        )
        == 0
    )
    lines = [json.loads(text) for text in (out / "predictions.jsonl").read_text().splitlines()]
    rows = {row["id"]: row for row in RecordStore(store).query()}
    assert len(rows) == len(lines) == len(images)
    for prediction in lines:
        row = rows[prediction["record_id"]]
        assert row["image"] == prediction["image"] and row["decision"] == prediction["decision"]
        assert row["region_score"] == pytest.approx(prediction["region_score"])
        assert row["image_sha256"] == sha256_file(Path(prediction["image"]))
        assert row["source"] == "predict" and row["method"] == "padim" and row["far"] == pytest.approx(0.2)
    assert main(["predict", str(model), str(images[0]), "--out", str(tmp_path / "p2"), "--no-record"]) == 0
    assert not (model.parent / "nut.pt.records.sqlite").exists()


def test_sigkill_three_times_then_resume(line, tmp_path):
    root, model, images = line
    store, out = tmp_path / "records.sqlite", tmp_path / "pred"
    command = [sys.executable, "-c", CLI, "predict", str(model), str(root / "toy" / "nut" / "test")]
    command += ["--out", str(out), "--record", str(store), "--batch-size", "1"]
    kills = 0
    for target in (3, 7, 11):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while _count(store) < target and process.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            kills += 1
        process.wait()
    assert kills == 3, "predict finished before it could be killed: the test needs more images"
    assert _count(store) < len(images)
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    lines = [json.loads(text) for text in (out / "predictions.jsonl").read_text().splitlines()]
    rows = RecordStore(store).query()
    assert sorted(p["image"] for p in lines) == sorted(str(p) for p in images)
    assert sorted(r["image"] for r in rows) == sorted(str(p) for p in images)
    assert sorted(p["record_id"] for p in lines) == sorted(r["id"] for r in rows)
