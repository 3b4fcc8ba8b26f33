"""Layer-combination and outside-multiplier studies: completeness, consistency, resumption."""

import json

import pytest

import spadim.studies.layersweep as ls
from spadim.cli import main
from spadim.features.extractor import ALL_COMBOS
from spadim.methods import Spade

from conftest import FAST


def _rows(path):
    return json.loads(path.read_text())["rows"]


@pytest.fixture(scope="module")
def layer_sweep(tiny_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("ls") / "out"
    assert main(["layer-sweep", str(tiny_root), "--out", str(out), *FAST]) == 0
    return out


def test_layer_sweep_has_all_15_combinations(layer_sweep):
    rows = [r for r in _rows(layer_sweep / "layer_sweep.json") if r["class"] != "mean"]
    assert len(rows) == 2 * 15 * 2
    combos = {r["layers"] for r in rows}
    assert combos == {"+".join(map(str, c)) for c in ALL_COMBOS} and len(combos) == 15
    t3 = _rows(layer_sweep / "table3.json")
    assert [(r["method"], r["combinations"], r["n"]) for r in t3] == [
        ("spade", "with layer 4", 16),
        ("spade", "without layer 4", 14),
        ("padim", "with layer 4", 16),
        ("padim", "without layer 4", 14),
    ]
    with4 = [r["pixel_aupr"] for r in rows if r["method"] == "spade" and "4" in r["layers"]]
    assert t3[0]["mean_pixel_aupr"] == pytest.approx(sum(with4) / len(with4))
    best = _rows(layer_sweep / "best.json")
    for b in best:
        cand = [r["pixel_aupr"] for r in rows if r["class"] == b["class"] and r["method"] == b["method"]]
        assert b["pixel_aupr"] == max(cand)
    summary = (layer_sweep / "summary.md").read_text()
    assert "Pearson r" in summary and (layer_sweep / "figure5.png").is_file()


@pytest.mark.parametrize("layers", ["1,2", "3,4", "2"])
def test_sweep_equals_single_evaluate_runs(layer_sweep, tiny_root, tmp_path, layers):
    out = tmp_path / "ev"
    assert (
        main(
            [
                "evaluate",
                str(tiny_root),
                "--out",
                str(out),
                "--layers",
                layers,
                "--examples",
                "0",
                *FAST,
                "--methods",
                "spade,padim",
                "--frame",
                "crop",
            ]
        )
        == 0
    )
    ev = {(r["class"], r["method"]): r for r in _rows(out / "results.json") if r["class"] != "mean"}
    sw = {
        (r["class"], r["method"]): r
        for r in _rows(layer_sweep / "layer_sweep.json")
        if r["layers"] == layers.replace(",", "+")
    }
    for key, r in ev.items():
        for m in ("pixel_auroc", "pixel_aupr", "image_auroc", "aupro"):
            assert sw[key][m] == r[m], (key, m)


def test_interrupted_sweep_resumes(tiny_root, tmp_path, monkeypatch, layer_sweep):
    """Each method's subsets come from one call per class (SPADE's from one set of per-layer grids,
    whose K nearest images it finds once); an interrupted sweep keeps what it finished."""
    out = tmp_path / "ls"
    real_results, real_neighbours = ls.subset_results, Spade.neighbours
    calls, yielded, searches = {}, {}, []

    def flaky(cr, s, method, combos):
        calls[method] = calls.get(method, 0) + 1
        for item in real_results(cr, s, method, combos):
            yielded[method] = yielded.get(method, 0) + 1
            if yielded.get("padim", 0) > 10:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(ls, "subset_results", flaky)
    monkeypatch.setattr(Spade, "neighbours", lambda *a: searches.append(1) or real_neighbours(*a))
    assert main(["layer-sweep", str(tiny_root), "--out", str(out), *FAST]) == 130
    partial = json.loads((out / "per_class" / "nut.json").read_text())["results"]
    assert len(partial) == 15 + 10 and calls == {"spade": 1, "padim": 1} and len(searches) == 1
    calls.clear()
    yielded.clear()
    yielded["padim"] = -1000
    assert main(["layer-sweep", str(tiny_root), "--out", str(out), *FAST]) == 0
    assert calls == {"padim": 2, "spade": 1} and yielded["spade"] == 15  # only the missing results
    assert yielded["padim"] == -1000 + 5 + 15
    assert _rows(out / "layer_sweep.json") == _rows(layer_sweep / "layer_sweep.json")
    # a rerun with other settings refuses to mix results
    assert main(["layer-sweep", str(tiny_root), "--out", str(out), *FAST[:-1], "7"]) == 2


def test_mask_sweep(tiny_root, tmp_path):
    out = tmp_path / "ms"
    assert main(["mask-sweep", str(tiny_root), "--out", str(out), "--examples", "1", *FAST]) == 0
    ev = tmp_path / "ev"
    assert (
        main(
            [
                "evaluate",
                str(tiny_root),
                "--out",
                str(ev),
                "--examples",
                "0",
                *FAST,
                "--methods",
                "spade,padim",
                "--layers",
                "1,2,3",
                "--frame",
                "crop",
            ]
        )
        == 0
    )
    plain = {(r["class"], r["method"]): r for r in _rows(ev / "results.json")}
    sweep = _rows(out / "multiplier_sweep.json")
    assert {r["multiplier"] for r in sweep} == {0.0, 0.2, 0.4, 0.6, 0.8, 1.0}
    assert {r["detector"] for r in sweep} == {"orb", "akaze", "brisk"}
    for r in sweep:
        if r["multiplier"] == 1.0:  # r = 1 reproduces the unmasked metrics exactly
            p = plain[(r["class"], r["method"])]
            assert all(r[m] == p[m] for m in ("pixel_auroc", "pixel_aupr", "image_auroc", "aupro"))
    suit = _rows(out / "suitability.json")
    assert {(r["class"], r["detector"]) for r in suit} == {
        (c, d) for c in ("nut", "tile") for d in ("orb", "akaze", "brisk")
    }
    for r in suit:
        assert 0 < r["area_fraction"] <= 1 and r["auto_rating"] in (0, 1, 2)
    assert (out / "mask_grids" / "nut.png").is_file() and (out / "multiplier_sweep_padim.png").is_file()
    assert list((out / "examples" / "nut").glob("spade_*.png"))


def test_layer_sweep_resumes_with_the_default_d_given_explicitly(tiny_root, tmp_path, capsys):
    """The signature stores the effective d: the default and the same value given resume each other."""
    out = tmp_path / "ls"
    args = [
        "layer-sweep",
        str(tiny_root),
        "--classes",
        "tile",
        "--methods",
        "padim",
        "--out",
        str(out),
        *FAST,
    ]
    assert main(args) == 0
    sig = json.loads((out / "per_class" / "tile.json").read_text())["signature"]
    assert sig["d"] == 100  # resnet18's default
    capsys.readouterr()
    assert main([*args, "--d", "100"]) == 0
    assert "15 results already done, 0 to go" in capsys.readouterr().err
    # a signature that holds d = None for the default resumes with the same d given explicitly
    f = out / "per_class" / "tile.json"
    f.write_text(json.dumps({**json.loads(f.read_text()), "signature": {**sig, "d": None}}))
    assert main([*args, "--d", "100"]) == 0
    assert "15 results already done, 0 to go" in capsys.readouterr().err
    assert main([*args, "--d", "50"]) == 2
    assert "other settings" in capsys.readouterr().err


def test_study_modules_do_not_import_cli_helpers():
    """The studies are driven through run(...); argparse lives in cli/cliargs only."""
    import ast
    import inspect

    import spadim.studies.masksweep as ms

    for mod in (ls, ms):
        tree = ast.parse(inspect.getsource(mod))
        imported = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not {"cliargs", "cli", "argparse"} & {m.rsplit(".", 1)[-1] for m in imported}, mod.__name__
        assert not hasattr(mod, "add_parser")


def test_mask_sweep_and_layer_sweep_take_patchcore(tiny_root, tmp_path):
    """r = 1 reproduces `evaluate --methods patchcore` (layers 2+3) exactly; the layer sweep's 2+3 row too."""
    common = ["--classes", "nut", "--methods", "patchcore", *FAST]
    ev = tmp_path / "ev"
    assert (
        main(
            [
                "evaluate",
                str(tiny_root),
                "--out",
                str(ev),
                "--examples",
                "0",
                *common,
                "--layers",
                "2,3",
                "--frame",
                "crop",
            ]
        )
        == 0
    )
    plain = {r["class"]: r for r in _rows(ev / "results.json") if r["method"] == "patchcore"}["nut"]
    ms = tmp_path / "ms"
    assert (
        main(
            [
                "mask-sweep",
                str(tiny_root),
                "--out",
                str(ms),
                "--examples",
                "0",
                "--multipliers",
                "0,1",
                *common,
            ]
        )
        == 0
    )
    ones = [r for r in _rows(ms / "multiplier_sweep.json") if r["multiplier"] == 1.0 and r["class"] == "nut"]
    assert len(ones) == 3  # one per detector
    for r in ones:
        assert r["method"] == "patchcore" and all(r[m] == plain[m] for m in ("pixel_auroc", "pixel_aupr"))
    ls = tmp_path / "ls"
    assert main(["layer-sweep", str(tiny_root), "--out", str(ls), *common]) == 0
    row = {r["layers"]: r for r in _rows(ls / "layer_sweep.json") if r["class"] == "nut"}["2+3"]
    assert row["pixel_aupr"] == pytest.approx(plain["pixel_aupr"], abs=1e-9)
