"""A fitted method behind its backbone, as one torch module from the normalised image tensor to anomaly
maps and image scores: what the ONNX export traces and ``--device cuda`` runs.

The method part is the method's own scoring module (:meth:`spadim.methods.base.Method.scorer`), the
same code its CPU ``score`` runs: traced or on a GPU its nearest-neighbour searches take the batched
matrix form (:mod:`spadim.methods.nearest`), and SPADE's choice of gallery stays inside the graph (a
Gather of the K retrieved images' rows). Nothing here re-implements a method.
"""

from __future__ import annotations

import torch
from torch import nn

from spadim.data.mvtec import IMAGENET_MEAN, IMAGENET_STD


class ScoringGraph(nn.Module):
    """Normalised images [n, 3, crop, crop] -> (maps [n, crop, crop], image scores [n]): the backbone,
    stopped at the last layer the method needs, then the method."""

    def __init__(self, network, method, size: int):
        super().__init__()
        self.last = method.backbone_last_layer()
        with torch.inference_mode():
            probe = network.features(torch.zeros(1, 3, 64, 64), self.last)
        channels = {layer: probe[layer].shape[1] for layer in range(1, self.last + 1)}
        self.network, self.method = network, method.scorer(size, channels)

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
