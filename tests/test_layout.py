"""The package tree is the architecture: imports follow the data flow, modules stay small.

Every import of every module (function-level ones included) is read with ``ast``, so a lazy import
that jumps against the flow fails here as surely as one at the top of a file.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "spadim"
README = PACKAGE.parents[1] / "README.md"
#: Each layer may import itself and anything listed before it, never anything after it.
FLOW = [
    "errors",
    "lists",
    "data",
    "features",
    "methods",
    "metrics",
    "masks",
    "decision",
    "record",
    "report",
    "run",
    "studies",
    "export",
    "inspect",
    "scale",
    "serve",
    "cli",
]
MAX_LINES = 500


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py"))


def _layer(module: str) -> str | None:
    """'spadim.methods.spade' -> 'methods'; the package root itself -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "spadim" else None


def _dotted(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in a file, relative ones resolved."""
    here = _dotted(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                names = [f"{target}.{a.name}" for a in node.names] if not node.module else [target]
                found += [(node.lineno, n) for n in names]
            else:
                found.append((node.lineno, node.module))
    return [(line, name) for line, name in found if name == "spadim" or name.startswith("spadim.")]


def test_every_subpackage_is_in_the_flow():
    layers = {_layer(_dotted(p)) for p in _modules()} - {None}
    assert layers <= set(FLOW), f"add {layers - set(FLOW)} to FLOW in its place"


def test_no_import_goes_against_the_flow():
    wrong = []
    for path in _modules():
        here = _layer(_dotted(path))
        if here is None:
            continue
        for line, target in _imports(path):
            there = _layer(target)
            if there is not None and FLOW.index(there) > FLOW.index(here):
                wrong.append(f"{path.relative_to(PACKAGE)}:{line} imports {target} ({here} -> {there})")
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_a_backwards_import(tmp_path, monkeypatch):
    """The graph test is not vacuous: a method importing a study is caught, lazy or not."""
    fake = tmp_path / "spadim"
    (fake / "methods").mkdir(parents=True)
    (fake / "methods" / "bad.py").write_text("def f():\n    from spadim.studies import layersweep\n")
    (fake / "methods" / "rel.py").write_text("from ..report import tables\n")
    monkeypatch.setattr(f"{__name__}.PACKAGE", fake)
    with pytest.raises(
        AssertionError, match=r"bad.py:2 imports spadim.studies.*rel.py:1 imports spadim.report"
    ):
        test_no_import_goes_against_the_flow()


def test_no_module_is_long():
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in _modules()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"split these where they have seams: {long}"


def test_no_benchmark_module_is_long():
    root = PACKAGE.parents[1]
    files = sorted((root / "benchmarks").glob("*.py"))
    long = {str(p.relative_to(root)): n for p in files if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert len(files) > 10 and not long, f"split these where they have seams: {long}"


def test_readme_tree_names_every_subpackage():
    text = README.read_text()
    tree = text[text.index("## Layout") :]
    subpackages = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))
    missing = [name for name in subpackages if f"{name}/" not in tree]
    assert not missing, f"README Layout tree lacks {missing}"


def test_test_files_have_unique_names():
    """pytest imports test files by basename (no __init__.py in the tree): two equal names collide."""
    names = [p.name for p in (PACKAGE.parents[1] / "tests").rglob("test_*.py")]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
