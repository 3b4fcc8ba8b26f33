"""The update over HTTP: records confirmed good join the model; those the audit sets apart are named and
join only when the operator asks a second time (``keep_apart``)."""

from __future__ import annotations

import cv2
import pytest
from fastapi.testclient import TestClient

from spadim.cli import main
from spadim.inspect import Inspector
from spadim.inspect.versions import list_versions, version_id
from spadim.record import RecordStore
from spadim.serve import create_app

from conftest import FAST


@pytest.fixture
def served(tiny_root, tmp_path):
    model = tmp_path / "nut.pt"
    flags = ["--method", "padim", "--layers", "1,2,3", "--far", "0.2", *FAST]
    assert main(["fit", str(tiny_root / "nut" / "train" / "good"), "--out", str(model), *flags]) == 0
    store = RecordStore(tmp_path / "records.sqlite")
    client = TestClient(create_app({"nut": Inspector.load(model)}, stores={"nut": store}, api_key="k3y"))
    client.headers["X-API-Key"] = "k3y"
    return client, model, store


def _confirmed_good(client, name: str, picture) -> int:
    ok, encoded = cv2.imencode(".png", picture)
    assert ok
    answer = client.post("/predict", files={"image": (name, encoded.tobytes(), "image/png")}).json()
    assert client.post(f"/records/{answer['record_id']}/verdict", json={"verdict": "good"}).status_code == 200
    return answer["record_id"]


def test_images_that_stand_apart_join_only_when_the_operator_asks_again(served, tiny_root):
    client, model, store = served
    good = cv2.imread(str(sorted((tiny_root / "nut" / "test" / "good").glob("*.png"))[0]))
    normal = _confirmed_good(client, "normal.png", good)
    odd = _confirmed_good(client, "odd.png", 255 - good)  # colours inverted: like no good image
    first = version_id(model)
    assert TestClient(client.app).post("/models/nut/update").status_code == 401  # behind the key
    for body in ("[1]", '{"keep_apart": "yes"}', "not json"):
        refused = client.post("/models/nut/update", content=body)
        assert refused.status_code == 422 and "keep_apart" in refused.json()["error"]
    assert version_id(model) == first and len(list_versions(model)) == 1
    answer = client.post("/models/nut/update")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    # the scratch copies are named after their records, so the lines and the version log say which
    assert [name.rsplit("/", 1)[-1] for name in body["added"]] == [f"record-{normal}-normal.png"]
    assert [name.rsplit("/", 1)[-1] for name in body["set_apart"]] == [f"record-{odd}-odd.png"]
    assert body["stood_apart"] == body["set_apart"]
    assert any("stands apart" in line and "left out" in line for line in body["lines"])
    second = version_id(model)
    assert second != first and body["model_version"] == second
    again = client.post("/models/nut/update", json={"keep_apart": True}).json()
    assert [name.rsplit("/", 1)[-1] for name in again["added"]] == [f"record-{odd}-odd.png"]
    assert again["set_apart"] == [] and again["stood_apart"] == again["added"]
    log = list_versions(model)
    assert [entry["kind"] for entry in log] == ["fit", "update", "update"]
    assert log[-1]["parent"] == second and "added by the operator" in log[-1]["reason"]
    assert Inspector.load(model).meta["fit"]["images"] == 6 + 2
    held = set(Inspector.load(model).meta["fit"]["held_sha256"])
    assert {store.get(normal)["image_sha256"], store.get(odd)["image_sha256"]} <= held


def test_two_updates_at_once_never_fork_the_version_log(served, tiny_root):
    """A double click: both requests run at once in the server's threads; the second waits for the first
    and finds nothing left to add, so the log stays one line of descent."""
    import threading

    client, model, _ = served
    for i, path in enumerate(sorted((tiny_root / "nut" / "test" / "good").glob("*.png"))):
        _confirmed_good(client, f"good_{i}.png", cv2.imread(str(path)))
    start, answers = threading.Barrier(2), []

    def click() -> None:
        start.wait()
        answers.append(client.post("/models/nut/update", json={"keep_apart": True}).json())

    threads = [threading.Thread(target=click) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(len(answer["added"]) for answer in answers) == [0, 2]
    grown = next(answer for answer in answers if answer["added"])
    assert (
        grown["n_images"] == 8 and grown["level_after"] == Inspector.load(model).calibration.region_threshold
    )
    log = list_versions(model)
    assert [entry["kind"] for entry in log] == ["fit", "update"]
    assert all(answer["model_version"] == log[-1]["id"] for answer in answers)
