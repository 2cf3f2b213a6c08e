"""`method: gan` and `eval --method gan` reach the GAN backend through the face pipeline's registry."""

from __future__ import annotations

import torch

from dicom_anon.faces.gan.backend import GanBackend
from dicom_anon.faces.replace import make_backend, methods


def test_gan_is_a_method():
    assert "gan" in methods()


def test_gan_backend_loads_the_shipped_encoder():
    backend = make_backend("gan", None, torch.device("cpu"))
    assert isinstance(backend, GanBackend)
