"""End-to-end CLI paths and bad inputs (exit code 2, one line, earlier results untouched)."""

import csv
import json

import cv2
import numpy as np
import pytest
import torch

from spadim.cli import main
from spadim.metrics.ranking import pixel_aupr, pixel_auroc

from conftest import FAST


def _run(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def evaluated(tiny_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "out"
    assert (
        _run(
            "evaluate",
            tiny_root,
            "--out",
            out,
            "--examples",
            "2",
            *FAST,
            "--methods",
            "spade,padim",
            "--layers",
            "1,2,3",
        )
        == 0
    )
    return out


def test_evaluate_outputs(evaluated, tiny_root):
    rows = json.loads((evaluated / "results.json").read_text())["rows"]
    assert {(r["class"], r["method"]) for r in rows} == {
        (c, m) for c in ("nut", "tile", "mean") for m in ("spade", "padim")
    }
    for r in rows:
        assert 0 <= r["pixel_auroc"] <= 1 and 0 <= r["pixel_aupr"] <= 1
    meta = json.loads((evaluated / "results.json").read_text())["meta"]
    assert meta["pretrained"] is False and "RANDOM" in meta["weights"]
    assert "RANDOM" in (evaluated / "results.md").read_text()
    header = (evaluated / "results.csv").read_text().splitlines()[0]
    assert header.startswith("class,method,pixel_auroc,pixel_aupr,image_auroc,aupro")
    assert (evaluated / "curves" / "nut.png").is_file() and len(
        list((evaluated / "heatmaps" / "tile").glob("*.png"))
    ) == 2
    mean = next(r for r in rows if r["class"] == "mean" and r["method"] == "spade")
    cls = [r["pixel_aupr"] for r in rows if r["class"] != "mean" and r["method"] == "spade"]
    assert mean["pixel_aupr"] == pytest.approx(np.mean(cls))


def test_evaluate_is_reproducible(evaluated, tiny_root, tmp_path):
    assert (
        _run(
            "evaluate",
            tiny_root,
            "--out",
            tmp_path / "again",
            "--examples",
            "0",
            *FAST,
            "--methods",
            "spade,padim",
            "--layers",
            "1,2,3",
        )
        == 0
    )
    a = json.loads((evaluated / "results.json").read_text())["rows"]
    b = json.loads((tmp_path / "again" / "results.json").read_text())["rows"]
    assert a == b


def test_object_mask_multiplier_one_changes_nothing(evaluated, tiny_root, tmp_path):
    out = tmp_path / "masked"
    assert (
        _run(
            "evaluate",
            tiny_root,
            "--out",
            out,
            "--examples",
            "0",
            "--object-mask",
            "orb",
            "--outside-multiplier",
            "1.0",
            *FAST,
            "--layers",
            "1,2,3",
            "--methods",
            "spade,padim",
        )
        == 0
    )
    assert (
        json.loads((out / "results.json").read_text())["rows"]
        == json.loads((evaluated / "results.json").read_text())["rows"]
    )


def test_fit_predict_round_trip(tiny_root, tmp_path, evaluated):
    """A model file reproduces evaluate's SPADE maps (same frame, same pixel metrics), and predict
    writes one record, mask, heatmap and overlay per image."""
    from spadim.data.mvtec import Preprocess, load_class, load_images, load_masks
    from spadim.inspect import Inspector

    model = tmp_path / "nut.pt"
    assert (
        _run("fit", tiny_root / "nut", "--method", "spade", "--out", model, *FAST, "--layers", "1,2,3") == 0
    )
    test_imgs = sorted((tiny_root / "nut" / "test").rglob("*.png"))
    out = tmp_path / "pred"
    folders = sorted(p for p in (tiny_root / "nut" / "test").iterdir())
    assert _run("predict", model, *folders, "--out", out, "--save-maps") == 0
    lines = (out / "predictions.csv").read_text().splitlines()
    assert len(lines) == 1 + len(test_imgs)
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    table = list(csv.DictReader(lines))
    for record, row in zip(records, table):  # the table repeats the JSON's decision and its region score
        assert row["decision"] == record["decision"]
        assert float(row["region_score"]) == pytest.approx(record["region_score"], rel=1e-5)
    for sub in ("heatmaps", "overlays", "masks", "maps"):
        assert len(list((out / sub).iterdir())) == len(test_imgs), sub
    data = load_class(tiny_root / "nut")
    pre = Preprocess(72, 64, "whole")  # fit's and evaluate's default frame
    frames, shapes = load_images(data.test, pre)
    maps, _, _ = Inspector.load(model).score_frames(frames)
    masks = load_masks(data, pre, shapes)
    row = next(
        r
        for r in json.loads((evaluated / "results.json").read_text())["rows"]
        if r["class"] == "nut" and r["method"] == "spade"
    )
    assert pixel_auroc(maps, masks) == pytest.approx(row["pixel_auroc"], abs=1e-9)
    assert pixel_aupr(maps, masks) == pytest.approx(row["pixel_aupr"], abs=1e-9)
    assert (
        _run(
            "predict",
            model,
            tiny_root / "nut" / "test" / "good",
            "--out",
            tmp_path / "p2",
            "--object-mask",
            "akaze",
        )
        == 0
    )


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--layers", "1,5"], "unknown layer"),
        (["--methods", "spade,knn"], "unknown method"),
        (["--outside-multiplier", "1.5", "--object-mask", "orb"], "outside [0, 1]"),
        (["--classes", "carpet"], "'carpet' not found"),
        (["--k", "0"], "--k must be >= 1"),
        (["--crop", "100"], "need 1 <= crop <= resize"),
    ],
)
def test_bad_arguments_exit_2_and_keep_results(evaluated, tiny_root, capsys, extra, needle):
    before = _snapshot(evaluated)
    assert (
        _run(
            "evaluate",
            tiny_root,
            "--out",
            evaluated,
            *FAST,
            "--methods",
            "spade,padim",
            "--layers",
            "1,2,3",
            *extra,
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("spadim: error:") and needle in err[0]
    assert _snapshot(evaluated) == before


def test_corrupt_and_grayscale_images(tiny_copy, tmp_path, capsys):
    out = tmp_path / "out"
    gray = tiny_copy / "tile" / "train" / "good" / "000.png"
    cv2.imwrite(str(gray), cv2.imread(str(gray), cv2.IMREAD_GRAYSCALE))  # grayscale images are accepted
    assert (
        _run(
            "evaluate",
            tiny_copy,
            "--classes",
            "tile",
            "--out",
            out,
            "--examples",
            "0",
            *FAST,
            "--methods",
            "spade,padim",
            "--layers",
            "1,2,3",
        )
        == 0
    )
    before = _snapshot(out)
    capsys.readouterr()
    bad = tiny_copy / "tile" / "test" / "good" / "001.png"
    bad.write_bytes(b"\x89PNG broken")
    assert (
        _run(
            "evaluate",
            tiny_copy,
            "--classes",
            "tile",
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
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("spadim: error: cannot read image") and str(bad) in err[-1]
    assert _snapshot(out) == before
    assert not list(tmp_path.glob(".out.staging-*"))


def test_bad_data_folders(tmp_path, tiny_copy, capsys):
    assert _run("evaluate", tmp_path / "missing", *FAST, "--methods", "spade,padim", "--layers", "1,2,3") == 2
    (tiny_copy / "nut" / "train" / "good").rename(tiny_copy / "nut" / "train" / "ok")
    capsys.readouterr()
    assert _run("fit", tiny_copy / "nut", "--out", tmp_path / "m.pt", *FAST, "--layers", "1,2,3") == 2
    assert "so not only normal images" in capsys.readouterr().err  # a class folder without train/good
    assert not (tmp_path / "m.pt").exists()


def test_model_file_checks(tiny_root, tmp_path, capsys):
    model = tmp_path / "m.pt"
    assert (
        _run("fit", tiny_root / "tile", "--method", "padim", "--out", model, *FAST, "--layers", "1,2,3") == 0
    )
    blob = torch.load(model, weights_only=True)
    blob["format_version"] = 0
    torch.save(blob, tmp_path / "old.pt")
    (tmp_path / "junk.pt").write_bytes(b"nope")
    img = tiny_root / "tile" / "test" / "good"
    capsys.readouterr()
    assert _run("predict", tmp_path / "old.pt", img, "--out", tmp_path / "p") == 2
    assert "format version 0" in capsys.readouterr().err
    assert _run("predict", tmp_path / "junk.pt", img, "--out", tmp_path / "p") == 2
    assert "not a spadim model file" in capsys.readouterr().err
    assert _run("predict", model, tmp_path / "nothing_here", "--out", tmp_path / "p") == 2
    assert not (tmp_path / "p").exists()


def test_missing_weights_stop_loudly(tiny_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.delenv("SPADIM_WEIGHTS", raising=False)
    assert _run("evaluate", tiny_root, "--out", tmp_path / "o", "--arch", "resnet18") == 2
    err = capsys.readouterr().err
    assert "no ImageNet checkpoint" in err and "--weights random" in err
    assert not (tmp_path / "o").exists()
    assert _run("weights", "--arch", "resnet18") == 2
    assert _run("weights", "--arch", "resnet18", "--weights", "random") == 0
    assert "RANDOM UNTRAINED WEIGHTS" in capsys.readouterr().out


# ------------------------------------------------ bad input: one line, exit 2, before any long work
def _one_error(capsys, *needles) -> str:
    """Exactly one stderr line, a spadim error naming everything in ``needles``."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("spadim: error:"), err
    for n in needles:
        assert str(n) in err[0], (n, err[0])
    return err[0]


@pytest.fixture
def no_backbone(monkeypatch):
    """Loading the backbone fails the test: the error must come before any long work."""

    def boom(*a, **k):
        raise AssertionError("the backbone was loaded before the input error was found")

    import spadim.cli.commands
    import spadim.inspect.fitting
    import spadim.run.modelfile
    import spadim.run.session

    for mod in (spadim.cli.commands, spadim.run.session, spadim.inspect.fitting):
        if hasattr(mod, "make_extractor"):
            monkeypatch.setattr(mod, "make_extractor", boom)
    for mod in (spadim.cli.commands, spadim.run.modelfile):
        monkeypatch.setattr(mod, "load_backbone", boom)


@pytest.mark.parametrize(
    "command,flag,value,low",
    [
        ("predict", "--batch-size", 0, 1),
        ("evaluate", "--batch-size", -2, 1),
        ("evaluate", "--k", 0, 1),
        ("evaluate", "--d", 0, 1),
        ("evaluate", "--examples", -1, 0),
        ("evaluate", "--refs", 0, 1),
        ("fit", "--refs", 0, 1),
        ("fit", "--batch-size", 0, 1),
        ("mask-sweep", "--examples", -1, 0),
        ("layer-sweep", "--k", 0, 1),
    ],
)
def test_counts_out_of_range_exit_2(tiny_root, tmp_path, capsys, no_backbone, command, flag, value, low):
    data = tiny_root / "tile"
    args = [tmp_path / "m.pt", data / "test" / "good"] if command == "predict" else [data, *FAST]
    assert _run(command, *args, "--out", tmp_path / "out", flag, value) == 2
    _one_error(capsys, f"{flag} must be >= {low} (got {value})")
    assert not (tmp_path / "out").exists()


def _truncate(path, keep: float = 0.6):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_truncated_jpeg_is_an_error(tiny_copy, tmp_path, capsys, no_backbone):
    png = tiny_copy / "tile" / "train" / "good" / "002.png"
    jpg = png.with_suffix(".jpg")
    cv2.imwrite(str(jpg), cv2.imread(str(png)))
    png.unlink()
    _truncate(jpg)
    assert (
        _run(
            "evaluate",
            tiny_copy,
            "--out",
            tmp_path / "out",
            *FAST,
            "--methods",
            "spade,padim",
            "--layers",
            "1,2,3",
        )
        == 2
    )
    _one_error(capsys, jpg, "truncated")
    assert _run("fit", tiny_copy / "tile", "--out", tmp_path / "m.pt", *FAST, "--layers", "1,2,3") == 2
    _one_error(capsys, jpg, "truncated")
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.pt").exists()


def test_corrupt_file_in_last_class_fails_before_the_backbone(tiny_copy, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert (
        _run(
            "evaluate",
            tiny_copy,
            "--out",
            out,
            "--examples",
            "0",
            *FAST,
            "--methods",
            "spade,padim",
            "--layers",
            "1,2,3",
        )
        == 0
    )
    before = _snapshot(out)
    capsys.readouterr()
    import spadim.run.session

    real = spadim.run.session.make_extractor
    monkeypatch.setattr(spadim.run.session, "make_extractor", lambda *a, **k: pytest.fail("backbone loaded"))
    # tile is the last class; a bad mask, and a truncated test image, are both found up front
    mask = next((tiny_copy / "tile" / "ground_truth").rglob("*_mask.png"))
    good = mask.read_bytes()
    _truncate(mask)
    assert (
        _run("evaluate", tiny_copy, "--out", out, *FAST, "--methods", "spade,padim", "--layers", "1,2,3") == 2
    )
    _one_error(capsys, "cannot read mask", mask)
    mask.write_bytes(good)
    img = sorted((tiny_copy / "tile" / "test" / "good").iterdir())[-1]
    _truncate(img, 0.9)
    for cmd in ("evaluate", "layer-sweep", "mask-sweep"):
        assert _run(cmd, tiny_copy, "--out", out, *FAST, "--methods", "spade,padim") == 2
        _one_error(capsys, "cannot read image", img)
    assert _snapshot(out) == before
    monkeypatch.setattr(spadim.run.session, "make_extractor", real)


def test_truncated_image_given_to_predict(tiny_root, tmp_path, capsys, monkeypatch):
    model = tmp_path / "m.pt"
    assert _run("fit", tiny_root / "tile", "--out", model, *FAST, "--layers", "1,2,3") == 0
    bad = tmp_path / "bad.png"
    bad.write_bytes((tiny_root / "tile" / "test" / "good" / "000.png").read_bytes())
    _truncate(bad)
    capsys.readouterr()
    import spadim.run.modelfile

    monkeypatch.setattr(spadim.run.modelfile, "load_backbone", lambda *a, **k: pytest.fail("backbone loaded"))
    assert _run("predict", model, tiny_root / "tile" / "test" / "good", bad, "--out", tmp_path / "p") == 2
    _one_error(capsys, bad, "truncated")
    assert not (tmp_path / "p").exists()


def test_repeated_class_is_an_error(tiny_root, tmp_path, capsys, no_backbone):
    assert (
        _run(
            "evaluate",
            tiny_root,
            "--classes",
            "nut,nut",
            "--out",
            tmp_path / "o",
            *FAST,
            "--methods",
            "spade,padim",
            "--layers",
            "1,2,3",
        )
        == 2
    )
    _one_error(capsys, "'nut' is given twice in --classes")


def test_unknown_class_with_a_class_folder(tiny_root, tmp_path, capsys, no_backbone):
    for cmd in ("evaluate", "layer-sweep", "mask-sweep"):
        assert (
            _run(
                cmd,
                tiny_root / "nut",
                "--classes",
                "tile",
                "--out",
                tmp_path / "o",
                *FAST,
                "--methods",
                "spade,padim",
            )
            == 2
        )
        _one_error(capsys, "--classes names 'tile'", "class folder 'nut'", "drop --classes")
    assert (
        _run(
            "evaluate",
            tiny_root / "nut",
            "--classes",
            "nut,carpet",
            "--out",
            tmp_path / "o",
            *FAST,
            "--methods",
            "spade,padim",
            "--layers",
            "1,2,3",
        )
        == 2
    )
    _one_error(capsys, "'carpet'")
    assert not (tmp_path / "o").exists()


def test_refs_zero_and_object_mask_without_refs(tiny_root, tmp_path, capsys, no_backbone):
    assert (
        _run("fit", tiny_root / "tile", "--refs", "0", "--out", tmp_path / "m.pt", *FAST, "--layers", "1,2,3")
        == 2
    )
    _one_error(capsys, "--refs must be >= 1")
    assert not (tmp_path / "m.pt").exists()


def test_predict_object_mask_needs_reference_images(tiny_root, tmp_path, capsys, monkeypatch):
    model = tmp_path / "m.pt"
    assert _run("fit", tiny_root / "tile", "--refs", "1", "--out", model, *FAST, "--layers", "1,2,3") == 0
    blob = torch.load(model, weights_only=True)
    assert len(blob["ref_images"]) == 1
    blob["ref_images"] = blob["ref_images"][:0]  # as written by an older spadim with --refs 0
    torch.save(blob, tmp_path / "norefs.pt")
    capsys.readouterr()
    import spadim.run.modelfile

    monkeypatch.setattr(spadim.run.modelfile, "load_backbone", lambda *a, **k: pytest.fail("backbone loaded"))
    images = tiny_root / "tile" / "test" / "good"
    assert (
        _run("predict", tmp_path / "norefs.pt", images, "--object-mask", "orb", "--out", tmp_path / "p") == 2
    )
    _one_error(capsys, "norefs.pt", "no reference images", "--refs")
    assert not (tmp_path / "p").exists()


def test_out_checked_before_the_work(tiny_root, tmp_path, capsys, no_backbone):
    a_file = tmp_path / "results.txt"
    a_file.write_text("earlier results")
    a_dir = tmp_path / "models"
    a_dir.mkdir()
    data = tiny_root / "tile"
    cases = [
        (["fit", data, "--out", a_dir], "is a folder"),
        (["fit", data, "--out", a_file / "m.pt"], "is a file"),
        (["layer-sweep", tiny_root, "--out", a_file], "is a file"),
        (["layer-sweep", tiny_root, "--out", a_file / "sub"], "is a file"),
        (["evaluate", tiny_root, "--out", a_file], "is a file"),
        (["mask-sweep", tiny_root, "--out", a_file], "is a file"),
    ]
    for args, needle in cases:
        assert _run(*args, *FAST) == 2
        _one_error(capsys, "--out", needle)
    assert _run("predict", tmp_path / "m.pt", data / "test" / "good", "--out", a_file) == 2
    _one_error(capsys, "--out", "is a file")
    assert a_file.read_text() == "earlier results" and not list(a_dir.iterdir())


def test_no_anomalous_test_images_are_named(tiny_copy, tmp_path, capsys):
    import math
    import shutil

    for sub in ("test/chip", "test/scratch", "ground_truth"):
        shutil.rmtree(tiny_copy / "nut" / sub)
    out = tmp_path / "out"
    assert (
        _run(
            "evaluate",
            tiny_copy,
            "--out",
            out,
            "--examples",
            "1",
            *FAST,
            "--methods",
            "spade,padim",
            "--layers",
            "1,2,3",
        )
        == 0
    )
    note = "no anomalous test images: pixel metrics undefined"
    assert f"warning: nut: {note}" in capsys.readouterr().err
    assert note in (out / "results.md").read_text()
    rows = json.loads((out / "results.json").read_text())["rows"]
    nut = [r for r in rows if r["class"] == "nut"]
    assert nut and all(r["note"] == note for r in nut)
    assert all(r["pixel_aupr"] is None and r["pixel_auroc"] is None for r in nut)
    assert all(r["null_reasons"]["pixel_aupr"] == "needs defective samples" for r in nut)
    assert all("note" not in r and not math.isnan(r["pixel_aupr"]) for r in rows if r["class"] == "tile")
    assert "NaN" not in (out / "results.json").read_text()  # strict JSON: null with a reason
    assert ",nan," in (out / "results.csv").read_text()


def test_object_mask_below_one_scales_only_outside_and_padim_score_follows(tiny_root, tmp_path):
    """r < 1 end to end: inside the (independently recomputed) object mask the maps are unchanged,
    outside they are r times the unmasked maps, and PaDiM's image score is the masked map's maximum."""
    from spadim.cli.args import mask_config
    from spadim.cli import build_parser
    from spadim.data.mvtec import Preprocess, load_images
    from spadim.inspect import Inspector, ObjectMask
    from spadim.run.modelfile import load_model
    from spadim.run.pipeline import object_masks

    args = ["--arch", "resnet18", "--weights", "random", "--resize", "96", "--crop", "96", "--seed", "0"]
    model = tmp_path / "nut.pt"
    assert _run("fit", tiny_root / "nut", "--method", "padim", "--out", model, *args) == 0
    images = sorted((tiny_root / "nut" / "test").rglob("*.png"))
    parsed = build_parser().parse_args(["predict", str(model), str(images[0]), "--object-mask", "orb"])
    config = mask_config(parsed, "orb")
    inspector = Inspector.load(model)
    frames = load_images(images, Preprocess(96, 96, "whole"))[0]
    plain_maps, _, _ = inspector.score_frames(frames)
    masked_maps, masked_scores, _ = inspector.score_frames(frames, ObjectMask(config, 0.25))
    obj, _ = object_masks(frames, load_model(model)[1]["ref_images"].numpy(), config)
    assert (~obj).any() and obj.any()  # the test is only meaningful with pixels on both sides
    np.testing.assert_array_equal(masked_maps[obj], plain_maps[obj])
    np.testing.assert_allclose(masked_maps[~obj], 0.25 * plain_maps[~obj], rtol=1e-6)
    np.testing.assert_allclose(masked_scores, masked_maps.reshape(len(images), -1).max(1), rtol=1e-6)
    # the CLI applies the same mask: its recorded scores are the masked ones
    assert (
        _run(
            "predict",
            model,
            *images,
            "--out",
            tmp_path / "masked",
            "--object-mask",
            "orb",
            "--outside-multiplier",
            "0.25",
        )
        == 0
    )
    records = [
        json.loads(line) for line in (tmp_path / "masked" / "predictions.jsonl").read_text().splitlines()
    ]
    by_name = {r["image"]: r["score"] for r in records}
    np.testing.assert_allclose([by_name[str(p)] for p in images], masked_scores, rtol=1e-5)


def test_library_errors_reach_the_terminal_with_the_flags_to_type(tiny_root, tmp_path, capsys):
    """The library says `weights=random` and `far=0.01`; the command line shows --weights and --far."""
    good = tiny_root / "tile" / "train" / "good"
    missing = tmp_path / "no_such_weights"
    assert _run("fit", good, "--out", tmp_path / "m.pt", "--weights", missing) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"spadim: error: weights path {missing} does not exist: give a checkpoint file or folder, "
        f"or --weights random"
    ]
    assert _run("fit", good, "--out", tmp_path / "m.pt", "--far", "2") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "spadim: error: --far must be a false-alarm rate between 0 and 1, exclusive (got 2.0): e.g. --far 0.01"
    ]
    assert not (tmp_path / "m.pt").exists()
