"""The backbone's options as one frozen config: which network with which weights, how an image becomes
its frame, how many frames go through at a time, where features are cached and where the network runs.

Its defaults are the papers' (Wide ResNet-50-2, shorter side 256, centre crop 224) and are defined here
only: the command line's ``--arch``, ``--resize``, ``--crop``, ``--batch-size`` and ``--device`` read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from spadim.data.mvtec import Preprocess
from spadim.errors import SpadimError
from .backbone import ARCHS
from .device import resolve_device


@dataclass(frozen=True, kw_only=True)
class BackboneConfig:
    arch: str = "wide_resnet50_2"
    weights: str | None = None  # None: look a checkpoint up ($SPADIM_WEIGHTS, torch hub); "random"; or a path
    resize: int = 256  # shorter side before the centre crop (frame "crop")
    crop: int = 224  # side of the frame the backbone sees
    frame: str = "crop"  # "crop" as the papers, or "whole": the whole image squashed to crop x crop
    batch_size: int = 8  # images per backbone call
    cache_dir: Path | None = None  # also cache per-image features on disk here
    device: str = "cpu"  # where the backbone runs: cpu, cuda or auto (features/device.py)

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise SpadimError(
                f"unknown backbone {self.arch!r} (BackboneConfig.arch): choose one of {', '.join(ARCHS)}"
            )
        if self.batch_size < 1:
            raise SpadimError(f"batch_size must be >= 1 (BackboneConfig.batch_size, got {self.batch_size})")
        self.pre  # noqa: B018 - raises SpadimError on bad sizes or an unknown frame
        resolve_device(self.device)  # an unknown or absent device fails before any work

    @property
    def pre(self) -> Preprocess:
        """How an image becomes the backbone's frame."""
        return Preprocess(self.resize, self.crop, self.frame)
