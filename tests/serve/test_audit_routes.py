"""The audit over HTTP: list the flagged training images, keep one or take it out (behind the API key),
and serve the take-out's new version."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from spadim.cli import main
from spadim.inspect import Inspector
from spadim.inspect.versions import list_versions, version_id
from spadim.serve import create_app

from conftest import FAST, good_with_odd


@pytest.fixture
def served(tiny_root, tmp_path):
    folder = good_with_odd(tiny_root / "nut" / "train" / "good", tmp_path / "good")
    model = tmp_path / "nut.pt"
    flags = ["--method", "padim", "--layers", "1,2,3", "--far", "0.2", *FAST]
    assert main(["fit", str(folder), "--out", str(model), *flags]) == 0
    client = TestClient(create_app({"nut": Inspector.load(model)}, api_key="k3y"))
    return client, model, str(folder / "odd.png")


def test_audit_routes_need_the_key_and_take_out_serves_the_new_version(served):
    client, model, odd = served
    first = version_id(model)
    assert client.get("/models/nut/audit").status_code == 401
    refused = client.post("/models/nut/audit/take-out", json={"image": odd})
    assert refused.status_code == 401 and version_id(model) == first
    client.headers["X-API-Key"] = "k3y"
    listed = client.get("/models/nut/audit").json()
    assert listed["model_version"] == first
    assert [(e["image"], e["state"]) for e in listed["audit"]] == [(odd, "pending")]
    thumbnail = client.get("/models/nut/audit/thumbnail", params={"image": odd})
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
    picture = cv2.imdecode(np.frombuffer(thumbnail.content, np.uint8), cv2.IMREAD_COLOR)
    assert picture.shape[:2] == cv2.imread(odd).shape[:2]  # 96 px: under the thumbnail size, kept
    # only the audit's own images are read: not any file the server can reach
    assert client.get("/models/nut/audit/thumbnail", params={"image": "/etc/passwd"}).status_code == 404
    assert client.post("/models/nut/audit/keep", json={"image": "nope.png"}).status_code == 404
    assert client.post("/models/nut/audit/keep", json={"picture": odd}).status_code == 422
    level_before = client.get("/models").json()["models"][0]["calibration"]["region_threshold"]
    answer = client.post("/models/nut/audit/take-out", json={"image": odd, "reason": "defect"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    second = version_id(model)
    assert second != first and body["model_version"] == second and body["removed"] == [odd]
    served_model = client.get("/models").json()["models"][0]
    assert served_model["model_version"] == second  # swapped in before the answer
    assert served_model["calibration"]["region_threshold"] == pytest.approx(body["level_after"])
    assert body["level_after"] < level_before == pytest.approx(body["level_before"])
    assert list_versions(model)[-1]["kind"] == "take-out" and list_versions(model)[-1]["parent"] == first
    states = [(e["image"], e["state"]) for e in client.get("/models/nut/audit").json()["audit"]]
    assert (odd, "taken out") in states
    again = client.post("/models/nut/audit/take-out", json={"image": odd})
    assert again.status_code == 409 and version_id(model) == second  # it is no longer held


def test_keep_through_the_api(served):
    client, model, odd = served
    client.headers["X-API-Key"] = "k3y"
    before = version_id(model)
    kept = client.post("/models/nut/audit/keep", json={"image": odd, "reason": "rare"})
    assert kept.status_code == 200 and kept.json()["kept"][0]["reason"] == "rare"
    assert version_id(model) == before
    assert [e["state"] for e in client.get("/models/nut/audit").json()["audit"]] == ["kept"]
