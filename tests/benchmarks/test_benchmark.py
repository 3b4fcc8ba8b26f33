"""``python -m benchmarks`` (make bench) end to end in a tiny configuration: keys and sane values, no timing
asserted."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository root, which holds benchmarks/
METHOD_KEYS = {"fit_s", "infer_ms_per_img", "peak_rss_gib", "backbone_ms_per_img", "n_train", "n_test"}
TINY = [
    "--n-train",
    "4",
    "--n-train-small",
    "2",
    "--n-test",
    "4",
    "--n-test-large",
    "6",
    "--size",
    "64",
    "--crop",
    "56",
    "--arch",
    "resnet18",
    "--weights",
    "random",
    "--stream-sizes",
    "3,10",
    "--serve-requests",
    "3",
    "--serve-clients",
    "2",
    "--serve-total",
    "6",
]


def _run(tmp_path: Path, *extra: str) -> tuple[dict, subprocess.CompletedProcess]:
    out = tmp_path / "bench"
    args = [*TINY, "--data", str(tmp_path / "data"), "--out", str(out), *extra]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", *args], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr
    assert "!!!" not in proc.stderr, proc.stderr  # a child process failed
    return json.loads((out / "bench.json").read_text()), proc


def _method_ok(block: dict, n_train: int, n_test: int, names=("spade", "padim")) -> None:
    for name in names:
        r = block[name]
        assert "error" not in r, r.get("traceback")
        assert METHOD_KEYS <= r.keys()
        assert (r["n_train"], r["n_test"]) == (n_train, n_test)
        assert r["fit_s"] >= 0 and r["infer_ms_per_img"] > 0 and r["backbone_ms_per_img"] > 0
        assert 0 < r["peak_rss_gib"] < 64


def _stream_ok(b: dict, sizes: list[int]) -> None:
    assert [r["n"] for r in b["stream"]["runs"]] == sizes
    for r in b["stream"]["runs"]:
        assert "error" not in r, r.get("traceback")
        assert r["predicted"] == r["new"] == r["n"]  # every distinct path predicted once
        assert r["stream_img_s"] > 0 and r["backbone_img_s"] > 0 and r["ratio"] > 0
        assert 0 < r["peak_rss_gib"] < 64


def _rows(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.endswith(("| PASS |", "| FAIL |"))]


def test_benchmark_tiny(tmp_path):
    b, proc = _run(tmp_path)
    assert {
        "backbone_ms_per_img",
        "n_train",
        "n_test",
        "arch",
        "weights",
        "spade",
        "padim",
        "n50",
        "large",
        "sweep",
        "calibration",
        "stream",
        "serve",
        "targets",
        "machine",
    } <= b.keys()
    assert (b["arch"], b["weights"], b["n_train"], b["n_test"]) == ("resnet18", "random", 4, 4)
    assert b["backbone_ms_per_img"] > 0 and b["machine"]["gpu"] is False
    _method_ok(b, 4, 4, ("spade", "padim", "patchcore"))
    pc = b["patchcore"]
    assert pc["layers"] == [2, 3] and pc["last_layer"] == 3
    # resnet18 at 56 px: layer 2 is 7 x 7, so 4 images give 196 patch vectors to thin to 19
    assert (
        pc["coreset_points"] == 4 * 7 * 7 and pc["coreset_kept"] == 19 and 0 < pc["coreset_s"] < pc["fit_s"]
    )
    assert set(b["search"]["patchcore_s"]) == set(b["search"]["spade_layer1_s"]) == {"torch", "faiss"}
    assert b["search"]["picked"] in b["search"]["seconds"]
    assert pc["search"]["name"] in ("bounded", "torch", "faiss") and b["spade"]["search"]["name"] in (
        "torch",
        "faiss",
    )
    _method_ok(b["n50"], 2, 4)
    _method_ok(b["large"], 4, 6)
    assert b["sweep"]["one_score_s"] > 0 and b["sweep"]["ratio"] > 0
    for name in ("spade", "padim", "patchcore"):
        c = b["calibration"][name]
        assert "error" not in c, c.get("traceback")
        assert c["n_images"] == 4 and c["calibration_s"] > 0 and c["features_s"] > 0 and c["ratio"] > 0
        assert c["how"] == "leave-one-out"
    _stream_ok(b, [3, 10])
    sv = b["serve"]
    assert sv["available"]  # FastAPI is one of spadim's own dependencies
    assert "error" not in sv, sv.get("traceback")
    assert sv["single_errors"] == 0 and sv["concurrent_errors"] == 0 and len(sv["latency_ms"]) == 3
    assert sv["latency_ms_median"] > 0 and sv["backbone_1_ms_median"] > 0
    # 9 method, memory and sweep targets; 3 PatchCore; 3 calibration, 2 stream rates, 1 stream memory;
    # PaDiM's one image alone; 2 serve
    assert len(b["targets"]) == 9 + 3 + 6 + 1 + 2
    padim = b["padim"]
    assert padim["one_image_ms"] > 0 and padim["backbone_one_ms"] > 0
    for t in b["targets"]:
        assert {"name", "value", "limit", "pass", "op"} <= t.keys()
        assert t["value"] is not None and t["value"] >= 0 and isinstance(t["pass"], bool)
    assert "RANDOM" in proc.stdout and f"{b['machine']['nproc']} CPU cores" in proc.stdout
    assert len(_rows(proc.stdout)) == len(b["targets"])
    assert not (tmp_path / "bench" / "models").exists()  # the fitted models are removed


def test_benchmark_only_stream(tmp_path):
    """--only runs the chosen cases alone; the stream then fits its own model."""
    b, proc = _run(tmp_path, "--only", "stream", "--stream-sizes", "2,5")
    assert b["cases"] == ["stream"]
    assert not {"backbone", "spade", "padim", "n50", "sweep", "calibration", "serve"} & b.keys()
    assert b["large"] is None
    assert "error" not in b["stream"]["model"], b["stream"]["model"].get("traceback")
    _stream_ok(b, [2, 5])
    assert [t["name"].split(",")[0] for t in b["targets"]] == ["predict stream / backbone-only rate"] * 2 + [
        "predict stream peak RSS"
    ]
    assert len(_rows(proc.stdout)) == 3
