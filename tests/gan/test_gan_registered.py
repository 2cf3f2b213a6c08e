"""`method: gan` and `eval --method gan` reach the GAN backend through the face pipeline's registry."""

from __future__ import annotations

import torch

from dicom_anon.faces.gan.backend import GanBackend
from dicom_anon.faces.gan.mobile import MobileGenerator
from dicom_anon.faces.replace import make_backend, methods


def test_gan_is_a_method():
    assert "gan" in methods()


def test_gan_backend_loads_the_shipped_encoder_for_the_1024px_generator():
    backend = make_backend("gan", None, torch.device("cpu"))
    assert isinstance(backend, GanBackend) and isinstance(backend.generator, MobileGenerator)
    assert backend.info["generator"] == "mobilestylegan-1024" and backend.encoder.resolution == 256
    # On the CPU the 1024 px face is drawn by the identities' OpenVINO engine, not torch.
    assert backend.generator.engine is not None
