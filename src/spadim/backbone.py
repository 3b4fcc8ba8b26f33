"""ImageNet ResNets in torchvision's layout (without torchvision) and offline weight loading.

The networks are built here so that torchvision's ``state_dict`` files load with
``strict=True``; no weights are ever downloaded. Weights are looked up, in order:

1. ``--weights PATH`` (a file, or a folder holding ``<arch>-<hash>.pth``);
2. ``$SPADIM_WEIGHTS`` (same meaning);
3. the torch hub cache, ``$TORCH_HOME/hub/checkpoints/<arch>-*.pth``, where
   torchvision saves its downloads.

No package on the registries these machines reach ships real ImageNet ResNet
weights, so there is no fourth, packaged source.

``--weights random`` builds an untrained network; every report says so loudly.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import SpadimError

ARCHS = ("resnet18", "resnet50", "wide_resnet50_2")
#: torchvision's published checkpoints (file name, download address); the hex in the
#: name is the start of the file's SHA-256, which :func:`load_checkpoint` verifies.
TORCHVISION_FILES = {
    "resnet18": "resnet18-f37072fd.pth",
    "resnet50": "resnet50-0676ba61.pth",
    "wide_resnet50_2": "wide_resnet50_2-95faca4d.pth",
}
DOWNLOAD_URL = "https://download.pytorch.org/models/"
RANDOM = "random"


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None, width: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + idt)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None, width: int = 64):
        super().__init__()
        mid = int(planes * (width / 64.0))
        self.conv1 = nn.Conv2d(inplanes, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + idt)


class ResNet(nn.Module):
    """torchvision.models.ResNet (v1.5: stride in the 3x3 conv), same parameter names."""

    def __init__(self, block, layers: list[int], width: int = 64, num_classes: int = 1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make(block, 64, layers[0], 1, width)
        self.layer2 = self._make(block, 128, layers[1], 2, width)
        self.layer3 = self._make(block, 256, layers[2], 2, width)
        self.layer4 = self._make(block, 512, layers[3], 2, width)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make(self, block, planes: int, blocks: int, stride: int, width: int) -> nn.Sequential:
        down = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            down = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        mods = [block(self.inplanes, planes, stride, down, width)]
        self.inplanes = planes * block.expansion
        mods += [block(self.inplanes, planes, width=width) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def features(self, x: torch.Tensor) -> dict:
        """Outputs of layer1..layer4 (keys 1..4) and the global-average-pooled layer4 ("pool")."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = {}
        for i, layer in enumerate((self.layer1, self.layer2, self.layer3, self.layer4), start=1):
            x = layer(x)
            out[i] = x
        out["pool"] = torch.flatten(self.avgpool(x), 1)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x)["pool"])


def build(arch: str) -> ResNet:
    """An untrained network of the named architecture."""
    if arch == "resnet18":
        return ResNet(BasicBlock, [2, 2, 2, 2])
    if arch == "resnet50":
        return ResNet(Bottleneck, [3, 4, 6, 3])
    if arch == "wide_resnet50_2":
        return ResNet(Bottleneck, [3, 4, 6, 3], width=128)
    raise SpadimError(f"unknown backbone {arch!r}: choose one of {', '.join(ARCHS)}")


@dataclass(frozen=True)
class Weights:
    """Where a network's weights came from; ``sha256`` identifies the checkpoint file."""

    arch: str
    source: str  # "random" or a file path
    sha256: str  # checkpoint digest, or "random-seed<N>"

    @property
    def pretrained(self) -> bool:
        return self.source != RANDOM

    @property
    def banner(self) -> str:
        """Short warning for figure titles: empty for pretrained weights."""
        return "" if self.pretrained else "RANDOM WEIGHTS - NOT PRETRAINED"

    def describe(self) -> str:
        if not self.pretrained:
            return f"!!! RANDOM UNTRAINED WEIGHTS ({self.arch}, {self.sha256}) - NOT IMAGENET-PRETRAINED; numbers are not comparable to the papers !!!"
        return f"ImageNet weights for {self.arch} from {self.source} (sha256 {self.sha256[:12]})"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _in_folder(folder: Path, arch: str) -> Path | None:
    pattern = re.compile(rf"^{re.escape(arch)}(-[0-9a-f]+)?\.(pth|pt)$")
    hits = sorted(p for p in folder.glob(f"{arch}*") if pattern.match(p.name))
    preferred = [p for p in hits if p.name == TORCHVISION_FILES[arch]]
    return (preferred or hits or [None])[0]


def find_checkpoint(arch: str, spec: str | None = None) -> tuple[Path | None, list[str]]:
    """The first checkpoint found for ``arch`` and the list of places looked at."""
    looked: list[str] = []
    for where in (spec, os.environ.get("SPADIM_WEIGHTS")):
        if not where:
            continue
        p = Path(where).expanduser()
        if p.is_file():
            return p, looked
        if p.is_dir():
            hit = _in_folder(p, arch)
            if hit:
                return hit, looked
            looked.append(f"{p}/{arch}-*.pth")
        else:
            raise SpadimError(f"weights path {p} does not exist: give a checkpoint file or folder, or --weights random")
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    looked.append(f"{hub}/{arch}-*.pth")
    if hub.is_dir():
        hit = _in_folder(hub, arch)
        if hit:
            return hit, looked
    return None, looked


def load_checkpoint(arch: str, path: Path) -> tuple[dict, str]:
    """Read a torchvision-format state dict; verify the hash embedded in torchvision file names."""
    digest = _sha256(path)
    m = re.match(rf"^{re.escape(arch)}-([0-9a-f]{{8,}})\.pth$", path.name)
    if m and not digest.startswith(m.group(1)):
        raise SpadimError(
            f"checkpoint {path} fails its hash check (sha256 {digest[:8]}..., name says {m.group(1)}): "
            f"the file is corrupt; download it again from {DOWNLOAD_URL}{TORCHVISION_FILES[arch]}"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise SpadimError(f"cannot read checkpoint {path} ({type(exc).__name__}): give a torchvision .pth state dict") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise SpadimError(f"checkpoint {path} is not a state dict: give a torchvision .pth file")
    return state, digest


def load_backbone(arch: str = "wide_resnet50_2", weights: str | None = None, seed: int = 0) -> tuple[ResNet, Weights]:
    """Build ``arch`` with real ImageNet weights (or random ones when ``weights == 'random'``).

    Raises SpadimError, naming every place looked at and how to get the file, when no
    checkpoint is found: never silently falls back to random weights.
    """
    if weights == RANDOM:
        with torch.random.fork_rng():  # seeded without touching the caller's RNG state
            torch.manual_seed(seed)
            model = build(arch)
        info = Weights(arch, RANDOM, f"random-seed{seed}")
    else:
        path, looked = find_checkpoint(arch, weights)
        if path is None:
            raise SpadimError(
                f"no ImageNet checkpoint for {arch} found (looked in: {'; '.join(looked)}); "
                f"download {DOWNLOAD_URL}{TORCHVISION_FILES[arch]} into {Path(torch.hub.get_dir()) / 'checkpoints'} "
                f"or pass --weights FILE (or --weights random for untrained plumbing runs)"
            )
        state, digest = load_checkpoint(arch, path)
        model = build(arch)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
            raise SpadimError(f"checkpoint {path} does not fit {arch} ({first}): give the {arch} checkpoint") from None
        info = Weights(arch, str(path), digest)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, info
