"""Fixtures for the encoder-training tests: the tiny generator (gankit) and faces it can draw."""

from __future__ import annotations

import pytest
import torch
from gankit import one_torch_thread, tiny_generator

from dicom_anon.faces.gan.generators import FaceGenerator
from dicom_anon.lab.training.facesets import FaceSet

__all__ = ["one_torch_thread", "tiny_generator"]


@pytest.fixture
def tiny_faces(tiny_generator: FaceGenerator) -> FaceSet:
    """Eight 'faces' the tiny generator can draw, each with a mouth-like box preserved."""
    rng = torch.Generator().manual_seed(3)
    with torch.no_grad():
        images = tiny_generator(tiny_generator.sample_latent(8, rng))
    masks = torch.zeros(8, 1, 64, 64)
    masks[:, :, 42:54, 22:42] = 1.0
    return FaceSet(images, masks, [f"face{i}" for i in range(8)])
