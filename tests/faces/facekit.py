"""Helpers for the face tests: SFHQ synthetic faces from shared test data, built into DICOM here."""

from __future__ import annotations

import io

import numpy as np
from factories import frames_dataset
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit

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
