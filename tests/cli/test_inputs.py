"""What the command line accepts: the layers as it prints them, image counts each method needs (one
line, exit 2, before the backbone loads), and its own description."""

from __future__ import annotations

import re
import shutil

import pytest

from spadim import __doc__ as PACKAGE_DOC
from spadim.cli import build_parser, main
from spadim.features.extractor import parse_layers
from spadim.inspect import Inspector

from conftest import FAST
from test_cli import _one_error, no_backbone  # noqa: F401 - the fixture, used by name


def _run(*args) -> int:
    return main([str(a) for a in args])


def _good_images(tiny_root, tmp_path, n: int, name: str = "good"):
    folder = tmp_path / name
    folder.mkdir()
    for path in sorted((tiny_root / "nut" / "train" / "good").glob("*.png"))[:n]:
        shutil.copy(path, folder / path.name)
    return folder


def _root_with(tiny_root, tmp_path, n: int):
    """A copy of the tiny MVTec root whose classes keep ``n`` training images each."""
    root = tmp_path / "few"
    shutil.copytree(tiny_root, root)
    for train in root.glob("*/train/good"):
        for path in sorted(train.glob("*.png"))[n:]:
            path.unlink()
    return root


@pytest.mark.parametrize(
    "text,layers",
    [("2+3", (2, 3)), ("2,3", (2, 3)), ("3+1", (1, 3)), ("1+2+3+4", (1, 2, 3, 4)), (" 2 + 4 ", (2, 4))],
)
def test_layers_parse_as_printed_and_as_listed(text, layers):
    assert parse_layers(text) == layers


def test_fit_accepts_the_layers_it_printed(tiny_root, tmp_path, capsys):
    """``layers auto chose X`` on stderr; ``--layers X`` then fits exactly those layers."""
    data = tiny_root / "nut"
    assert _run("fit", data, "--method", "padim", "--out", tmp_path / "auto.pt", *FAST) == 0
    printed = re.search(r"layers auto chose (\S+) for padim", capsys.readouterr().err).group(1)
    assert "+" in printed or printed in "1234"
    assert (
        _run("fit", data, "--method", "padim", "--out", tmp_path / "given.pt", *FAST, "--layers", printed)
        == 0
    )
    expected = tuple(int(layer) for layer in printed.split("+"))
    assert Inspector.load(tmp_path / "given.pt").method.layers == expected
    assert Inspector.load(tmp_path / "auto.pt").method.layers == expected


@pytest.mark.parametrize(
    "method,n,layers,needles",
    [
        ("padim", 2, "2,3", ["holds 2 good image(s)", "padim", "at least 3"]),
        ("padim", 2, "auto", ["holds 2 good image(s)", "padim", "at least 3"]),
        ("spade", 1, "2,3", ["holds 1 good image(s)", "spade", "at least 2"]),
        ("patchcore", 1, "auto", ["holds 1 good image(s)", "at least 2"]),
    ],
)
@pytest.mark.usefixtures("no_backbone")
def test_fit_on_too_few_images_is_one_line_before_the_backbone(
    tiny_root, tmp_path, capsys, method, n, layers, needles
):
    folder = _good_images(tiny_root, tmp_path, n)
    out = tmp_path / "m.pt"
    assert _run("fit", folder, "--method", method, "--layers", layers, "--out", out, *FAST) == 2
    _one_error(capsys, str(folder), *needles)
    assert not out.exists()


@pytest.mark.usefixtures("no_backbone")
def test_fit_per_class_and_evaluate_check_counts_before_the_backbone(tiny_root, tmp_path, capsys):
    root = _root_with(tiny_root, tmp_path, 2)
    assert _run("fit", root, "--per-class", "--method", "padim", "--out", tmp_path / "models", *FAST) == 2
    _one_error(capsys, "holds 2 good image(s)", "padim", "at least 3")
    assert _run("evaluate", root, "--methods", "spade,padim", "--out", tmp_path / "ev", *FAST) == 2
    _one_error(capsys, "holds 2 good image(s)", "padim", "at least 3")
    assert not (tmp_path / "ev").exists()
    root1 = _root_with(tiny_root, tmp_path / "one", 1)
    assert (
        _run("evaluate", root1, "--methods", "spade", "--no-operating-point", "--out", tmp_path / "ev", *FAST)
        == 2
    )
    _one_error(capsys, "holds 1 good image(s)", "choosing the layers", "at least 2")


def test_evaluate_without_calibration_or_layer_choice_takes_one_image(tiny_root, tmp_path):
    """The counts are the run's needs, not a blanket minimum: one image fits SPADE with given layers."""
    root = _root_with(tiny_root, tmp_path, 1)
    args = ["--methods", "spade", "--layers", "2,3", "--no-operating-point", "--examples", "0", *FAST]
    assert _run("evaluate", root, "--classes", "nut", *args, "--out", tmp_path / "ev") == 0


def test_padim_fits_and_calibrates_on_its_minimum(tiny_root, tmp_path):
    folder = _good_images(tiny_root, tmp_path, 3)
    out = tmp_path / "m.pt"
    assert _run("fit", folder, "--method", "padim", "--layers", "2,3", "--out", out, *FAST) == 0
    calibration = Inspector.load(out).calibration
    assert (calibration.how, calibration.n_images) == ("leave-one-out", 3)


def test_help_describes_the_package_in_whole_sentences(capsys):
    expected = " ".join(PACKAGE_DOC.split())
    assert expected.endswith(".") and build_parser().description == expected
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert expected in shown


@pytest.mark.usefixtures("no_backbone")
@pytest.mark.parametrize("command", [["layer-select"], ["reproduce", "--layers", "auto", "--detectors", ""]])
def test_studies_that_choose_layers_check_counts_before_the_backbone(tiny_root, tmp_path, capsys, command):
    root = _root_with(tiny_root, tmp_path, 1)
    assert _run(command[0], root, *command[1:], "--out", tmp_path / "out", *FAST) == 2
    _one_error(capsys, "holds 1 good image(s)", "choosing the layers", "at least 2")
    assert not (tmp_path / "out").exists()
