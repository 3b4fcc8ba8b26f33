"""serve records each answered decision, lists the record for review, takes verdicts, watches the
promise and exposes it as Prometheus metrics."""

from __future__ import annotations

import hashlib

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from spadim.record import RecordStore
from spadim.serve import create_app
from test_app import inspector, model_file, upload  # noqa: F401 (fixtures)


@pytest.fixture
def served(inspector, tmp_path):
    store = RecordStore(tmp_path / "records.sqlite")
    client = TestClient(create_app({"nut": inspector}, stores={"nut": store}, api_key="k3y"))
    client.headers["X-API-Key"] = "k3y"
    return client, store


def _post(client, image: bytes, **fields):
    files = {"image": ("part.png", image, "image/png")}
    return client.post("/predict", files=files, data={k: str(v) for k, v in fields.items()})


def test_each_answer_is_a_committed_record(served, upload, tiny_root):
    client, store = served
    answer = _post(client, upload).json()
    row = RecordStore(store.target).get(answer["record_id"])  # another connection: committed
    assert row["image"] == "part.png" and row["decision"] == answer["decision"] and row["source"] == "serve"
    assert row["region_score"] == pytest.approx(answer["region_score"])
    assert row["image_sha256"] == hashlib.sha256(upload).hexdigest()
    assert store.image(row["image_sha256"]) == upload  # kept, so a confirmed good upload can join the model
    picture = client.get(f"/records/{answer['record_id']}/overlay")
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/jpeg"
    decoded = cv2.imdecode(np.frombuffer(picture.content, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape[:2] == (80, 90)  # small images keep their size (longest side under 320)
    unrecorded = _post(client, upload, record=0).json()
    assert unrecorded["record_id"] is None and store.count() == 1


def test_review_through_the_api(served, upload):
    client, store = served
    first = _post(client, upload).json()["record_id"]
    assert client.post(f"/records/{first}/verdict", json={"verdict": "good", "by": "ann"}).status_code == 200
    changed = client.post(f"/records/{first}/verdict", json={"verdict": "defect", "by": "bob"}).json()
    assert changed["record"]["verdict"] == "defect" and changed["history"] == 2
    assert client.post(f"/records/{first}/verdict", json={"verdict": "fine"}).status_code == 422
    assert client.post("/records/999/verdict", json={"verdict": "good"}).status_code == 404
    unreviewed = client.get("/records", params={"show": "unreviewed"}).json()["records"]
    assert first not in [r["id"] for r in unreviewed]
    without_key = TestClient(client.app).post(f"/records/{first}/verdict", json={"verdict": "good"})
    assert without_key.status_code == 401 and store.get(first)["verdict"] == "defect"


def test_record_filters(served, upload, inspector):
    client, store = served
    ids = [_post(client, upload).json()["record_id"] for _ in range(3)]
    shown = client.get("/records", params={"show": "recent", "limit": 2}).json()["records"]
    assert [r["id"] for r in shown] == ids[::-1][:2]
    defects = client.get("/records", params={"show": "defect"}).json()["records"]
    assert all(r["decision"] == "defect" for r in defects)
    assert len(defects) == sum(store.get(i)["decision"] == "defect" for i in ids)
    assert client.get("/records", params={"show": "bogus"}).status_code == 422


def test_status_and_metrics(served, upload, inspector):
    client, store = served
    ids = [_post(client, upload).json()["record_id"] for _ in range(4)]
    for decision_id in ids:
        client.post(f"/records/{decision_id}/verdict", json={"verdict": "good"})
    flagged = sum(store.get(i)["decision"] == "defect" for i in ids)
    status = client.get("/status").json()
    assert status["false_alarms"]["confirmed_good"] == 4 and status["false_alarms"]["flagged"] == flagged
    assert status["false_alarms"]["far"] == pytest.approx(inspector.calibration.far)
    assert status["drift"]["recent"] == 4
    assert status["drift"]["reference"] == inspector.calibration.n_images
    text = client.get("/metrics").text
    for decision in ("ok", "defect"):
        count = sum(store.get(i)["decision"] == decision for i in ids)
        if count:
            assert f'spadim_decisions_total{{decision="{decision}",model="nut"}} {count}.0' in text
    assert f'spadim_false_alarm_rate{{model="nut"}} {flagged / 4}' in text
    assert 'spadim_alert{kind="drift",model="nut"}' in text
    assert "spadim_predict_seconds_count" in text


def test_a_new_version_is_served_between_requests(model_file, tiny_root, upload, tmp_path):
    import shutil
    import time

    from spadim.cli import main
    from spadim.inspect import Inspector
    from spadim.inspect.versions import list_versions, version_id

    model = tmp_path / "nut.pt"
    shutil.copyfile(model_file, model)
    client = TestClient(create_app({"nut": Inspector.load(model)}))
    first = client.get("/models").json()["models"][0]["model_version"]
    assert first == version_id(model)[:16]
    # a new version written over the file while the server runs (here: recalibrated at another rate)
    assert main(["calibrate", str(model), str(tiny_root / "nut" / "train" / "good"), "--far", "0.3"]) == 0
    second = version_id(model)
    assert second != first and [e["kind"] for e in list_versions(model)][-1] == "calibrate"
    statuses, served = [], set()
    deadline = time.time() + 60
    while time.time() < deadline and second not in served:
        statuses.append(_post(client, upload).status_code)  # answered by whichever version is in force
        served.add(client.get("/models").json()["models"][0]["model_version"])
    assert second in served and all(status == 200 for status in statuses)
