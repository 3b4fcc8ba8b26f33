"""`spadim reproduce`: one run gives Table 1, both proposals and report.html; it resumes by class."""

import json
from html.parser import HTMLParser

import pytest

import spadim.studies.reproduce as rp
from spadim.cli import main

from conftest import FAST


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("src", "href"):
            if attrs.get(key) and not attrs[key].startswith("#"):
                self.links.append(attrs[key])


@pytest.fixture(scope="module")
def reproduced(tiny_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("rep") / "out"
    assert (
        main(
            [
                "reproduce",
                str(tiny_root),
                "--out",
                str(out),
                "--detectors",
                "orb",
                "--multipliers",
                "0,0.5,1",
                *FAST,
            ]
        )
        == 0
    )
    return out


def test_reproduce_writes_every_table_and_a_linked_report(reproduced, tiny_root, tmp_path):
    for stem in ("table1", "layer_sweep", "table3", "best", "suitability", "multiplier_sweep"):
        assert (reproduced / f"{stem}.json").is_file(), stem
    table1 = json.loads((reproduced / "table1.json").read_text())["rows"]
    assert {(r["class"], r["method"]) for r in table1} == {
        (c, m) for c in ("nut", "tile", "mean") for m in ("spade", "padim")
    }
    layers = json.loads((reproduced / "layer_sweep.json").read_text())["rows"]
    assert len([r for r in layers if r["class"] != "mean"]) == 2 * 15 * 2
    # Table 1 is what evaluate measures with the study's settings (centre crop, layers 1,2,3), and r = 1
    # of the mask sweep (masks computed and applied) leaves it unchanged
    evaluated = tmp_path / "evaluate"
    flags = ["--frame", "crop", "--layers", "1,2,3", "--methods", "spade,padim", "--no-operating-point"]
    assert main(["evaluate", str(tiny_root), "--out", str(evaluated), "--examples", "0", *FAST, *flags]) == 0
    plain = {
        (r["class"], r["method"]): r for r in json.loads((evaluated / "results.json").read_text())["rows"]
    }
    sweep = json.loads((reproduced / "multiplier_sweep.json").read_text())["rows"]
    for row in (r for r in table1 if r["class"] != "mean"):
        unmasked = next(
            r
            for r in sweep
            if (r["class"], r["method"], r["multiplier"]) == (row["class"], row["method"], 1.0)
        )
        for metric in ("pixel_auroc", "pixel_aupr", "image_auroc", "aupro"):
            assert row[metric] == pytest.approx(plain[(row["class"], row["method"])][metric], abs=1e-6)
        for metric in ("pixel_auroc", "pixel_aupr"):
            assert row[metric] == unmasked[metric]
    html = (reproduced / "report.html").read_text()
    parser = _Links()
    parser.feed(html)
    assert parser.links and all((reproduced / link).is_file() for link in parser.links)
    assert "RANDOM UNTRAINED WEIGHTS" in html and "<script" not in html
    assert "--weights random" in html  # the command line names the weights


def report_numbers(html: str) -> dict:
    """(class, method, metric) -> value from the report's data-value attributes."""
    import re

    numbers = {}
    for row in re.finditer(
        r'<tr[^>]*data-class="([^"]+)"[^>]*data-method="([^"]+)"[^>]*>(.*?)</tr>', html, re.S
    ):
        for cell in re.finditer(r'data-metric="([^"]+)"[^>]*data-value="([^"]+)"', row.group(3)):
            numbers[(row.group(1), row.group(2), cell.group(1))] = float(cell.group(2))
    return numbers


@pytest.mark.parametrize(
    "command,table",
    [("evaluate", "results"), ("layer-sweep", "layer_sweep"), ("mask-sweep", "multiplier_sweep")],
)
def test_every_command_writes_a_report_whose_numbers_are_the_results(command, table, tiny_root, tmp_path):
    out = tmp_path / command
    extra = ["--detectors", "orb", "--multipliers", "0.5,1"] if command == "mask-sweep" else []
    assert main([command, str(tiny_root), "--out", str(out), *extra, *FAST]) == 0
    html = (out / "report.html").read_text()
    parser = _Links()
    parser.feed(html)
    assert all((out / link).is_file() for link in parser.links)
    rows = json.loads((out / f"{table}.json").read_text())["rows"]
    if command == "layer-sweep":
        rows = [r for r in rows if r["layers"] == "1+2+3"]
    elif command == "mask-sweep":  # the report's table is the unmasked run, i.e. r = 1
        rows = [r for r in rows if r["multiplier"] == 1.0]
    numbers = report_numbers(html)
    assert numbers
    for r in rows:
        for metric in ("pixel_auroc", "pixel_aupr", "image_auroc", "aupro"):
            assert numbers[(r["class"], r["method"], metric)] == pytest.approx(r[metric], abs=1e-12)


def test_reproduce_resumes_by_class_and_refuses_other_settings(reproduced, tiny_root, monkeypatch, capsys):
    calls = []
    real = rp.reproduce_class
    monkeypatch.setattr(rp, "reproduce_class", lambda *a, **k: calls.append(1) or real(*a, **k))
    (reproduced / "per_class" / "tile.json").unlink()
    before = json.loads((reproduced / "table1.json").read_text())["rows"]
    assert (
        main(
            [
                "reproduce",
                str(tiny_root),
                "--out",
                str(reproduced),
                "--detectors",
                "orb",
                "--multipliers",
                "0,0.5,1",
                *FAST,
            ]
        )
        == 0
    )
    assert len(calls) == 1 and "1 of 2 classes already done" in capsys.readouterr().err
    assert json.loads((reproduced / "table1.json").read_text())["rows"] == before
    assert (
        main(
            [
                "reproduce",
                str(tiny_root),
                "--out",
                str(reproduced),
                "--detectors",
                "orb",
                "--multipliers",
                "0,1",
                *FAST,
            ]
        )
        == 2
    )
    assert "other settings" in capsys.readouterr().err


def test_reproduce_runs_patchcore_with_its_own_layers(tiny_root, tmp_path):
    """PatchCore's Table 1 row is its 2+3 layer-sweep row (the paper's layers), SPADE's the 1+2+3 row;
    the mask sweep at r = 1 leaves PatchCore's metrics unchanged and the report compares it with the
    reference code's published pixel AUROC."""
    out = tmp_path / "rep"
    assert (
        main(
            [
                "reproduce",
                str(tiny_root),
                "--classes",
                "nut",
                "--methods",
                "spade,patchcore",
                "--out",
                str(out),
                "--detectors",
                "orb",
                "--multipliers",
                "0,1",
                *FAST,
            ]
        )
        == 0
    )
    rows = lambda name: json.loads((out / f"{name}.json").read_text())["rows"]  # noqa: E731
    table1 = {r["method"]: r for r in rows("table1") if r["class"] == "nut"}
    sweep = {(r["layers"], r["method"]): r for r in rows("layer_sweep") if r["class"] == "nut"}
    assert len(sweep) == 15 * 2
    for method, layers in (("patchcore", "2+3"), ("spade", "1+2+3")):
        for metric in ("pixel_auroc", "pixel_aupr", "image_auroc"):
            assert table1[method][metric] == sweep[(layers, method)][metric]
    masked = [r for r in rows("multiplier_sweep") if r["class"] == "nut" and r["method"] == "patchcore"]
    assert {r["multiplier"] for r in masked} == {0.0, 1.0}
    for r in masked:
        if r["multiplier"] == 1.0:
            assert r["pixel_aupr"] == table1["patchcore"]["pixel_aupr"]
    assert (out / "multiplier_sweep_patchcore.png").is_file()
    assert "PatchCore reference code WR50" in (out / "report.html").read_text()
