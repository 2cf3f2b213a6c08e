"""Fixtures for the GAN backend tests: the tiny generator (gankit) and cards for it."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from gankit import one_torch_thread, tiny_card, tiny_generator

from dicom_anon.faces.gan.registry import GeneratorCard

__all__ = ["one_torch_thread", "tiny_generator"]


@pytest.fixture
def make_card() -> Callable[..., GeneratorCard]:
    """A card for a tiny DCGAN; keyword arguments override its fields."""
    return tiny_card
