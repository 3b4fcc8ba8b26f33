"""Model versions: fit logs the first, level and calibrate add immutable ones, rollback restores."""

from __future__ import annotations

import shutil

import pytest
from line_model import line  # noqa: F401 (fixture)

from spadim.cli import main
from spadim.errors import SpadimError
from spadim.inspect import Inspector
from spadim.inspect.versions import list_versions, rollback, version_id, versions_dir
from spadim.record import RecordStore


def test_level_versions_and_rollback(line, tmp_path, capsys):
    _, fitted, _ = line
    model = tmp_path / "nut.pt"
    shutil.copyfile(fitted, model)
    shutil.copytree(versions_dir(fitted), versions_dir(model))
    first = version_id(model)
    assert [e["kind"] for e in list_versions(model)] == ["fit"] and list_versions(model)[0]["id"] == first
    level_before = Inspector.load(model).calibration.region_threshold
    assert main(["level", str(model), "--far", "0.5", "--reason", "new supplier"]) == 0
    second = version_id(model)
    after = Inspector.load(model).calibration
    assert second != first and after.far == 0.5 and after.region_threshold <= level_before
    assert RecordStore(f"{model}.records.sqlite").events("level")[0]["reason"] == "new supplier"
    assert (versions_dir(model) / f"{first}.pt").is_file() and (
        versions_dir(model) / f"{second}.pt"
    ).is_file()
    capsys.readouterr()
    assert main(["versions", str(model)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(first) and lines[1].startswith(second)
    assert "in force" in lines[1] and "(new supplier)" in lines[1]
    assert main(["rollback", str(model), first[:6], "--reason", "back"]) == 0
    assert version_id(model) == first
    assert Inspector.load(model).calibration.region_threshold == level_before
    kinds = [e["kind"] for e in list_versions(model)]
    assert kinds == ["fit", "level", "rollback"] and list_versions(model)[-1]["restored"] == first
    with pytest.raises(SpadimError, match="no version"):
        rollback(model, "ffffffff")
    assert main(["level", str(model), "--far", "0.5", "--reason", " "]) == 2


@pytest.mark.parametrize("sendfile", [True, False])
def test_a_kept_copy_is_the_bytes_its_id_names(sendfile, tmp_path, monkeypatch):
    import hashlib
    import os

    from spadim.inspect import versions

    if not sendfile:  # a file system without file-to-file sendfile: the copy goes through Python

        def refuse(*_args):
            raise OSError("sendfile not supported")

        monkeypatch.setattr(versions.os, "sendfile", refuse)
    source, target = tmp_path / "model.pt", tmp_path / "copy.pt"
    content = os.urandom(9 * (1 << 20) + 17)  # more than two read blocks, not a multiple of one
    source.write_bytes(content)
    digest = versions._copy_hashing(source, target)
    assert digest == hashlib.sha256(content).hexdigest() and target.read_bytes() == content
