"""``device`` auto, cpu or cuda (``--device``): where the backbone (and, at predict time, the whole
scoring graph) runs.

``auto`` takes the first CUDA device when torch sees one, else the CPU. Asking for ``cuda`` where
there is none is an error before any work starts, not a silent fall back to the CPU.
"""

from __future__ import annotations

import torch

from spadim.errors import SpadimError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str | torch.device | None) -> torch.device:
    if isinstance(name, torch.device):
        return name
    name = (name or "cpu").lower()
    if name not in DEVICES and not name.startswith("cuda:"):
        raise SpadimError(f"device {name!r}: choose one of {', '.join(DEVICES)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SpadimError(
            f"device {name!r}: this torch ({torch.__version__}) sees no CUDA device; use 'cpu' or 'auto'"
        )
    return torch.device(name)
