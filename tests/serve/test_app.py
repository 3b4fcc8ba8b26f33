"""spadim serve: the JSON API over a tiny fitted model (in-process TestClient), then once on a real port.

The model is fitted by the CLI exactly as a user would (random resnet18, 64 px: plumbing, not accuracy).
"""

import base64
import json
import re
import socket
import threading
import urllib.request
from dataclasses import asdict

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from spadim.cli import main
from spadim.data.mvtec import decode_rgb
from spadim.inspect import Inspector
from spadim.serve import create_app, serve

from conftest import FAST


@pytest.fixture(scope="session")
def model_file(tiny_root, tmp_path_factory):
    path = tmp_path_factory.mktemp("serve") / "nut.pt"
    assert (
        main(
            [
                "fit",
                str(tiny_root / "nut"),
                "--method",
                "padim",
                "--out",
                str(path),
                *FAST,
                "--layers",
                "1,2,3",
            ]
        )
        == 0
    )
    return path


@pytest.fixture(scope="session")
def inspector(model_file):
    return Inspector.load(model_file)


@pytest.fixture(scope="module")
def client(inspector):
    return TestClient(create_app({"nut": inspector}))


@pytest.fixture(scope="module")
def upload(tiny_root) -> bytes:
    """A defective test image cropped to 80x90, so 'original resolution' differs from the square frame."""
    rgb = cv2.imread(str(tiny_root / "nut" / "test" / "chip" / "000.png"))[8:88, 3:93]
    ok, encoded = cv2.imencode(".png", rgb)
    assert ok
    return encoded.tobytes()


def _post(client, image: bytes, name: str = "part.png", **fields):
    return client.post(
        "/predict", files={"image": (name, image, "image/png")}, data={k: str(v) for k, v in fields.items()}
    )


def _png(text: str) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(base64.b64decode(text), np.uint8), cv2.IMREAD_UNCHANGED)


def test_health_lists_the_models(client):
    assert client.get("/health").json() == {"status": "ok", "models": ["nut"]}


def test_models_describe_each_model_and_its_default_point(client, inspector):
    body = client.get("/models").json()
    assert body["default"] == "nut"
    (entry,) = body["models"]
    assert entry["name"] == "nut" and entry["method"] == "padim" and entry["class_name"] == "nut"
    assert entry["calibration"]["n_images"] == 6
    assert entry["default_point"] == pytest.approx(asdict(inspector.operating_point()))
    assert any("RANDOM" in w for w in entry["warnings"])


def test_predict_matches_the_python_api(client, inspector, upload):
    response = _post(client, upload)
    assert response.status_code == 200, response.text
    body = response.json()
    point = inspector.operating_point()
    (expected,) = inspector.predict_batch([decode_rgb(upload)], ["part.png"], point)
    want = expected.to_json(point)
    assert body["model"] == "nut" and body["image"] == "part.png"
    assert body["score"] == pytest.approx(want["score"], rel=1e-6)
    assert body["normalized_score"] == pytest.approx(want["normalized_score"], rel=1e-6)
    assert body["decision"] == want["decision"]
    assert (body["width"], body["height"]) == (90, 80)
    assert body["point"] == pytest.approx(asdict(point))
    assert any("RANDOM" in w for w in body["warnings"])
    mask, overlay = _png(body["mask_png"]), _png(body["overlay_png"])
    assert mask.shape == (80, 90) and overlay.shape == (80, 90, 3)
    assert np.array_equal(mask > 0, expected.defect_mask)
    assert int((mask > 0).sum()) == body["defect_pixels"] == want["defect_pixels"]


def test_a_threshold_override_decides_by_the_returned_region_score(client, upload):
    score = _post(client, upload).json()["region_score"]
    below = _post(client, upload, threshold=score * 0.999)
    above = _post(client, upload, threshold=score)  # a region must lie strictly above the level
    assert below.json()["decision"] == "defect" and below.json()["regions"]
    assert above.json()["decision"] == "ok" and not above.json()["regions"]
    for response, threshold in ((below, score * 0.999), (above, score)):
        body = response.json()
        assert body["region_score"] == pytest.approx(score, rel=1e-6)
        assert body["region_threshold"] == pytest.approx(threshold)
        assert body["pixel_threshold"] <= body["region_threshold"]
        assert "given by the user" in body["operating_point"]
    lenient = _post(client, upload, far=0.5).json()
    assert lenient["point"]["far"] == 0.5


def test_refusals_are_json_with_their_status_and_the_server_keeps_serving(client, upload):
    cases = [
        (_post(client, b"this is not a picture", "notes.txt"), 415, "not an image"),
        (_post(client, upload[: len(upload) // 2]), 415, "truncated"),
        (_post(client, upload, model="bolt"), 404, "no model named 'bolt'"),
        (_post(client, upload, far=2), 422, "`far` must be"),
        (_post(client, upload, threshold="high"), 422, "threshold must be a number"),
        (_post(client, upload, threshold=1, far=0.1), 422, "not both"),
        (client.post("/predict", files={"other": ("a.png", upload, "image/png")}), 422, "missing the image"),
        (client.post("/predict", json={"image": "a.png"}), 415, "multipart/form-data"),
        (client.get("/no-such-page"), 404, ""),
    ]
    for response, status, words in cases:
        assert response.status_code == status, response.text
        assert words in response.json()["error"]
    assert _post(client, upload).status_code == 200


def test_simultaneous_requests_get_the_sequential_answer(client, upload):
    """Overlapping requests (worker threads, one model) each get the answer a lone request gets."""
    alone = _post(client, upload).json()
    answers = [None] * 6

    def ask(slot):
        answers[slot] = _post(client, upload).json()

    threads = [threading.Thread(target=ask, args=(slot,)) for slot in range(len(answers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for answer in answers:
        assert (
            answer["score"] == pytest.approx(alone["score"], rel=1e-6)
            and answer["mask_png"] == alone["mask_png"]
        )


def test_uploads_over_the_limit_get_413(inspector, upload):
    small = TestClient(create_app({"nut": inspector}, max_upload_bytes=1000))
    refused = _post(small, upload)  # the image itself is over 1000 bytes
    assert refused.status_code == 413 and refused.json()["error"].startswith("image is")
    huge = _post(small, upload + bytes(200_000))  # refused from Content-Length, before the body is read
    assert huge.status_code == 413 and huge.json()["error"].startswith("upload is over")

    def chunks():  # no Content-Length: the limit is counted as the body streams in
        yield b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
        for _ in range(20):
            yield bytes(10_000)
        yield b"\r\n--x--\r\n"

    streamed = small.post(
        "/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"}
    )
    assert streamed.status_code == 413 and streamed.json()["error"].startswith("upload is over")
    assert (
        TestClient(create_app({"nut": inspector}))
        .post("/predict", files={"image": ("a.png", upload, "image/png")})
        .status_code
        == 200
    )


def test_the_page_is_served_and_self_contained(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for element in ('id="model"', 'id="threshold"', 'id="overlay"', 'id="mask"', 'id="decision"'):
        assert element in page.text
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", page.text), "the page must work offline"


def test_the_real_server_answers_on_a_free_port_and_stops(inspector):
    running = {}

    def started(server, url):
        running.update(server=server, url=url)
        ready.set()

    ready = threading.Event()
    quiet = dict(port=0, say=lambda line: None, started=started, log_level="warning")
    thread = threading.Thread(target=serve, args=({"nut": inspector},), kwargs=quiet, daemon=True)
    thread.start()
    assert ready.wait(30)
    try:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", running["url"])
        with urllib.request.urlopen(running["url"] + "health", timeout=30) as response:
            assert json.load(response) == {"status": "ok", "models": ["nut"]}
    finally:
        running["server"].should_exit = True
        thread.join(30)
    assert not thread.is_alive()


def test_a_port_in_use_is_one_line_and_exit_2(model_file, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["serve", str(model_file), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("spadim: error: ") and str(port) in err


@pytest.mark.parametrize(
    "problem,needle",
    [
        ("not a model", "is not a spadim model file"),
        ("missing", "does not exist"),
        ("same stem", "share the name"),
    ],
)
def test_bad_model_files_are_one_line_and_exit_2(model_file, tmp_path, capsys, problem, needle):
    if problem == "not a model":
        models = [tmp_path / "junk.pt"]
        models[0].write_text("hello")
    elif problem == "missing":
        models = [tmp_path / "absent.pt"]
    else:
        (tmp_path / "other").mkdir()
        models = [model_file, (tmp_path / "other" / "nut.pt")]
        models[1].write_bytes(model_file.read_bytes())
    assert main(["serve", *map(str, models), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("spadim: error: "), err
    assert needle in err and str(models[-1]) in err, err
