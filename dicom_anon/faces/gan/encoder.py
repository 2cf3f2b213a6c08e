"""The encoder E: a small ResNet-style CNN from a face image into the generator's latent space.

Built from ResNet basic blocks with group norm instead of batch norm: at inference the backend
encodes one face at a time, and batch statistics of a single merged face would differ from those
seen in training.

The block is written out here rather than imported from torchvision (as it first was): encoders
for the 1024 px generator are trained on GPU hosts that have torch alone, and the block is a dozen
lines. Its module names are torchvision's (``conv1``, ``bn1``, ``conv2``, ``bn2``, ``downsample``),
so encoders saved with torchvision's block load unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut: torchvision's ``BasicBlock`` with a given norm."""

    def __init__(self, cin: int, cout: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = _group_norm(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = _group_norm(cout)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + shortcut)


class Encoder(nn.Module):
    """Image ``(N, 3, R, R)`` in [-1, 1] to latent codes ``(N, latent_dim)``.

    A stride-2 stem, then one or more residual blocks per stage, halving the size each stage
    until 4x4, doubling the width up to ``max_width``; global average pooling and a linear head.
    """

    def __init__(
        self,
        resolution: int,
        latent_dim: int,
        width: int = 32,
        max_width: int = 256,
        blocks_per_stage: int = 1,
    ) -> None:
        super().__init__()
        if resolution < 8 or resolution & (resolution - 1):
            raise ValueError(f"encoder resolution must be a power of two >= 8, not {resolution}")
        self.config: dict[str, Any] = {
            "resolution": resolution,
            "latent_dim": latent_dim,
            "width": width,
            "max_width": max_width,
            "blocks_per_stage": blocks_per_stage,
        }
        self.resolution = resolution
        self.latent_dim = latent_dim
        layers: list[nn.Module] = [
            nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False),
            _group_norm(width),
            nn.ReLU(inplace=True),
        ]
        channels = width
        for _ in range(int(math.log2(resolution // 2)) - 2):  # down to 4x4
            out = min(channels * 2, max_width)
            downsample = nn.Sequential(nn.Conv2d(channels, out, 1, stride=2, bias=False), _group_norm(out))
            layers.append(BasicBlock(channels, out, stride=2, downsample=downsample))
            layers.extend(BasicBlock(out, out) for _ in range(blocks_per_stage - 1))
            channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, latent_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def encoder_from_config(config: dict[str, Any]) -> Encoder:
    return Encoder(**config)


def load_encoder(path: str, device: torch.device | str = "cpu") -> tuple[Encoder, dict[str, Any]]:
    """An encoder saved by training (``encoder.pt``), and the metadata stored with it
    (generator name, preserved area, loss weights, steps)."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    encoder = encoder_from_config(saved["config"])
    encoder.load_state_dict(saved["state_dict"])
    return encoder.to(device).eval(), saved["meta"]
