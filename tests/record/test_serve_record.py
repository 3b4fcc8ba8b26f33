"""Two `spadim serve` processes on one record, four concurrent clients: every 200 is one record, on
SQLite (WAL) and on a real PostgreSQL."""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from spadim.record import RecordStore
from line_model import line  # noqa: F401 (fixture)

CLI = "import sys; from spadim.cli import main; sys.exit(main(sys.argv[1:]))"
ANSWERS = 1000
CLIENTS = 4


def _start(model: Path, store: str) -> tuple[subprocess.Popen, int]:
    command = [sys.executable, "-u", "-c", CLI, "serve", str(model), "--port", "0", "--record", store]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    for text in process.stdout:
        found = re.search(r"on http://127\.0\.0\.1:(\d+)/", text)
        if found:  # the access log goes on: drained, so a full pipe never blocks the server
            threading.Thread(target=process.stdout.read, daemon=True).start()
            return process, int(found.group(1))
        if time.time() > deadline:
            break
    process.kill()
    raise AssertionError("spadim serve did not start")


def _multipart(data: bytes) -> tuple[bytes, str]:
    boundary = "spadim-test-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="part.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _client(port: int, count: int, body: bytes, kind: str) -> list[tuple[int, int | None]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    answers = []
    for _ in range(count):
        connection.request("POST", "/predict", body=body, headers={"Content-Type": kind})
        response = connection.getresponse()
        payload = json.loads(response.read())
        answers.append((response.status, payload.get("record_id")))
    connection.close()
    return answers


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_servers_four_clients_one_record_per_answer(backend, line, tmp_path, request):
    _, model, images = line
    store = (
        str(tmp_path / "records.sqlite") if backend == "sqlite" else request.getfixturevalue("fresh_postgres")
    )
    RecordStore(store).close()  # created once, before two servers open it
    servers = [_start(model, store) for _ in range(2)]
    try:
        body, kind = _multipart(images[0].read_bytes())
        ports = [port for _, port in servers]
        with ThreadPoolExecutor(CLIENTS) as pool:
            jobs = [
                pool.submit(_client, ports[i % 2], ANSWERS // CLIENTS, body, kind) for i in range(CLIENTS)
            ]
            answers = [answer for job in jobs for answer in job.result()]
    finally:
        for process, _ in servers:
            process.terminate()
            process.wait(timeout=30)
    assert len(answers) == ANSWERS and all(status == 200 for status, _ in answers)
    ids = [record_id for _, record_id in answers]
    opened = RecordStore(store)
    assert opened.count(source="serve") == ANSWERS
    assert sorted(ids) == sorted(row["id"] for row in opened.query())
    opened.close()
