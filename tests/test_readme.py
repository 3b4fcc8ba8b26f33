"""The README's Python example runs as printed, on real hazelnut images (../shared) with real weights."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CAFFE_WEIGHTS, SUBSET

ROOT = Path(__file__).resolve().parents[1]
HAZELNUT = SUBSET / "hazelnut"


@pytest.mark.skipif(
    not (CAFFE_WEIGHTS.is_file() and HAZELNUT.is_dir()),
    reason="../shared (real weights and MVTec subset) is not beside this checkout",
)
def test_the_python_example_runs(tmp_path):
    (snippet,) = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    good, tonight = tmp_path / "good_parts", tmp_path / "tonight"
    good.mkdir()
    tonight.mkdir()
    train = sorted((HAZELNUT / "train" / "good").glob("*.png"))
    for path in train[:20]:
        (good / path.name).symlink_to(path)
    (tmp_path / "more_good").mkdir()
    (tmp_path / "more_good" / "0001.png").symlink_to(train[20])
    for path in sorted((HAZELNUT / "test" / "crack").glob("*.png")):
        (tonight / f"crack_{path.name}").symlink_to(path)
    env = {**os.environ, "SPADIM_WEIGHTS": str(CAFFE_WEIGHTS.parent)}
    run = subprocess.run(
        [sys.executable, "-c", snippet], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr
    images = sorted(path.name for path in tonight.iterdir())
    printed = run.stdout.strip().splitlines()
    lines = printed[-len(images) :]  # the region level first, then one line per image
    level = float(printed[-len(images) - 1].split()[0])
    assert [Path(line.split()[0]).name for line in lines] == images
    for line in lines:  # name, decision, region score, regions: a defect exactly above the level
        name, decision, region_score, regions = line.split(maxsplit=3)
        assert decision == ("defect" if float(region_score) > level else "ok"), line
        assert (regions != "[]") == (decision == "defect"), line
    from spadim import Inspector
    from spadim.inspect.versions import list_versions

    saved = Inspector.load(tmp_path / "models" / "bolts.pt", weights=str(CAFFE_WEIGHTS.parent))
    assert saved.meta["fit"]["images"] == 21 and saved.calibration.n_images == 21  # 20 fitted + 1 update
    assert [entry["kind"] for entry in list_versions(tmp_path / "models" / "bolts.pt")] == ["fit"]
