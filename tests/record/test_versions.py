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


def test_two_processes_updating_at_once_never_fork_the_log(line, tmp_path):
    """`spadim update` twice at once on one model (a page and a cron job): the writer lock makes the
    second wait for the first and find the images held already."""
    import subprocess
    import sys

    root, fitted, _ = line
    model = tmp_path / "nut.pt"
    shutil.copyfile(fitted, model)
    shutil.copytree(versions_dir(fitted), versions_dir(model))
    first = version_id(model)
    more = root / "toy" / "nut" / "test" / "good"
    cli = "import sys; from spadim.cli import main; sys.exit(main(sys.argv[1:]))"
    command = [sys.executable, "-c", cli, "update", str(model), str(more), "--keep-apart"]
    runs = [
        subprocess.Popen([*command, "--weights", "random"], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    log = list_versions(model)
    assert [entry["kind"] for entry in log] == ["fit", "update"] and log[-1]["parent"] == first
    assert sum("nothing to add" in text for text in outputs) == 1
    assert not versions_dir(tmp_path / "missing.pt").exists()
    with pytest.raises(SpadimError, match="no version"):
        rollback(tmp_path / "missing.pt", "abc")
    assert not versions_dir(tmp_path / "missing.pt").exists()  # a typo creates nothing


def test_prune_deletes_old_version_files_but_keeps_the_log_and_the_one_in_force(line, tmp_path, capsys):
    root, fitted, _ = line
    model = tmp_path / "nut.pt"
    shutil.copyfile(fitted, model)
    shutil.copytree(versions_dir(fitted), versions_dir(model))
    for far in ("0.3", "0.4", "0.5"):
        assert main(["level", str(model), "--far", far, "--reason", f"try {far}"]) == 0
    ids = [entry["id"] for entry in list_versions(model)]
    assert len(set(ids)) == 4
    assert main(["rollback", str(model), ids[0], "--reason", "back to the fit"]) == 0  # the oldest in force
    sizes = {version: (versions_dir(model) / f"{version}.pt").stat().st_size for version in ids}
    capsys.readouterr()
    assert main(["versions", str(model), "--keep", "1", "--reason", "disk"]) == 0
    out = capsys.readouterr().out
    # newest first by log order: the rollback's line names ids[0], which is also in force; 1, 2, 3 go
    gone = ids[1:]
    assert not any((versions_dir(model) / f"{v}.pt").exists() for v in gone)
    assert (versions_dir(model) / f"{ids[0]}.pt").is_file() and version_id(model) == ids[0]
    assert f"{sum(sizes[v] for v in gone) / 2**20:.0f} MiB" in out and "of 3 older version(s)" in out
    listed = out.strip().splitlines()[1:]
    assert len(listed) == 5 and sum("(file pruned)" in text for text in listed) == 3
    assert [e["id"] for e in list_versions(model)] == [*ids, ids[0]]  # the log keeps every line
    with pytest.raises(SpadimError, match="was pruned"):
        rollback(model, ids[2])
    assert main(["versions", str(model), "--keep", "0"]) == 2
    assert "at least 1" in capsys.readouterr().err


def test_a_version_written_by_spadim_is_logged_from_the_digest_of_its_writing(tmp_path):
    """write_blob hashes the bytes on their way out; commit_version takes that digest while the file is the
    one written, and reads the file again once anything changed it."""
    import hashlib

    import torch

    from spadim.inspect import versions
    from spadim.run.modelfile import write_blob

    model = tmp_path / "model.pt"
    written = write_blob(model, {"weights": torch.arange(100_000.0), "name": "x"})
    assert written.sha256 == hashlib.sha256(model.read_bytes()).hexdigest()
    entry = versions.commit_version(model, "fit", None, written=written)
    kept = versions_dir(model) / f"{entry['id']}.pt"
    assert entry["id"] == written.sha256[:16] and kept.read_bytes() == model.read_bytes()
    # the same file changed after it was written: the stale digest is not trusted
    model.write_bytes(b"something else")
    entry = versions.commit_version(model, "level", entry["id"], written=written)
    assert entry["id"] == hashlib.sha256(b"something else").hexdigest()[:16]
    assert (versions_dir(model) / f"{entry['id']}.pt").read_bytes() == b"something else"
