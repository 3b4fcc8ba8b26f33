"""`spadim evaluate --train/--test [--masks]`: the same numbers on the same images whichever layout
they come in, and without masks the pixel metrics are "n/a" (null), never NaN or 0."""

import csv
import json
import shutil
from pathlib import Path

import pytest

from spadim.cli import main

from conftest import FAST, SUBSET

HAZELNUT = SUBSET / "hazelnut"
METRICS = ("pixel_auroc", "pixel_aupr", "image_auroc", "aupro")
PIXEL_METRICS = ("pixel_auroc", "pixel_aupr", "aupro")


def _run(*args) -> int:
    return main([str(a) for a in args])


def _rows(out: Path) -> dict[str, dict]:
    rows = json.loads((out / "results.json").read_text())["rows"]
    return {r["method"]: r for r in rows if r["class"] != "mean"}


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    """hazelnut rearranged: train/ flat and nested, test/ok + test/<defect>, masks/<defect>/<stem>.png.

    The training images keep their sorted order (first flat, then in line_b/, then line_b/night/):
    PaDiM's mean and covariance are float sums whose last bits depend on the order of the images."""
    if not HAZELNUT.is_dir():
        pytest.skip(f"{HAZELNUT} is not beside this checkout")
    root = tmp_path_factory.mktemp("plain") / "nuts"
    train = sorted((HAZELNUT / "train" / "good").glob("*.png"))
    for i, img in enumerate(train):
        sub = "" if i < len(train) // 2 else "line_b" if i < 3 * len(train) // 4 else "line_b/night"
        (root / "train" / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy(img, root / "train" / sub / img.name)
    for folder in sorted((HAZELNUT / "test").iterdir()):
        label = "ok" if folder.name == "good" else folder.name
        shutil.copytree(folder, root / "test" / label)
        if folder.name != "good":
            (root / "masks" / label).mkdir(parents=True)
            for mask in (HAZELNUT / "ground_truth" / folder.name).glob("*_mask.png"):
                shutil.copy(mask, root / "masks" / label / mask.name.replace("_mask", ""))
    return root


@pytest.fixture(scope="module")
def runs(plain, tmp_path_factory) -> dict[str, Path]:
    outs = {k: tmp_path_factory.mktemp(k) / "out" for k in ("mvtec", "plain", "no_masks")}
    common = ["--examples", "1", *FAST, "--methods", "spade,padim", "--layers", "1,2,3"]
    assert _run("evaluate", HAZELNUT, "--out", outs["mvtec"], *common) == 0
    assert (
        _run(
            "evaluate",
            "--train",
            plain / "train",
            "--test",
            plain / "test",
            "--masks",
            plain / "masks",
            "--name",
            "hazelnut",
            "--out",
            outs["plain"],
            *common,
        )
        == 0
    )
    assert (
        _run(
            "evaluate",
            "--train",
            plain / "train",
            "--test",
            plain / "test",
            "--out",
            outs["no_masks"],
            *common,
        )
        == 0
    )
    return outs


def test_same_numbers_in_either_layout(runs):
    mvtec, plain = _rows(runs["mvtec"]), _rows(runs["plain"])
    assert set(mvtec) == set(plain) == {"spade", "padim"}
    for method, row in mvtec.items():
        assert all(isinstance(row[m], float) for m in METRICS), row
        assert {m: plain[method][m] for m in METRICS} == {m: row[m] for m in METRICS}, method
        counts = (plain[method]["n_train"], plain[method]["n_test"])
        assert counts == (row["n_train"], row["n_test"]) == (50, 10)
        assert plain[method]["class"] == "hazelnut"


def test_without_masks_pixel_metrics_are_na(runs):
    masked, rows = _rows(runs["plain"]), _rows(runs["no_masks"])
    doc = json.loads((runs["no_masks"] / "results.json").read_text())
    for method, row in rows.items():
        assert row["class"] == "nuts"  # the training folder's parent names the class
        assert all(row[m] is None for m in PIXEL_METRICS), row
        assert row["image_auroc"] == masked[method]["image_auroc"]
        assert "no ground-truth masks" in row["note"]
    assert all(r[m] is None for r in doc["rows"] if r["class"] == "mean" for m in PIXEL_METRICS)
    text = (runs["no_masks"] / "results.json").read_text()
    assert "NaN" not in text and '"pixel_aupr": null' in text
    with open(runs["no_masks"] / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert table and all(r[m] == "n/a" for r in table for m in PIXEL_METRICS)
    assert all(r["image_auroc"] not in ("n/a", "nan", "") for r in table)
    assert "| n/a |" in (runs["no_masks"] / "results.md").read_text()
    html = (runs["no_masks"] / "report.html").read_text()
    assert 'data-metric="pixel_aupr" data-value="n/a">n/a<' in html and "no ground-truth masks" in html
    assert not (runs["no_masks"] / "curves").exists() and not (runs["no_masks"] / "gallery").exists()


def test_without_normal_test_images_image_auroc_is_na_too(plain, tmp_path):
    test = tmp_path / "test"
    shutil.copytree(plain / "test", test, ignore=shutil.ignore_patterns("ok"))
    out = tmp_path / "out"
    assert (
        _run(
            "evaluate",
            "--train",
            plain / "train",
            "--test",
            test,
            "--out",
            out,
            "--methods",
            "padim",
            "--examples",
            "0",
            *FAST,
            "--layers",
            "1,2,3",
        )
        == 0
    )
    row = _rows(out)["padim"]
    assert all(row[m] is None for m in METRICS) and "image AUROC n/a" in row["note"]


def _one_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("spadim: error:"), err
    for needle in needles:
        assert needle in err, err


def test_bad_plain_arguments_fail_before_any_work(plain, tmp_path, capsys, monkeypatch):
    def no_backbone(*args, **kwargs):
        raise AssertionError("the backbone was loaded before the input was checked")

    monkeypatch.setattr("spadim.run.pipeline.load_backbone", no_backbone)
    out = tmp_path / "out"
    cases = [
        (["evaluate", HAZELNUT, "--train", plain / "train"], ["either DATA", "not both"]),
        (["evaluate", "--train", plain / "train"], ["--train DIR --test DIR"]),
        (["evaluate", "--masks", plain / "masks"], ["--train DIR --test DIR"]),
        (["evaluate"], ["give DATA"]),
        (["evaluate", "--train", plain / "train", "--test", plain / "test", "--classes", "x"], ["--name"]),
        (["evaluate", "--train", plain / "train", "--test", tmp_path / "no"], ["--test", "does not exist"]),
    ]
    for args, needles in cases:
        assert _run(*args, "--out", out, *FAST, "--layers", "1,2,3", "--methods", "spade,padim") == 2, args
        _one_error(capsys, *needles)
    masks = tmp_path / "masks"
    shutil.copytree(plain / "masks", masks)
    (masks / "crack" / "000.png").unlink()
    assert (
        _run(
            "evaluate",
            "--train",
            plain / "train",
            "--test",
            plain / "test",
            "--masks",
            masks,
            "--out",
            out,
            *FAST,
            "--layers",
            "1,2,3",
            "--methods",
            "spade,padim",
        )
        == 2
    )
    _one_error(
        capsys,
        "missing mask for test image",
        str(plain / "test" / "crack" / "000.png"),
        str(masks / "crack" / "000_mask.png"),
    )
    broken = tmp_path / "broken"
    shutil.copytree(plain / "test", broken)
    (broken / "cut" / "001.png").write_bytes((broken / "cut" / "001.png").read_bytes()[:200])
    assert (
        _run(
            "evaluate",
            "--train",
            plain / "train",
            "--test",
            broken,
            "--out",
            out,
            *FAST,
            "--methods",
            "spade,padim",
            "--layers",
            "1,2,3",
        )
        == 2
    )
    _one_error(capsys, "truncated", str(broken / "cut" / "001.png"))
    assert not out.exists()
