"""Per-image feature extraction, computed once per run, and the layer-subset embedding.

Every image is passed through the backbone once per run: the layer maps some method
needs (at their native resolutions) and, for SPADE's retrieval, the pooled layer-4
vector are kept in memory and, with ``cache_dir``, on disk. Any layer subset is then
built from them, so sweeps over layer combinations never re-run the network.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .backbone import ResNet, Weights
from spadim.data.mvtec import Preprocess, load_images, normalize
from spadim.errors import SpadimError
from spadim.lists import parse_list

LAYER_IDS = (1, 2, 3, 4)
ALL_COMBOS: tuple[tuple[int, ...], ...] = tuple(
    tuple(layer for layer in LAYER_IDS if mask >> (layer - 1) & 1) for mask in range(1, 16)
)


def combo_name(combo) -> str:
    """(1, 2) -> '1+2': the name a layer subset has in tables and files."""
    return "+".join(str(layer) for layer in combo)


def parse_layers(text: str | Iterable[int]) -> tuple[int, ...]:
    """'1,2,3' or '1+2+3' (the :func:`combo_name` that reports print) -> (1, 2, 3); unknown or empty ids
    raise SpadimError."""
    if isinstance(text, str):
        text = text.replace("+", ",")
    return tuple(sorted(parse_list(text, "layer", "layers", LAYER_IDS, int, example="1,2,3")))


@dataclass
class FeatureSet:
    """Features of a list of images, row-aligned with ``paths``.

    Only the layers some method needs are present. Layer maps are stored channels-last in
    memory (``[N, C, h, w]`` views of ``[N, h, w, C]`` storage), the layout the per-position
    searches and Gaussians read.
    """

    paths: list[Path]
    layers: dict[int, torch.Tensor]  # layer id -> [N, C, h, w] float32
    pooled: torch.Tensor | None  # [N, C4] global-average-pooled layer 4 (None when not needed)
    images: np.ndarray  # [N, crop, crop, 3] uint8 RGB (preprocessed frame)
    shapes: list[tuple[int, int]]  # original (H, W) per image

    def __len__(self) -> int:
        return len(self.images)

    def rows(self, start: int, stop: int) -> "FeatureSet":
        """Images ``start:stop`` as views (no copy)."""
        return FeatureSet(
            self.paths[start:stop],
            {layer: t[start:stop] for layer, t in self.layers.items()},
            None if self.pooled is None else self.pooled[start:stop],
            self.images[start:stop],
            self.shapes[start:stop],
        )

    def batches(self, size: int) -> Iterator["FeatureSet"]:
        for start in range(0, len(self), size):
            yield self.rows(start, start + size)


def take(fs: FeatureSet, rows: list[int]) -> FeatureSet:
    """Rows of a FeatureSet (copies)."""
    idx = torch.as_tensor(rows, dtype=torch.long)
    return FeatureSet(
        [fs.paths[i] for i in rows],
        {layer: t[idx] for layer, t in fs.layers.items()},
        None if fs.pooled is None else fs.pooled[idx],
        fs.images[rows],
        [fs.shapes[i] for i in rows],
    )


def concat(parts: list[FeatureSet]) -> FeatureSet:
    """FeatureSets one after another (copies)."""
    return FeatureSet(
        [p for fs in parts for p in fs.paths],
        {layer: torch.cat([fs.layers[layer] for fs in parts]) for layer in parts[0].layers},
        None if parts[0].pooled is None else torch.cat([fs.pooled for fs in parts]),
        np.concatenate([fs.images for fs in parts]),
        [s for fs in parts for s in fs.shapes],
    )


def embed(fs: FeatureSet, layers: Sequence[int], idx=None) -> torch.Tensor:
    """Concatenate the chosen layers, each upsampled (nearest) to the largest kept map.

    Nearest upsampling is what PaDiM's reference ``embedding_concat`` computes. ``idx``
    selects rows. Returns [n, sum C, H, W].
    """
    maps = [fs.layers[layer] if idx is None else fs.layers[layer][idx] for layer in layers]
    size = max(m.shape[-1] for m in maps)
    return torch.cat(
        [m if m.shape[-1] == size else F.interpolate(m, size=(size, size), mode="nearest") for m in maps], 1
    )


class FeatureExtractor:
    """Runs the backbone over image files, keeping only the layers that are needed.

    Each call returns one :class:`FeatureSet` filled batch by batch into preallocated
    tensors: a class's features exist once in memory. Reuse across methods and layer
    subsets happens by keeping that FeatureSet; reuse across runs by the disk cache
    (``cache_dir``, float32, one file per image). ``n_forward`` counts images passed
    through the network, for tests and benchmarks.
    """

    def __init__(
        self,
        model: ResNet,
        weights: Weights,
        pre: Preprocess,
        batch_size: int = 8,
        cache_dir: Path | None = None,
        progress: Callable[[Iterable, str, int], Iterable] | None = None,
        layers: Sequence[int] = LAYER_IDS,
        pooled: bool = True,
        device: torch.device | None = None,
    ):
        self.device = device or torch.device("cpu")  # the backbone's; features always land on the CPU
        self.model = model.to(self.device, memory_format=torch.channels_last)
        self.weights, self.pre = weights, pre
        self.batch_size = batch_size
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.progress = progress
        self.layers, self.pooled = tuple(sorted(layers)), pooled
        # the pooled vector needs layer 4; otherwise the forward pass stops at the last kept layer
        self.last = 4 if pooled else max(self.layers)
        self.n_forward = 0
        self._shape_cache: dict | None = None

    def _key(self, path: Path) -> str:
        st = path.stat()
        # only the whole frame is tagged: crop keys keep the format of the caches already on disk
        frame = "whole|" if self.pre.frame == "whole" else ""
        ident = (
            f"{self.weights.arch}|{self.weights.sha256}|{self.pre.resize}|{self.pre.crop}|{frame}{path.resolve()}|"
            f"{st.st_size}|{st.st_mtime_ns}"
        )
        return hashlib.sha1(ident.encode()).hexdigest()

    def _shapes(self) -> dict:
        """Output shapes per layer, from one dummy pass made once (every streamed chunk needs them)."""
        if self._shape_cache is None:
            with torch.inference_mode():
                out = self.model.features(torch.zeros(1, 3, self.pre.crop, self.pre.crop), self.last)
            self._shape_cache = {k: tuple(v.shape[1:]) for k, v in out.items()}
        return self._shape_cache

    def __call__(self, paths: Sequence[Path], desc: str = "features") -> FeatureSet:
        paths = [Path(p) for p in paths]
        if not paths:
            raise SpadimError("no images to extract features from")
        n = len(paths)
        fs = self._empty(n, paths)
        keys = [self._key(p) for p in paths] if self.cache_dir else []
        todo = [i for i in range(n) if not (self.cache_dir and self._from_disk(keys[i], fs, i))]
        batches = [todo[i : i + self.batch_size] for i in range(0, len(todo), self.batch_size)]
        for batch in self.progress(batches, desc, len(todo)) if self.progress and batches else batches:
            self._run(fs, batch, keys)
        return fs

    def stream(self, paths: Sequence[Path], size: int, desc: str = "features") -> Iterator[FeatureSet]:
        """Features of ``size`` images at a time: memory bounded by the chunk, not the list."""
        for start in range(0, len(paths), size):
            yield self(paths[start : start + size], desc)

    def _empty(self, n: int, paths: list[Path]) -> FeatureSet:
        shapes = self._shapes()
        layers = {
            layer: torch.empty((n, *shapes[layer]), memory_format=torch.channels_last)
            for layer in self.layers
        }
        pooled = torch.empty((n, *shapes["pool"])) if self.pooled else None
        return FeatureSet(
            paths, layers, pooled, np.zeros((n, self.pre.crop, self.pre.crop, 3), np.uint8), [(0, 0)] * n
        )

    def frames(self, images: np.ndarray, desc: str = "frames") -> FeatureSet:
        """Features of preprocessed uint8 frames [N, crop, crop, 3] held in memory (e.g. synthetic
        defects on normal images); they are not cached on disk."""
        if images.ndim != 4 or images.shape[1:] != (self.pre.crop, self.pre.crop, 3):
            raise SpadimError(
                f"frames must be [N, {self.pre.crop}, {self.pre.crop}, 3] uint8, got {images.shape}"
            )
        fs = self._empty(len(images), [Path(f"<frame {i}>") for i in range(len(images))])
        batches = [
            list(range(i, min(i + self.batch_size, len(images))))
            for i in range(0, len(images), self.batch_size)
        ]
        for batch in self.progress(batches, desc, len(images)) if self.progress and batches else batches:
            self._forward(fs, batch, images[batch], [images.shape[1:3]] * len(batch), [])
        return fs

    def _run(self, fs: FeatureSet, rows: list[int], keys: list[str]) -> None:
        images, shapes = load_images([fs.paths[i] for i in rows], self.pre)
        self._forward(fs, rows, images, shapes, keys)

    def _forward(self, fs: FeatureSet, rows: list[int], images: np.ndarray, shapes, keys: list[str]) -> None:
        x = torch.from_numpy(normalize(images)).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            out = self.model.features(x.to(self.device), self.last)
            if self.device.type != "cpu":
                out = {key: value.cpu() for key, value in out.items()}
        self.n_forward += len(rows)
        for j, i in enumerate(rows):
            for layer in self.layers:
                fs.layers[layer][i] = out[layer][j]
            if fs.pooled is not None:
                fs.pooled[i] = out["pool"][j]
            fs.images[i], fs.shapes[i] = images[j], tuple(shapes[j])
            if keys:
                self._to_disk(
                    keys[i],
                    {layer: out[layer][j] for layer in LAYER_IDS if layer in out},
                    out.get("pool"),
                    j,
                    images[j],
                    shapes[j],
                )

    def _to_disk(self, key: str, layers: dict, pool, j: int, image: np.ndarray, shape) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_dir / f"{key}.tmp"
        entry = {
            "layers": {layer: t.contiguous().clone() for layer, t in layers.items()},
            "pool": None if pool is None else pool[j].clone(),
            "image": torch.from_numpy(image),
            "shape": list(shape),
        }
        torch.save(entry, tmp)
        tmp.replace(self.cache_dir / f"{key}.pt")

    def _from_disk(self, key: str, fs: FeatureSet, i: int) -> bool:
        f = self.cache_dir / f"{key}.pt"
        if not f.is_file():
            return False
        try:
            entry = torch.load(f, map_location="cpu", weights_only=True)
            if any(layer not in entry["layers"] for layer in self.layers) or (
                fs.pooled is not None and entry["pool"] is None
            ):
                return False  # cached by a run that needed fewer layers
            for layer in self.layers:
                fs.layers[layer][i] = entry["layers"][layer]
            if fs.pooled is not None:
                fs.pooled[i] = entry["pool"]
            fs.images[i], fs.shapes[i] = entry["image"].numpy(), tuple(entry["shape"])
        except Exception:  # noqa: BLE001 - a damaged cache entry is recomputed, never trusted
            return False
        return True
