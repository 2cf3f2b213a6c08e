"""Tiny generators and data for the GAN-inversion tests: 64x64, a few channels, random weights."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch

from dicom_anon.faces.gan.data import FaceSet
from dicom_anon.faces.gan.generators import DCGAN, FaceGenerator
from dicom_anon.faces.gan.registry import GeneratorCard


def tiny_card(**overrides: object) -> GeneratorCard:
    fields: dict[str, object] = {
        "name": "tiny-dcgan",
        "architecture": "dcgan",
        "resolution": 64,
        "latent_dim": 4,
        "latent_space": "z",
        "params": {"ngf": 8},
        "weights": "tiny.pt",
        "sha256": "0" * 64,
        "licence": "test",
        "source": "random weights made by the test",
    }
    fields.update(overrides)
    return GeneratorCard(**fields)


@pytest.fixture
def make_card() -> Callable[..., GeneratorCard]:
    """A card for a tiny DCGAN; keyword arguments override its fields."""
    return tiny_card


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny models gain nothing from threads, and on a shared 2-core machine two threads per
    process oversubscribe the cores and run several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_generator() -> FaceGenerator:
    """A random-weight DCGAN whose batch-norm statistics are calibrated on a few batches, so
    that (like a trained one) its images vary with the code instead of sitting at zero."""
    torch.manual_seed(7)
    net = DCGAN(nz=4, ngf=8)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average over the calibration batches
    net.train()
    with torch.no_grad():
        for _ in range(4):
            net(torch.randn(64, 4))
    return FaceGenerator(net, tiny_card())


@pytest.fixture
def tiny_faces(tiny_generator: FaceGenerator) -> FaceSet:
    """Eight 'faces' the tiny generator can draw, each with a mouth-like box preserved."""
    rng = torch.Generator().manual_seed(3)
    with torch.no_grad():
        images = tiny_generator(tiny_generator.sample_latent(8, rng))
    masks = torch.zeros(8, 1, 64, 64)
    masks[:, :, 42:54, 22:42] = 1.0
    return FaceSet(images, masks, [f"face{i}" for i in range(8)])
