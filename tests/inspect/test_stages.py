"""fit says what it does: one line per stage, in order, each with its time; bars on a terminal only."""

from __future__ import annotations

import io
import re
import sys

from conftest import FAST

from spadim.cli import main
from spadim.inspect.stages import Stages

STAGES = ["features", "layer choice", "fit", "calibration", "audit", "report"]
LINE = re.compile(r"^(?P<stage>[a-z ]+): .+ \((?P<seconds>\d+\.\d) s\)$")


def _stage_lines(text: str) -> list[str]:
    return [m["stage"] for m in map(LINE.match, text.splitlines()) if m and m["stage"] in STAGES]


def test_fit_says_each_stage_in_order_with_its_time(tiny_root, tmp_path, capsys):
    assert main(["fit", str(tiny_root / "nut"), "--out", str(tmp_path / "m.pt"), *FAST]) == 0
    err = capsys.readouterr().err
    assert _stage_lines(err) == STAGES, err
    assert "layer choice: layers auto chose " in err
    assert "\r" not in err  # stderr is not a terminal here: no bars
    given = tmp_path / "given.pt"
    assert main(["fit", str(tiny_root / "nut"), "--out", str(given), *FAST, "--layers", "2"]) == 0
    assert _stage_lines(capsys.readouterr().err) == [s for s in STAGES if s != "layer choice"]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_stages_draw_bars_on_a_terminal_and_lines_through_say(monkeypatch):
    terminal, said = Terminal(), []
    monkeypatch.setattr(sys, "stderr", terminal)
    stages = Stages(said.append)
    assert stages.bars
    with stages("features", steps=0, unit="img") as stage:
        batches = list(stages.progress([[1, 2], [3]], "train", 3))
        assert (stage.bar.n, stage.bar.total) == (3, 3)  # the extractor's batches move the stage's bar
        stage.summary = "3 images"
    with stages("layer choice", steps=2) as stage:
        stage.advance(2)
        assert (stage.bar.n, stage.bar.total) == (2, 2)
        stage.summary = "2 subsets"
    assert batches == [[1, 2], [3]]
    assert [LINE.match(line)["stage"] for line in said] == ["features", "layer choice"]
    assert said[0].startswith("features: 3 images (")
    drawn = terminal.getvalue()
    assert "features" in drawn and "layer choice" in drawn
    assert set(stages.seconds) == {"features", "layer_choice"}

    plain = io.StringIO()
    monkeypatch.setattr(sys, "stderr", plain)  # not a terminal: the same lines, no bar
    said.clear()
    quiet = Stages(said.append)
    with quiet("fit") as stage:
        stage.summary = "done"
    assert not quiet.bars and plain.getvalue() == ""
    assert LINE.match(said[0])["stage"] == "fit"
