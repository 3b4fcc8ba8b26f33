"""scripts/benchmark.py end to end in a tiny configuration: keys and sane values, no timing asserted."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "benchmark.py"
METHOD_KEYS = {"fit_s", "infer_ms_per_img", "peak_rss_gib", "backbone_ms_per_img", "n_train", "n_test"}


def _method_ok(block: dict, n_train: int, n_test: int) -> None:
    for name in ("spade", "padim"):
        r = block[name]
        assert "error" not in r, r.get("traceback")
        assert METHOD_KEYS <= r.keys()
        assert (r["n_train"], r["n_test"]) == (n_train, n_test)
        assert r["fit_s"] >= 0 and r["infer_ms_per_img"] > 0 and r["backbone_ms_per_img"] > 0
        assert 0 < r["peak_rss_gib"] < 64


def test_benchmark_tiny(tmp_path):
    out = tmp_path / "bench"
    args = ["--n-train", "4", "--n-train-small", "2", "--n-test", "4", "--n-test-large", "6", "--size", "64",
            "--crop", "56", "--arch", "resnet18", "--weights", "random", "--data", str(tmp_path / "data"),
            "--out", str(out)]
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    b = json.loads((out / "bench.json").read_text())
    assert {"backbone_ms_per_img", "n_train", "n_test", "arch", "weights", "spade", "padim", "n50", "large",
            "sweep", "targets", "machine"} <= b.keys()
    assert (b["arch"], b["weights"], b["n_train"], b["n_test"]) == ("resnet18", "random", 4, 4)
    assert b["backbone_ms_per_img"] > 0 and b["machine"]["gpu"] is False
    _method_ok(b, 4, 4)
    _method_ok(b["n50"], 2, 4)
    _method_ok(b["large"], 4, 6)
    assert b["sweep"]["one_score_s"] > 0 and b["sweep"]["ratio"] > 0
    assert len(b["targets"]) == 9
    for t in b["targets"]:
        assert {"name", "value", "limit", "pass"} <= t.keys()
        assert t["value"] is not None and t["value"] >= 0 and isinstance(t["pass"], bool)
    assert "RANDOM" in proc.stdout and f"{b['machine']['nproc']} CPU cores" in proc.stdout
    rows = [line for line in proc.stdout.splitlines() if line.endswith(("| PASS |", "| FAIL |"))]
    assert len(rows) == len(b["targets"])
