"""Fixtures for the face-pipeline tests."""

from __future__ import annotations

import numpy as np
import pytest
from facekit import FACE_A, FACE_B, load_face

from dicom_anon.config import PixelSettings


@pytest.fixture(scope="session")
def face_a(testdata) -> np.ndarray:
    return load_face(testdata, FACE_A)


@pytest.fixture(scope="session")
def face_b(testdata) -> np.ndarray:
    return load_face(testdata, FACE_B)


@pytest.fixture
def lenient() -> PixelSettings:
    """Mouth kept, CPU, and a QA identity limit loose enough that tests of other behaviour
    do not depend on how far the pool's people are from one test face."""
    return PixelSettings(preserve=["mouth"], device="cpu", max_identity_similarity=0.9, max_candidates=2)
