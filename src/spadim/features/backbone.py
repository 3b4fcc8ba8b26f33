"""ImageNet ResNets in torchvision's layout (without torchvision) and weight loading.

The networks are built here so that torchvision's ``state_dict`` files load with
``strict=True``. Weights are looked up, in order:

1. ``--weights PATH`` (a file, or a folder holding ``<arch>-<hash>.pth``);
2. ``$SPADIM_WEIGHTS`` (same meaning);
3. the torch hub cache, ``$TORCH_HOME/hub/checkpoints/<arch>-*.pth``, where
   torchvision saves its downloads;
4. a download of torchvision's file into that cache (with torch's own hub functions:
   progress bar and hash check), from ``$SPADIM_DOWNLOAD_URL`` (default
   download.pytorch.org); ``SPADIM_OFFLINE=1`` skips it. Offline machines fail fast.

Every file named ``<arch>-<hex>.pth`` must have a SHA-256 starting with ``<hex>``.

``resnet50_caffe`` is ResNet-50 v1 (MSRA/Caffe): same parameters as torchvision's
``resnet50`` (v1.5) but with the downsampling stride in the first 1x1 conv. Its file
loads ``strict=True`` into v1.5 and silently computes another network, so the known
checkpoints are recognised by their hash and refused by the wrong architecture.

``--weights random`` builds an untrained network; every report says so loudly.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from spadim.errors import SpadimError

ARCHS = ("resnet18", "resnet50", "resnet50_caffe", "wide_resnet50_2")
#: torchvision's published checkpoints, downloadable from DOWNLOAD_URL; the hex in the
#: name is the start of the file's SHA-256, which :func:`load_checkpoint` verifies.
TORCHVISION_FILES = {
    "resnet18": "resnet18-f37072fd.pth",
    "resnet50": "resnet50-0676ba61.pth",
    "wide_resnet50_2": "wide_resnet50_2-95faca4d.pth",
}
#: Checkpoints that are not downloadable here; where to get them.
OTHER_FILES = {
    "resnet50_caffe": (
        "resnet50_caffe-44e9675b.pth",
        "../shared/weights/ beside a spadim checkout (see its README)",
    ),
}
#: SHA-256 prefixes of known checkpoints -> their architecture (guards against loading a file into a
#: network with the same parameter names but a different stride layout).
KNOWN_DIGESTS = {
    name.split("-")[-1].split(".")[0]: arch
    for arch, name in [*TORCHVISION_FILES.items(), *((a, f) for a, (f, _) in OTHER_FILES.items())]
}
DOWNLOAD_URL = "https://download.pytorch.org/models/"
DOWNLOAD_TIMEOUT_S = 20
RANDOM = "random"


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None, width: int = 64, **_):
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

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample=None,
        width: int = 64,
        stride_in_1x1: bool = False,
    ):
        super().__init__()
        mid = int(planes * (width / 64.0))
        # v1 (Caffe) downsamples in the first 1x1 conv, v1.5 (torchvision) in the 3x3 conv
        self.conv1 = nn.Conv2d(inplanes, mid, 1, stride if stride_in_1x1 else 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, 1 if stride_in_1x1 else stride, 1, bias=False)
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
    """torchvision.models.ResNet, same parameter names; v1.5 strides unless ``stride_in_1x1``."""

    def __init__(
        self, block, layers: list[int], width: int = 64, num_classes: int = 1000, stride_in_1x1: bool = False
    ):
        super().__init__()
        self.stride_in_1x1 = stride_in_1x1
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
        mods = [block(self.inplanes, planes, stride, down, width, stride_in_1x1=self.stride_in_1x1)]
        self.inplanes = planes * block.expansion
        mods += [block(self.inplanes, planes, width=width) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def features(self, x: torch.Tensor, last: int = 4) -> dict:
        """Outputs of layer1..layer``last`` (keys 1..last); with ``last`` 4 also the pooled layer4 ("pool").

        The forward pass stops at the last layer needed.
        """
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = {}
        for i, layer in enumerate((self.layer1, self.layer2, self.layer3, self.layer4)[:last], start=1):
            x = layer(x)
            out[i] = x
        if last == 4:
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
    if arch == "resnet50_caffe":
        return ResNet(Bottleneck, [3, 4, 6, 3], stride_in_1x1=True)
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


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in 4 MiB blocks (checkpoints and model files are GBs)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _known_file(arch: str) -> str:
    return TORCHVISION_FILES.get(arch) or OTHER_FILES[arch][0]


def _in_folder(folder: Path, arch: str) -> Path | None:
    """``<arch>-<hex>.pth`` (or ``<arch>.pth``) in ``folder``, the published file name first."""
    pattern = re.compile(rf"^{re.escape(arch)}(-[0-9a-f]+)?\.(pth|pt)$")
    hits = sorted(p for p in folder.glob(f"{arch}*") if pattern.match(p.name))
    preferred = [p for p in hits if p.name == _known_file(arch)]
    return (preferred or hits or [None])[0]


def hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def download_url(arch: str) -> str | None:
    if arch not in TORCHVISION_FILES:
        return None
    return os.environ.get("SPADIM_DOWNLOAD_URL", DOWNLOAD_URL).rstrip("/") + "/" + TORCHVISION_FILES[arch]


@contextlib.contextmanager
def _socket_timeout(seconds: float):
    """urllib (under torch.hub) waits forever on a silent network unless a default timeout is set."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def download_checkpoint(arch: str, progress: bool = True) -> Path:
    """Fetch torchvision's file for ``arch`` into the torch hub cache, verifying its hash prefix.

    Raises SpadimError within seconds when offline (no partial file is left behind).
    """
    url = download_url(arch)
    if url is None:
        raise SpadimError(
            f"{arch} weights are not downloadable: put {_known_file(arch)} in a folder given by "
            f"`weights` or $SPADIM_WEIGHTS ({OTHER_FILES[arch][1]})"
        )
    dst = hub_checkpoints() / TORCHVISION_FILES[arch]
    dst.parent.mkdir(parents=True, exist_ok=True)
    prefix = TORCHVISION_FILES[arch].split("-")[-1].split(".")[0]
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            torch.hub.download_url_to_file(url, str(dst), hash_prefix=prefix, progress=progress)
    except RuntimeError as exc:  # torch.hub's hash mismatch
        raise SpadimError(f"download of {url} failed its hash check ({exc}): try again later") from None
    except (OSError, ValueError) as exc:  # URLError, timeouts, refused connections, bad addresses
        reason = getattr(exc, "reason", None) or exc
        raise SpadimError(
            f"cannot download {url} ({reason}); this machine may be offline: put "
            f"{TORCHVISION_FILES[arch]} in {dst.parent} or pass `weights=FILE` "
            f"(or `weights=random` for untrained plumbing runs)"
        ) from None
    return dst


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
            raise SpadimError(
                f"weights path {p} does not exist: give a checkpoint file or folder, or `weights=random`"
            )
    hub = hub_checkpoints()
    looked.append(f"{hub}/{arch}-*.pth")
    if hub.is_dir():
        hit = _in_folder(hub, arch)
        if hit:
            return hit, looked
    return None, looked


def load_checkpoint(arch: str, path: Path) -> tuple[dict, str]:
    """Read a torchvision-format state dict after checking its hash.

    A name ``<anything>-<hex>.pth`` promises a SHA-256 starting with ``<hex>``; a file whose
    digest is a known checkpoint of another architecture is refused.
    """
    digest = file_sha256(path)
    m = re.match(r"^(.+)-([0-9a-f]{8,})\.pth$", path.name)
    if m and not digest.startswith(m.group(2)):
        source = download_url(arch) or OTHER_FILES.get(arch, ("", "its source"))[1]
        raise SpadimError(
            f"checkpoint {path} fails its hash check (sha256 {digest[:8]}..., name says {m.group(2)}): "
            f"the file is corrupt; get it again from {source}"
        )
    owner = KNOWN_DIGESTS.get(digest[:8])
    if owner and owner != arch:
        raise SpadimError(f"checkpoint {path} holds {owner} weights, not {arch}: use `arch={owner}`")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise SpadimError(
            f"cannot read checkpoint {path} ({type(exc).__name__}): give a torchvision .pth state dict"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise SpadimError(f"checkpoint {path} is not a state dict: give a torchvision .pth file")
    return state, digest


def locate(arch: str, weights: str | None = None, download: bool | None = None) -> Path:
    """The checkpoint file for ``arch``: found locally, else downloaded (unless offline mode).

    Raises SpadimError naming every place looked at and how to get the file.
    """
    if arch not in ARCHS:
        raise SpadimError(f"unknown backbone {arch!r}: choose one of {', '.join(ARCHS)}")
    path, looked = find_checkpoint(arch, weights)
    if path is not None:
        return path
    if download is None:
        download = os.environ.get("SPADIM_OFFLINE", "") in ("", "0")
    if download and download_url(arch):
        try:
            return download_checkpoint(arch)
        except SpadimError as exc:  # offline: say which architecture's checkpoint *is* here
            raise SpadimError(f"{exc}{_other_checkpoints(arch, weights)}") from None
    how = (
        f"download {download_url(arch)} into {hub_checkpoints()}"
        if download_url(arch)
        else f"put {_known_file(arch)} there ({OTHER_FILES[arch][1]})"
    )
    raise SpadimError(
        f"no ImageNet checkpoint for {arch} found (looked in: {'; '.join(looked)}); {how} "
        f"or pass `weights=FILE` (or `weights=random` for untrained plumbing runs)"
        f"{_other_checkpoints(arch, weights)}"
    )


def _other_checkpoints(arch: str, weights: str | None) -> str:
    """'; found resnet50_caffe (FILE): pass `arch=resnet50_caffe`', or '' when no other checkpoint is here."""
    found = [(other, find_checkpoint(other, weights)[0]) for other in ARCHS if other != arch]
    found = [(other, path) for other, path in found if path is not None]
    if not found:
        return ""
    listed = ", ".join(f"{other} ({path})" for other, path in found)
    return f"; checkpoints found for {listed}: pass `arch={found[0][0]}` to use it"


def weights_report(weights: str | None = None) -> list[tuple[str, Path | None, str]]:
    """(arch, checkpoint or None, where it is / why none) for every architecture, without downloading."""
    rows = []
    for arch in ARCHS:
        path, looked = find_checkpoint(arch, weights)
        if path is not None:
            rows.append((arch, path, str(path)))
            continue
        how = (
            f"downloadable from {download_url(arch)} on first use"
            if download_url(arch)
            else f"not downloadable: get {_known_file(arch)} from {OTHER_FILES[arch][1]}"
        )
        rows.append((arch, None, f"not in {'; '.join(looked)}; {how}"))
    return rows


def load_backbone(
    arch: str = "wide_resnet50_2", weights: str | None = None, seed: int = 0
) -> tuple[ResNet, Weights]:
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
        path = locate(arch, weights)
        state, digest = load_checkpoint(arch, path)
        # built without storage and given the checkpoint's tensors: no random init to overwrite (0.16 s
        # of each load for a ResNet-50 on a 2-core EPYC) and no copy; float32 as a built network holds
        with torch.device("meta"):
            model = build(arch)
        state = {name: value.float() if value.is_floating_point() else value for name, value in state.items()}
        try:
            model.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
            raise SpadimError(
                f"checkpoint {path} does not fit {arch} ({first}): give the {arch} checkpoint"
            ) from None
        info = Weights(arch, str(path), digest)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, info
