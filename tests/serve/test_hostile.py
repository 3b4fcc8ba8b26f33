"""The server under hostile input and without its key: 4xx answers, bounded memory, and it keeps serving."""

from __future__ import annotations

import resource
import threading

import pytest
from fastapi.testclient import TestClient
from hostile_images import hostile

from spadim.serve import DecodeBudget, create_app, exposure_warning
from test_app import client, inspector, model_file, upload  # noqa: F401 (fixtures)


def _post(client, image: bytes, name: str, headers=None):
    return client.post(
        "/predict", files={"image": (name, image, "application/octet-stream")}, headers=headers
    )


def test_hostile_uploads_get_4xx_memory_stays_bounded_and_the_server_keeps_serving(client, upload):
    files = hostile()  # built before measuring
    assert _post(client, upload, "part.png").status_code == 200  # the model's first call, before measuring
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for name, data in files.items():
        response = _post(client, data, name)
        assert response.status_code == 413, (name, response.status_code, response.text)
        assert name in response.json()["error"]
    answers = []

    def bomb():
        answers.append(_post(client, files["bomb.png"], "bomb.png").status_code)

    threads = [threading.Thread(target=bomb) for _ in range(4)]  # four at once
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [413] * 4
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 100, f"peak memory grew {grown_mb:.0f} MB"  # one decoded bomb alone is 900 MB
    assert client.get("/health").json()["status"] == "ok"
    assert _post(client, upload, "part.png").status_code == 200


def test_the_api_key_is_required_everywhere_but_health_and_the_page(inspector, upload):
    guarded = TestClient(create_app({"nut": inspector}, api_key="s3cret"))
    assert guarded.get("/health").status_code == 200  # load balancers probe it without a key
    assert guarded.get("/").status_code == 200  # the page holds no data; it asks for the key
    missing = guarded.get("/models")
    assert missing.status_code == 401 and "X-API-Key" in missing.json()["error"]
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert _post(guarded, upload, "part.png").status_code == 401
    assert guarded.get("/models", headers={"X-API-Key": "wrong"}).status_code == 403
    assert _post(guarded, upload, "part.png", {"X-API-Key": "s3cre"}).status_code == 403
    assert guarded.get("/models", headers={"X-API-Key": "s3cret"}).status_code == 200
    assert guarded.get("/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    ok = _post(guarded, upload, "part.png", {"X-API-Key": "s3cret"})
    unguarded = _post(TestClient(create_app({"nut": inspector})), upload, "part.png").json()
    assert ok.status_code == 200
    assert (ok.json()["decision"], ok.json()["region_score"]) == (
        unguarded["decision"],
        unguarded["region_score"],
    )


def test_binding_beyond_loopback_without_a_key_warns():
    assert "without an API key" in exposure_warning("0.0.0.0", None)
    assert "without an API key" in exposure_warning("192.168.1.20", "")
    assert exposure_warning("0.0.0.0", "key") is None
    assert exposure_warning("127.0.0.1", None) is None and exposure_warning("::1", None) is None
    assert exposure_warning("localhost", None) is None


def test_the_decode_budget_waits_then_refuses():
    from starlette.exceptions import HTTPException

    budget = DecodeBudget(100)
    budget.take(60)
    with pytest.raises(HTTPException) as refused:
        budget.take(60, wait=0.05)  # 40 free: it waits, then 503
    assert refused.value.status_code == 503
    released = threading.Timer(0.05, budget.give, (60,))
    released.start()
    budget.take(60, wait=5)  # given back by another thread: it proceeds
    budget.give(60)
    budget.take(1000, wait=1)  # larger than the whole budget: runs alone once all is free
    assert budget.free == 0
