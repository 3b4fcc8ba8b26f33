"""Per-image feature extraction, computed once and cached, and the layer-subset embedding.

Every image is passed through the backbone once per run: all four layer maps (at
their native resolutions) and the pooled layer-4 vector are kept in memory and,
with ``cache_dir``, on disk. Any layer subset is then built from that cache by
:func:`embed`, so sweeps over layer combinations never re-run the network.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .backbone import ResNet, Weights
from .data import Preprocess, load_images, normalize
from .errors import SpadimError
from .lists import parse_list

LAYER_IDS = (1, 2, 3, 4)
ALL_COMBOS: tuple[tuple[int, ...], ...] = tuple(
    tuple(l for l in LAYER_IDS if mask >> (l - 1) & 1) for mask in range(1, 16)
)


def parse_layers(text: str | Iterable[int]) -> tuple[int, ...]:
    """'1,2,3' -> (1, 2, 3); unknown or empty ids raise SpadimError."""
    return tuple(sorted(parse_list(text, "layer", "--layers", LAYER_IDS, int, example="1,2,3")))


@dataclass
class FeatureSet:
    """Features of a list of images, row-aligned with ``paths``."""

    paths: list[Path]
    layers: dict[int, torch.Tensor]  # layer id -> [N, C, h, w] float32
    pooled: torch.Tensor  # [N, C4] global-average-pooled layer 4
    images: np.ndarray  # [N, crop, crop, 3] uint8 RGB (preprocessed frame)
    shapes: list[tuple[int, int]]  # original (H, W) per image

    def __len__(self) -> int:
        return len(self.paths)


def embed(fs: FeatureSet, layers: Sequence[int], idx=None) -> torch.Tensor:
    """Concatenate the chosen layers, each upsampled (nearest) to the largest kept map.

    Nearest upsampling is what PaDiM's reference ``embedding_concat`` computes. ``idx``
    selects rows. Returns [n, sum C, H, W].
    """
    maps = [fs.layers[l] if idx is None else fs.layers[l][idx] for l in layers]
    size = max(m.shape[-1] for m in maps)
    return torch.cat([m if m.shape[-1] == size else F.interpolate(m, size=(size, size), mode="nearest") for m in maps], 1)


class FeatureExtractor:
    """Runs the backbone over image files once, caching results in memory and on disk."""

    def __init__(
        self,
        model: ResNet,
        weights: Weights,
        pre: Preprocess,
        batch_size: int = 8,
        cache_dir: Path | None = None,
        progress: Callable[[Iterable, str, int], Iterable] | None = None,
    ):
        self.model, self.weights, self.pre = model, weights, pre
        self.batch_size = batch_size
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.progress = progress
        self._memory: dict[str, tuple[dict, torch.Tensor, np.ndarray, tuple[int, int]]] = {}
        self.n_forward = 0  # images actually passed through the network (for tests and benchmarks)

    def clear(self) -> None:
        """Drop the in-memory cache (e.g. after each class; the disk cache stays)."""
        self._memory.clear()

    def _key(self, path: Path) -> str:
        st = path.stat()
        ident = f"{self.weights.arch}|{self.weights.sha256}|{self.pre.resize}|{self.pre.crop}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        return hashlib.sha1(ident.encode()).hexdigest()

    def __call__(self, paths: Sequence[Path], desc: str = "features") -> FeatureSet:
        paths = [Path(p) for p in paths]
        if not paths:
            raise SpadimError("no images to extract features from")
        keys = [self._key(p) for p in paths]
        todo = [i for i, k in enumerate(keys) if k not in self._memory and not self._from_disk(k)]
        batches = [todo[i : i + self.batch_size] for i in range(0, len(todo), self.batch_size)]
        it = self.progress(batches, desc, len(todo)) if self.progress and batches else batches
        for batch in it:
            self._run([paths[i] for i in batch], [keys[i] for i in batch])
        items = [self._memory[k] for k in keys]
        return FeatureSet(
            paths=paths,
            layers={l: torch.cat([it[0][l] for it in items]) for l in LAYER_IDS},
            pooled=torch.cat([it[1] for it in items]),
            images=np.stack([it[2] for it in items]),
            shapes=[it[3] for it in items],
        )

    def _run(self, paths: list[Path], keys: list[str]) -> None:
        images, shapes = load_images(paths, self.pre)
        with torch.inference_mode():
            out = self.model.features(torch.from_numpy(normalize(images)))
        self.n_forward += len(paths)
        for j, key in enumerate(keys):
            item = ({l: out[l][j : j + 1].clone() for l in LAYER_IDS}, out["pool"][j : j + 1].clone(), images[j], shapes[j])
            self._memory[key] = item
            if self.cache_dir:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
                tmp = self.cache_dir / f"{key}.tmp"
                torch.save({"layers": item[0], "pool": item[1], "image": torch.from_numpy(item[2]), "shape": list(item[3])}, tmp)
                tmp.replace(self.cache_dir / f"{key}.pt")

    def _from_disk(self, key: str) -> bool:
        if not self.cache_dir:
            return False
        f = self.cache_dir / f"{key}.pt"
        if not f.is_file():
            return False
        try:
            d = torch.load(f, map_location="cpu", weights_only=True)
            self._memory[key] = ({int(l): t for l, t in d["layers"].items()}, d["pool"], d["image"].numpy(), tuple(d["shape"]))
        except Exception:  # noqa: BLE001 - a damaged cache entry is recomputed, never trusted
            return False
        return True
