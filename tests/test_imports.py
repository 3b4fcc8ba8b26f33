"""Importing spadim changes no global state of the process that imports it.

A fresh interpreter imports every module of spadim and lists the other modules that came with it
(torch, matplotlib, SciPy, faiss, ...). A second one imports those first, in the same order, so their
own import-time settings are in place; then it records what an import could change (matplotlib's
backend and settings, torch's and OpenCV's thread counts, the environment, warning filters, NumPy's
error handling, torch's defaults), imports every module of spadim, and records again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PROBE = r"""
import importlib, json, os, pkgutil, sys, warnings

dependencies = json.loads(sys.argv[1]) if len(sys.argv) > 1 else None
for name in dependencies or []:
    importlib.import_module(name)

import cv2, matplotlib, numpy as np, torch

torch.set_num_threads(3)  # not the default, so a reset to the default would show too


def state():
    return {
        # the raw value: reading rcParams["backend"] would itself resolve (and so set) a backend
        "backend": repr(dict.__getitem__(matplotlib.rcParams, "backend")),
        "rc": {key: repr(value) for key, value in dict.items(matplotlib.rcParams) if key != "backend"},
        "pyplot": "matplotlib.pyplot" in sys.modules,
        "torch_threads": torch.get_num_threads(),
        "cv2_threads": cv2.getNumThreads(),
        "environ": dict(os.environ),
        "warnings": [repr(f) for f in warnings.filters],
        "numpy_err": np.geterr(),
        "torch_dtype": str(torch.get_default_dtype()),
        "grad": torch.is_grad_enabled(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
    }


before = state()
loaded = list(sys.modules)
import spadim

names = ["spadim"] + [m.name for m in pkgutil.walk_packages(spadim.__path__, "spadim.")]
for name in names:
    importlib.import_module(name)
came = [m for m in sys.modules if m not in loaded and m.split(".")[0] != "spadim"]
print(json.dumps({"before": before, "after": state(), "modules": names, "dependencies": came}))
"""


def _probe(env: dict, dependencies: list[str] | None = None) -> dict:
    args = [json.dumps(dependencies)] if dependencies is not None else []
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_every_module_changes_no_global_state():
    src = Path(__file__).resolve().parents[1] / "src"
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")])
    # only modules that import cleanly on their own: private and lazily-bound ones come with their package
    dependencies = [
        m for m in _probe(env)["dependencies"] if not any(p.startswith("_") for p in m.split("."))
    ]
    seen = _probe(env, dependencies)
    assert {"spadim.inspect", "spadim.report.figures", "spadim.cli.parser", "spadim.serve.app"} <= set(
        seen["modules"]
    )
    before, after = seen["before"], seen["after"]
    assert before["torch_threads"] == 3 and not before["pyplot"]
    changed = {key: (before[key], after[key]) for key in before if before[key] != after[key]}
    assert changed == {}
