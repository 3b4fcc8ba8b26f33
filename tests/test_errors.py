"""Library messages name parameters as Python callers know them; only the command line speaks in flags.

Every string constant inside a ``raise`` statement, an ``...Error(...)`` call or a ``say(...)`` call of a
module outside ``spadim/cli`` is read with ``ast``: a ``--flag`` there would tell a library caller to
type something only the command line understands.
"""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

from spadim.cli.errors import command_flags, with_flags

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "spadim"
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z-]+")


def _called(node: ast.Call) -> str:
    func = node.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""


def _message_nodes(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None:
            yield node.exc
        elif isinstance(node, ast.Call) and (
            _called(node).endswith(("Error", "Exception", "Refused")) or _called(node) == "say"
        ):
            yield node


def flags_in_messages(source: str) -> list[tuple[int, str]]:
    """(line, flag) for every ``--flag`` in a message string of ``source``."""
    found = set()
    for message in _message_nodes(ast.parse(source)):
        for node in ast.walk(message):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.update((node.lineno, flag) for flag in FLAG.findall(node.value))
    return sorted(found)


def test_the_scan_finds_a_flag_in_each_kind_of_message():
    source = (
        'raise SpadimError(f"`far={far}` is fine, so is `spadim fit`")\n'
        'raise SpadimError(f"use --far {far} instead")\n'
        'err = ValueError("drop --masks")\n'
        'say(f"{name}: --layers auto chose")\n'
        'print("--not-a-message")\n'
    )
    assert flags_in_messages(source) == [(2, "--far"), (3, "--masks"), (4, "--layers")]


def test_library_messages_name_no_command_line_flag():
    modules = [p for p in sorted(PACKAGE.rglob("*.py")) if "cli" not in p.relative_to(PACKAGE).parts]
    assert len(modules) > 50
    offenders = [
        f"{path.relative_to(PACKAGE)}:{line}: {flag}"
        for path in modules
        for line, flag in flags_in_messages(path.read_text())
    ]
    assert not offenders, "library messages must name parameters (`far`), not flags:\n" + "\n".join(offenders)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="t")
    sub = ap.add_subparsers(dest="command")
    fit = sub.add_parser("fit")
    fit.add_argument("--far", type=float)
    fit.add_argument("--pixel-far", type=float)
    fit.add_argument("--from", dest="source")
    fit.add_argument("--train")
    other = sub.add_parser("other")
    other.add_argument("--threshold", type=float)
    return ap


def test_the_command_line_shows_the_flags_of_the_command_that_ran():
    ap = _parser()
    flags = command_flags(ap, ap.parse_args(["fit"]))
    assert flags["far"] == "--far" and flags["pixel_far"] == "--pixel-far" and flags["source"] == "--from"
    assert flags["train_dir"] == "--train" and "threshold" not in flags and "test_dir" not in flags
    message = (
        "`far=2.0` must be below 1: e.g. `far=0.01`; `pixel_far` too; `source` and `train_dir=/a b` "
        "too; `threshold` belongs to another command; `spadim calibrate` is a command; 'far' a word"
    )
    assert with_flags(message, flags) == (
        "--far 2.0 must be below 1: e.g. --far 0.01; --pixel-far too; --from and --train /a b "
        "too; `threshold` belongs to another command; `spadim calibrate` is a command; 'far' a word"
    )
