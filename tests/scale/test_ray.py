"""Ray scale-out on a local cluster bound to 127.0.0.1 (two CPUs): the same files as one process."""

from __future__ import annotations

import json

import pytest

from spadim.record import RecordStore
import ray  # installed by make test (the test extra holds spadim[ray]): a missing Ray fails, never skips

from spadim.cli import main

from conftest import FAST


@pytest.fixture(scope="module")
def cluster():
    from spadim.scale.ray_jobs import connect

    connect("local", cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def padim_model(tiny_root, tmp_path_factory):
    model = tmp_path_factory.mktemp("ray-models") / "nut.pt"
    flags = ["--method", "padim", "--layers", "1,2,3", "--out", str(model), *FAST]
    assert main(["fit", str(tiny_root / "nut"), *flags]) == 0
    return model


def _records(folder):
    return [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]


def _same(local: list[dict], remote: list[dict]) -> None:
    """Same images in the same order, same decisions, regions and files; scores to float32 summation order
    (a Ray worker runs torch on one thread)."""
    assert [r["image"] for r in remote] == [r["image"] for r in local]
    for one, other in zip(local, remote):
        assert other["decision"] == one["decision"]
        assert [(r["x"], r["y"], r["width"], r["height"], r["area"]) for r in other["regions"]] == [
            (r["x"], r["y"], r["width"], r["height"], r["area"]) for r in one["regions"]
        ]
        assert other["score"] == pytest.approx(one["score"], rel=1e-5)
        assert other["region_score"] == pytest.approx(one["region_score"], rel=1e-5)
        for kind in ("mask", "overlay", "heatmap"):  # named index_stem; a resumed run numbers its own inputs
            assert other[kind].split("_", 1)[1] == one[kind].split("_", 1)[1]


def test_predict_on_ray_data_writes_what_one_process_writes_and_resumes(
    cluster, padim_model, tiny_root, tmp_path
):
    test = tiny_root / "nut" / "test"
    local, remote = tmp_path / "local", tmp_path / "ray"
    assert main(["predict", str(padim_model), str(test), "--out", str(local), "--weights", "random"]) == 0
    good = sorted((test / "good").iterdir())
    # an interrupted run: two images done by one process; --ray finishes the rest into the same folder
    store = tmp_path / "records.sqlite"
    first = ["predict", str(padim_model), *map(str, good), "--out", str(remote), "--weights", "random"]
    assert main([*first, "--record", str(store)]) == 0
    args = ["predict", str(padim_model), str(test), "--out", str(remote), "--weights", "random", "--ray"]
    assert main([*args, "--batch-size", "2", "--record", str(store)]) == 0
    assert len(_records(remote)) == len(_records(local)) == 6
    recorded = RecordStore(store).query()  # the driver records what the workers decided, once per image
    assert sorted(r["image"] for r in recorded) == sorted(r["image"] for r in _records(remote))
    assert sorted(r["id"] for r in recorded) == sorted(r["record_id"] for r in _records(remote))
    by_image = {r["image"]: r for r in _records(remote)}
    _same(_records(local), [by_image[r["image"]] for r in _records(local)])
    for record in _records(remote):
        assert (remote / record["mask"]).is_file() and (remote / record["overlay"]).is_file()
    assert (remote / "predictions.csv").read_text().count("\n") == 7


def test_evaluate_runs_one_ray_task_per_class_with_the_same_results(cluster, tiny_root, tmp_path):
    flags = [*FAST, "--methods", "padim,patchcore", "--layers", "2,3", "--examples", "1"]
    assert main(["evaluate", str(tiny_root), "--out", str(tmp_path / "local"), *flags]) == 0
    assert main(["evaluate", str(tiny_root), "--out", str(tmp_path / "ray"), *flags, "--ray"]) == 0
    local = json.loads((tmp_path / "local" / "results.json").read_text())
    remote = json.loads((tmp_path / "ray" / "results.json").read_text())
    assert [(r["class"], r["method"]) for r in remote["rows"]] == [
        (r["class"], r["method"]) for r in local["rows"]
    ]
    assert len(local["rows"]) == 6  # 2 classes x 2 methods + 2 means
    # a task has cluster CPUs / workers threads (1 here, 2 locally): BLAS sums in another order and the
    # probed search may differ, so maps agree to float rounding and pixel rankings to a few ties
    # (1.4e-6 apart in AUROC seen on a 2-core EPYC; identical on a Xeon)
    for one, other in zip(local["rows"], remote["rows"]):
        for key in ("pixel_auroc", "pixel_aupr", "image_auroc"):
            assert other[key] == pytest.approx(one[key], abs=1e-4), (one["class"], one["method"], key)
    for name in ("tile", "nut"):
        assert (tmp_path / "ray" / "curves" / f"{name}.png").is_file()


def test_serve_with_ray_replicas_answers_as_the_single_process_server(
    cluster, padim_model, tiny_root, tmp_path
):
    """Two replicas behind spadim's own front, called by three clients at once on 127.0.0.1."""
    from concurrent.futures import ThreadPoolExecutor

    from fastapi.testclient import TestClient

    from spadim.scale import ray_serve
    from spadim.serve import create_app, load_inspectors

    images = sorted((tiny_root / "nut" / "test").rglob("*.png"))
    local = TestClient(create_app(load_inspectors([padim_model], "random")))
    remote_inspectors = load_inspectors([padim_model], "random")
    ray_serve.deploy(remote_inspectors, "local", 2, "random", "cpu")
    try:
        store = RecordStore(tmp_path / "records.sqlite")
        remote = TestClient(create_app(remote_inspectors, stores={padim_model.stem: store}))
        assert remote.get("/models").json()["models"][0]["runtime"] == "torch+ray"

        def post(client, path):
            return client.post("/predict", files={"image": (path.name, path.read_bytes())}).json()

        expected = [post(local, p) for p in images]
        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda p: post(remote, p), images))
    finally:
        ray_serve.shutdown()
    assert sorted(store.get(a["record_id"])["decision"] for a in answers) == sorted(
        a["decision"] for a in answers
    )
    assert store.count(source="serve") == len(images)
    for one, other in zip(expected, answers):
        assert other["decision"] == one["decision"]
        assert other["region_score"] == pytest.approx(one["region_score"], rel=1e-5)
        assert other["defect_pixels"] == one["defect_pixels"]


def test_fit_per_class_as_ray_tasks_writes_the_models_one_process_writes(cluster, tiny_root, tmp_path):
    import torch

    flags = ["--per-class", "--method", "patchcore", "--layers", "2,3", *FAST]
    assert main(["fit", str(tiny_root), "--out", str(tmp_path / "local"), *flags]) == 0
    assert main(["fit", str(tiny_root), "--out", str(tmp_path / "ray"), *flags, "--ray"]) == 0
    for name in ("nut", "tile"):
        local = torch.load(tmp_path / "local" / f"{name}.pt", weights_only=True)
        remote = torch.load(tmp_path / "ray" / f"{name}.pt", weights_only=True)
        assert remote["class_name"] == local["class_name"] == name
        levels = [m["calibration"]["region_threshold"] for m in (local, remote)]
        assert levels[1] == pytest.approx(levels[0], rel=1e-5)
        assert (tmp_path / "ray" / f"{name}.pt.report" / "index.html").is_file()


def test_fit_refuses_ray_without_per_class(tiny_root, tmp_path, capsys):
    out = tmp_path / "m.pt"
    assert main(["fit", str(tiny_root / "nut"), "--out", str(out), *FAST, "--ray"]) == 2
    assert "--per-class" in capsys.readouterr().err and not out.exists()


def test_serve_with_ray_places_every_replica_of_two_models(cluster, padim_model, tiny_root, tmp_path):
    """Two models with two replicas each on a two-CPU cluster: replicas take a share of a CPU, so all four
    are placed (whole CPUs each would wait forever for the third)."""
    import shutil

    from fastapi.testclient import TestClient

    from spadim.scale import ray_serve
    from spadim.serve import create_app, load_inspectors

    other = tmp_path / "other.pt"
    shutil.copy(padim_model, other)
    inspectors = load_inspectors([padim_model, other], "random")
    ray_serve.deploy(inspectors, "local", 2, "random", "cpu")
    try:
        client = TestClient(create_app(inspectors))
        image = sorted((tiny_root / "nut" / "test").rglob("*.png"))[0]
        answers = [
            client.post(
                "/predict", data={"model": name}, files={"image": (image.name, image.read_bytes())}
            ).json()
            for name in ("nut", "other")
        ]
    finally:
        ray_serve.shutdown()
    assert [a["model"] for a in answers] == ["nut", "other"]  # each model answered for itself
    assert answers[0]["decision"] == answers[1]["decision"]
    assert answers[0]["region_score"] == pytest.approx(answers[1]["region_score"], rel=1e-6)


def test_predict_with_more_ray_workers_than_cpus_shares_them(cluster, padim_model, tiny_root, tmp_path):
    test = str(tiny_root / "nut" / "test")
    flags = ["--weights", "random", "--batch-size", "1"]
    assert main(["predict", str(padim_model), test, "--out", str(tmp_path / "local"), *flags]) == 0
    assert (
        main(
            [
                "predict",
                str(padim_model),
                test,
                "--out",
                str(tmp_path / "ray"),
                *flags,
                "--ray",
                "--workers",
                "3",
            ]
        )
        == 0
    )
    _same(_records(tmp_path / "local"), _records(tmp_path / "ray"))
