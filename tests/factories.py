"""Builders for the small DICOM instances that tests make in code.

One place for the VL Photographic skeleton (UIDs, file meta, the Image Pixel module) and for
writing and re-reading, so that each test states only what its behaviour depends on: the fake
PHI it plants and the attributes it varies. Test files import it as ``from factories import ...``
(pytest puts ``tests/`` on ``sys.path`` for ``tests/conftest.py``).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

from dicom_anon.headers.engine import DeidResult, Profile, deidentify
from dicom_anon.headers.options import Option
from dicom_anon.headers.pseudonyms import SiteKey

VL_PHOTO = "1.2.840.10008.5.1.4.1.1.77.1.4"

# The fake patient most header tests plant: every value is one the profile must remove or replace.
JANE_DOE: dict[str, str] = {
    "PatientName": "Doe^Jane",
    "PatientID": "MRN00482913",
    "PatientBirthDate": "19780314",
    "StudyDate": "20240517",
}


def vl_photo(
    *,
    sop_uid: str | None = None,
    charset: str | list[str] | None = "ISO_IR 192",
    transfer_syntax: str = ExplicitVRLittleEndian,
    media_storage: bool = True,
    pixel_vr: str | None = None,
    **attrs: Any,
) -> Dataset:
    """A VL Photographic Image instance: its identity (SOP class and instance, study, series, Modality XC)
    and file meta, then ``attrs`` by keyword, set last so that they override.

    UIDs not given are fresh, so instances built in a loop are distinct instances of distinct
    studies. ``charset=None`` leaves Specific Character Set out (the default repertoire), as many
    cameras do. ``media_storage=False`` leaves the Media Storage SOP Class/Instance out of the
    file meta, as in a dataset that was never a file. ``pixel_vr`` fixes Pixel Data's VR (a
    camera writes "OB"); without it pydicom keeps "OB or OW" until it writes the file.
    """
    sop_uid = sop_uid or generate_uid()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    if media_storage:
        ds.file_meta.MediaStorageSOPClassUID = VL_PHOTO
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    if charset is not None:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID = VL_PHOTO
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "XC"
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    if pixel_vr is not None:
        ds["PixelData"].VR = pixel_vr
    return ds


def pixel_module(rows: int, columns: int, data: bytes, *, photometric: str = "RGB") -> dict[str, Any]:
    """Image Pixel attributes for 8-bit unsigned samples around ``data`` (native or encapsulated),
    as keywords for ``vl_photo``; colour images are interleaved (Planar Configuration 0)."""
    samples = 1 if photometric.startswith("MONOCHROME") else 3
    attrs: dict[str, Any] = {
        "Rows": rows,
        "Columns": columns,
        "SamplesPerPixel": samples,
        "PhotometricInterpretation": photometric,
        "BitsAllocated": 8,
        "BitsStored": 8,
        "HighBit": 7,
        "PixelRepresentation": 0,
        "PixelData": data,
    }
    if samples == 3:
        attrs["PlanarConfiguration"] = 0
    return attrs


def frames_dataset(frames: Any, photometric: str | None = None) -> Dataset:
    """An uncompressed VL Photographic instance holding ``frames`` ((n, h, w, 3) RGB or (n, h, w)
    grey uint8); ``photometric`` defaults to RGB or MONOCHROME2 by the shape."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = VL_PHOTO
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    n, h, w = frames.shape[:3]
    colour = frames.ndim == 4
    ds.Rows, ds.Columns = h, w
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = photometric or ("RGB" if colour else "MONOCHROME2")
    if colour:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if n > 1:
        ds.NumberOfFrames = n
    ds.PixelData = frames.tobytes()
    return ds


def camera_photo(**attrs: Any) -> Dataset:
    """A 4x4 RGB photo of Jane Doe-Mueller as a clinic camera sends it: no Specific Character Set,
    Pixel Data written as OB, fresh UIDs; ``attrs`` override."""
    return vl_photo(
        charset=None,
        pixel_vr="OB",
        **{**JANE_DOE, "PatientName": "Doe-Mueller^Jane", **pixel_module(4, 4, bytes(range(48))), **attrs},
    )


def jpeg_bomb(declared: tuple[int, int], header: tuple[int, int] = (16, 16), frames: int = 1) -> Dataset:
    """A JPEG camera photo of about 700 bytes whose SOF declares ``declared`` (rows, columns): what a
    decoder allocates, whatever the DICOM header (``header``, and ``frames``) says."""
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(buf, format="JPEG")
    jpeg = buf.getvalue()
    sof = jpeg.index(b"\xff\xc0") + 5
    jpeg = jpeg[:sof] + struct.pack(">HH", *declared) + jpeg[sof + 4 :]
    ds = camera_photo(
        **pixel_module(*header, encapsulate([jpeg] * frames), photometric="YBR_FULL_422"),
        NumberOfFrames=frames,
        LossyImageCompression="01",
    )
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds["PixelData"].is_undefined_length = True
    return ds


def item(**attrs: Any) -> Dataset:
    """A sequence item (or any bare dataset) with ``attrs`` set by keyword."""
    ds = Dataset()
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def to_bytes(ds: Dataset, **write_args: Any) -> bytes:
    """The instance as a DICOM file (preamble, file meta) in memory: what a search for leaked
    bytes must look at, and what a peer would receive."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True, **write_args)
    return buf.getvalue()


def roundtrip(ds: Dataset) -> Dataset:
    """Write and read back, as the engine gets an instance from disk or the network (VRs resolved,
    values encoded in the dataset's character set)."""
    return pydicom.dcmread(io.BytesIO(to_bytes(ds)))


def write(ds: Dataset, path: Path) -> Path:
    """Write the instance as a file at ``path``, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(to_bytes(ds))
    return path


def deid(ds: Dataset, key: SiteKey, *options: Option, pixels_cleaned: Iterable[Option] = ()) -> DeidResult:
    """Run the header engine with a profile of just ``options`` (the Basic Profile when none)."""
    return deidentify(ds, key, Profile(options=frozenset(options)), pixels_cleaned=frozenset(pixels_cleaned))
