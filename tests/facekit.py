"""Helpers for the face and face-lab tests: SFHQ synthetic faces from shared test data, built into DICOM
here, and the fixtures both folders' conftest.py import (``face_a``, ``face_b``, ``lenient``)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from factories import frames_dataset
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit

from dicom_anon.config import PixelSettings
from dicom_anon.lab.evaluate import EvalImage, openpeople_images

# Faces that MTCNN finds frontal and that the default pool replaces within a few candidates.
FACE_A = "SFHQ_sample_2x4_002.jpg"
FACE_B = "SFHQ_sample_3x6_023.jpg"


def load_face(testdata, name: str, size: int = 384) -> np.ndarray:
    img = Image.open(testdata / "faces" / "sfhq" / name).convert("RGB")
    img.thumbnail((size, size))
    return np.asarray(img)


def photo_dataset(frames: np.ndarray, *, jpeg: bool = False, sex: str = "F", age: str = "040Y") -> Dataset:
    """A VL Photographic instance holding ``frames`` ((n, h, w, 3) RGB or (n, h, w) grey)."""
    ds = frames_dataset(frames)
    ds.PatientID, ds.PatientSex, ds.PatientAge = "P-123", sex, age
    colour = frames.ndim == 4
    if jpeg:
        parts = []
        for frame in frames:
            buf = io.BytesIO()
            Image.fromarray(frame).save(buf, format="JPEG", quality=92, subsampling=1)
            parts.append(buf.getvalue())
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.PhotometricInterpretation = "YBR_FULL_422" if colour else "MONOCHROME2"
        ds.PixelData = encapsulate(parts)
        ds["PixelData"].VR = "OB"
    return ds


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


@pytest.fixture(scope="session")
def portraits() -> dict[str, EvalImage]:
    """The openpeople studio portraits and selfies by stem (P003_studio_portrait, ...)."""
    pytest.importorskip("openpeople")
    return {im.stem: im for im in openpeople_images(("studio_portrait", "amateur_selfie"))}
