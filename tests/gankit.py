"""A tiny generator for the GAN tests (tests/gan, tests/lab/training): 64x64, a few channels, random
weights; their conftest.py import the fixtures from here."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from dicom_anon.faces.gan.generators import DCGAN, FaceGenerator
from dicom_anon.faces.gan.registry import GeneratorCard
from dicom_anon.faces.generator import GeneratorUnavailable, verified_files


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


def _generator_installed() -> bool:
    try:
        verified_files()
    except GeneratorUnavailable:
        return False
    return True


# For tests that draw with random-face's 1024 px MobileStyleGAN.
needs_generator = pytest.mark.skipif(not _generator_installed(), reason="random-face is not installed")
