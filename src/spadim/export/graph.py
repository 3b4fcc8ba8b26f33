"""Each fitted method as one torch module from the normalised image tensor to its anomaly maps and image
scores, built from the method's state: what the ONNX export traces.

The modules compute what the methods compute, in operations ONNX has. Three steps change form, each
exact in real arithmetic and checked against the methods on real images
(``python -m benchmarks.export_check``):

- nearest-neighbour searches (SPADE, PatchCore) are one matrix product ``|q|^2 - 2 q.g + |g|^2`` and a
  minimum over the gallery (the form faiss computes), instead of faiss or the pruned search;
- SPADE's per-image gallery is a Gather of the K retrieved images' feature rows (TopK on the pooled
  distances), so the choice of gallery stays inside the graph;
- PaDiM's Cholesky form has no triangular solve in ONNX: the export holds the inverse factor
  ``L^-1`` (computed in float64), and the distance is ``|L^-1 (x - mu)|`` by a matrix product.

The Gaussian blur (sigma 4, radius 16, scipy's ``reflect`` border, i.e. the edge sample repeated) is
two one-dimensional convolutions on a symmetrically padded map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spadim.data.mvtec import IMAGENET_MEAN, IMAGENET_STD
from spadim.methods.maps import SIGMA
from spadim.methods.padim import EPS
from spadim.methods.patchcore import embed_patches, patch_kernel


class MapStep(nn.Module):
    """[n, h, w] grid -> [n, size, size] map: bilinear upsampling (align_corners=False), then
    ``scipy.ndimage.gaussian_filter(sigma, truncate=4, mode="reflect")`` per map."""

    def __init__(self, size: int, sigma: float = SIGMA):
        super().__init__()
        self.size = int(size)
        self.radius = int(4.0 * sigma + 0.5) if sigma > 0 else 0
        offsets = torch.arange(-self.radius, self.radius + 1, dtype=torch.float64)
        kernel = torch.exp(-0.5 * (offsets / sigma) ** 2) if sigma > 0 else torch.ones(1, dtype=torch.float64)
        self.register_buffer("kernel", (kernel / kernel.sum()).float())

    def upsample(self, grid: torch.Tensor) -> torch.Tensor:
        size = (self.size, self.size)
        return F.interpolate(grid[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]

    def blur(self, maps: torch.Tensor) -> torch.Tensor:
        r = self.radius
        if r == 0:
            return maps
        x = maps[:, None]
        x = torch.cat([x[..., :r].flip(-1), x, x[..., -r:].flip(-1)], dim=-1)
        x = F.conv2d(x, self.kernel.reshape(1, 1, 1, -1))
        x = torch.cat([x[..., :r, :].flip(-2), x, x[..., -r:, :].flip(-2)], dim=-2)
        return F.conv2d(x, self.kernel.reshape(1, 1, -1, 1))[:, 0]

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        return self.blur(self.upsample(grid))


def _nearest_squared(queries: torch.Tensor, gallery: torch.Tensor, gallery_sq: torch.Tensor) -> torch.Tensor:
    """[n, q, C] queries, [n or 1, g, C] gallery -> [n, q] squared distance to the nearest gallery row, as
    faiss and spadim's torch search compute it: ``|q|^2 - 2 q.g + |g|^2``, minimum, clamped at 0. (Taking
    the direct distance to the argmin row instead removes the form's ~1e-7 |q|^2 cancellation, which only
    shows when a query repeats a gallery row, but cost SPADE 25% more time in onnxruntime.)"""
    products = torch.matmul(queries, gallery.transpose(-1, -2))
    squared = queries.square().sum(-1, keepdim=True) - 2 * products + gallery_sq[..., None, :]
    return squared.amin(-1).clamp_min(0)


class SpadeGraph(nn.Module):
    def __init__(self, model, size: int, channels: dict):
        super().__init__()
        if model.fusion != "mean":
            raise ValueError("the export covers SPADE's reference fusion (mean of per-layer maps) only")
        self.layers, self.k = tuple(model.layers), min(model.k, len(model.train_pooled))
        self.register_buffer("pooled", model.train_pooled.float().contiguous())
        for layer in self.layers:
            rows = model.train_layers[layer].permute(0, 2, 3, 1).flatten(1, 2).contiguous()  # [N, hw, C]
            self.register_buffer(f"gallery{layer}", rows)
            self.register_buffer(f"gallery_sq{layer}", rows.square().sum(-1))
        self.maps = MapStep(size)

    def forward(self, features: dict) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = features["pool"]
        squared = (
            pooled.square().sum(1, keepdim=True) - 2 * pooled @ self.pooled.T + self.pooled.square().sum(1)
        )
        distances, nearest = torch.topk(squared.clamp_min(0).sqrt(), self.k, dim=1, largest=False)
        upsampled = []
        for layer in self.layers:
            test = features[layer]
            n, channels, h, w = test.shape
            queries = test.permute(0, 2, 3, 1).reshape(n, h * w, channels)
            gallery = getattr(self, f"gallery{layer}")[nearest].reshape(n, -1, channels)  # K images' rows
            gallery_sq = getattr(self, f"gallery_sq{layer}")[nearest].reshape(n, -1)
            grid = _nearest_squared(queries, gallery, gallery_sq).sqrt().reshape(n, h, w)
            upsampled.append(self.maps.upsample(grid))
        maps = self.maps.blur(torch.stack(upsampled).mean(0))
        return maps, distances.mean(1)


class PadimGraph(nn.Module):
    def __init__(self, model, size: int, channels: dict):
        """``channels``: each layer's channel count, which places the concatenated ids in their layers."""
        super().__init__()
        self.layers, self.grid = tuple(model.layers), int(model.grid[0])
        self.low_rank = model.chol is None
        self.register_buffer("mean", model.mean.float().contiguous())  # [L, d]
        offset = 0
        for layer in self.layers:
            count = channels[layer]
            local = model.idx[(model.idx >= offset) & (model.idx < offset + count)] - offset
            offset += count
            if len(local):
                self.register_buffer(f"channels{layer}", local.long())
        if self.low_rank:
            self.register_buffer("basis", model.basis.float().transpose(1, 2).contiguous())  # [L, d, r]
            self.register_buffer("precisions", model.precisions.float()[:, None, :])  # [L, 1, r]
        else:  # no triangular solve in ONNX: |L^-1 v| with the inverse factor, transposed for x @ W^T
            identity = torch.eye(model.chol.shape[1], dtype=torch.float64)
            inverse = torch.linalg.solve_triangular(model.chol.double(), identity, upper=False)
            self.register_buffer("inverse_t", inverse.transpose(1, 2).float().contiguous())  # [L, d, d]
        self.maps = MapStep(size)

    def forward(self, features: dict) -> tuple[torch.Tensor, torch.Tensor]:
        parts = []
        for layer in self.layers:
            if not hasattr(self, f"channels{layer}"):
                continue
            chosen = features[layer].index_select(1, getattr(self, f"channels{layer}"))
            if chosen.shape[-1] != self.grid:
                chosen = F.interpolate(chosen, size=(self.grid, self.grid), mode="nearest")
            parts.append(chosen)
        x = torch.cat(parts, 1)
        n = x.shape[0]
        diff = x.flatten(2).permute(2, 0, 1) - self.mean[:, None, :]  # [L, n, d]
        if self.low_rank:
            projected = torch.matmul(diff, self.basis)  # [L, n, r]
            squared = (diff.square().sum(-1) - projected.square().sum(-1)) / EPS + (
                projected.square() * self.precisions
            ).sum(-1)
        else:
            squared = torch.matmul(diff, self.inverse_t).square().sum(-1)
        grid = squared.clamp_min(0).sqrt().transpose(0, 1).reshape(n, self.grid, self.grid)
        maps = self.maps(grid)
        return maps, maps.flatten(1).amax(1)


class PatchCoreGraph(nn.Module):
    def __init__(self, model, size: int, channels: dict):
        super().__init__()
        self.layers, self.dim, self.target_dim = tuple(model.layers), model.dim, model.target_dim
        self.neighbours = min(model.neighbours, len(model.bank))
        self.groups = {}
        for layer in self.layers:  # the pooling convolutions as constants of known shape
            kernel = patch_kernel(channels[layer], self.dim)
            if kernel is None:
                raise ValueError(f"the export needs --patchcore-dim to split layer {layer}'s channels evenly")
            self.groups[layer] = kernel[0]
            self.register_buffer(f"kernel{layer}", kernel[1])
        self.register_buffer("bank", model.bank.float().contiguous())
        self.register_buffer("bank_sq", model.bank.float().square().sum(1))
        self.maps = MapStep(size)

    def forward(self, features: dict) -> tuple[torch.Tensor, torch.Tensor]:
        n = features[self.layers[0]].shape[0]
        kernels = {layer: (self.groups[layer], getattr(self, f"kernel{layer}")) for layer in self.layers}
        emb, (h, w) = embed_patches(features, self.layers, self.dim, self.target_dim, kernels=kernels)
        emb = emb.reshape(n, h * w, -1)
        squared = _nearest_squared(emb, self.bank[None], self.bank_sq[None])  # [n, hw]
        maps = self.maps(squared.reshape(n, h, w))
        if self.neighbours < 2:
            return maps, squared.amax(1)
        worst = squared.argmax(1)
        query = emb[torch.arange(n), worst]  # [n, D]: each image's most anomalous patch
        to_bank = query.square().sum(1, keepdim=True) - 2 * query @ self.bank.T + self.bank_sq  # [n, G]
        nearest = to_bank.argmin(1)
        s_star = (query - self.bank[nearest]).norm(dim=1)
        around = self.bank_sq - 2 * self.bank[nearest] @ self.bank.T  # |m* - m|^2 - |m*|^2
        around = around.scatter(1, nearest[:, None], float("-inf"))  # m* first in N_b(m*)
        support = torch.topk(around, self.neighbours, dim=1, largest=False).indices  # [n, b]
        distances = (self.bank[support] - query[:, None]).norm(dim=-1)
        return maps, (1 - torch.softmax(distances, 1)[:, 0]) * s_star


GRAPHS = {"spade": SpadeGraph, "padim": PadimGraph, "patchcore": PatchCoreGraph}


class ScoringGraph(nn.Module):
    """Normalised images [n, 3, crop, crop] -> (maps [n, crop, crop], image scores [n]): the backbone,
    stopped at the last layer the method needs, then the method."""

    def __init__(self, network, method, size: int):
        super().__init__()
        self.last = 4 if method.name == "spade" else max(method.layers)
        with torch.inference_mode():
            probe = network.features(torch.zeros(1, 3, 64, 64), self.last)
        channels = {layer: probe[layer].shape[1] for layer in range(1, self.last + 1)}
        self.network, self.method = network, GRAPHS[method.name](method, size, channels)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.method(self.network.features(images, self.last))


class GraphScorer:
    """The scoring graph on a device (``--device cuda``): uint8 frames in, numpy maps and scores out. Each
    batch crosses to the device once as uint8 and comes back as maps; nothing else moves."""

    def __init__(self, network, method, size: int, device: torch.device, batch_size: int = 8):
        self.graph = ScoringGraph(network, method, size).eval().to(device)
        self.device, self.batch_size = device, batch_size
        self.mean = torch.from_numpy(IMAGENET_MEAN).reshape(1, 3, 1, 1).to(device)  # normalize()'s constants
        self.std = torch.from_numpy(IMAGENET_STD).reshape(1, 3, 1, 1).to(device)

    def __call__(self, frames) -> tuple:
        maps, scores = [], []
        with torch.inference_mode():
            for start in range(0, len(frames), self.batch_size):
                batch = torch.from_numpy(frames[start : start + self.batch_size]).to(self.device)
                images = (batch.permute(0, 3, 1, 2).float() / 255.0 - self.mean) / self.std
                batch_maps, batch_scores = self.graph(images)
                maps.append(batch_maps.float().cpu())
                scores.append(batch_scores.double().cpu())
        return torch.cat(maps).numpy(), torch.cat(scores).numpy()
