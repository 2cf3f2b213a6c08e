"""JPEG segment stripping in the engine: every frame, offset tables kept in their form, review lines."""

from __future__ import annotations

import io

import numpy as np
import pytest
from factories import jpeg_bomb
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames, parse_basic_offsets
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, RLELossless

from dicom_anon.headers.engine import Profile, deidentify
from dicom_anon.headers.errors import Refused
from dicom_anon.headers.jpeg_markers import strip_jpeg_segments

VL_PHOTO = "1.2.840.10008.5.1.4.1.1.77.1.4"


def jpeg(shade: int, comment: bytes | None) -> bytes:
    buf = io.BytesIO()
    extra = {"comment": comment} if comment else {}
    Image.new("RGB", (16, 16), (shade, 40, 90)).save(buf, "JPEG", **extra)
    return buf.getvalue()


def photo(frames: list[bytes], *, offsets: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.SOPClassUID = VL_PHOTO
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.2.1125.10.1"
    ds.PatientID = "MRN1"
    ds.Rows = ds.Columns = 16
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PlanarConfiguration = 0
    ds.NumberOfFrames = len(frames)
    if offsets == "extended":
        ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = encapsulate_extended(frames)
    else:
        ds.PixelData = encapsulate(frames, has_bot=offsets == "basic")
    ds["PixelData"].VR = "OB"
    return ds


def stripped(frame: bytes) -> bytes:
    """The frame as the engine should store it: stripped, then padded to even length by encapsulation."""
    data = strip_jpeg_segments(frame)[0]
    return data + b"\x00" * (len(data) % 2)


def out_frames(ds: Dataset) -> list[bytes]:
    extended = None
    if "ExtendedOffsetTable" in ds:
        extended = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    return list(generate_frames(ds.PixelData, number_of_frames=ds.NumberOfFrames, extended_offsets=extended))


def test_every_frame_is_stripped_and_reviewed(site_key):
    frames = [jpeg(10, b"Jane Doe MRN1"), jpeg(200, b"frame two of Jane")]
    result = deidentify(photo(frames, offsets="basic"), site_key, Profile())
    got = out_frames(result.dataset)
    assert got == [stripped(f) for f in frames]
    assert b"Jane" not in result.dataset.PixelData
    lines = [(c.location, c.action, c.old) for c in result.changes if c.action == "strip-jpeg"]
    assert lines == [
        ("(7FE0,0010) PixelData", "strip-jpeg", "frame 1: COM (17 bytes)"),
        ("(7FE0,0010) PixelData", "strip-jpeg", "frame 2: COM (21 bytes)"),
    ]


def test_basic_offset_table_is_kept_and_correct(site_key):
    frames = [jpeg(10, b"Jane Doe"), jpeg(200, b"Jane again")]
    out = deidentify(photo(frames, offsets="basic"), site_key, Profile()).dataset
    offsets = parse_basic_offsets(out.PixelData)
    assert len(offsets) == 2 and offsets[0] == 0
    assert offsets[1] == len(stripped(frames[0])) + 8  # item header + first frame


def test_no_offset_table_stays_none(site_key):
    out = deidentify(photo([jpeg(10, b"Jane Doe")], offsets="none"), site_key, Profile()).dataset
    assert out.PixelData[4:8] == b"\x00\x00\x00\x00"
    assert out_frames(out) == [stripped(jpeg(10, b"Jane Doe"))]


def test_extended_offset_table_is_rewritten(site_key):
    frames = [jpeg(10, b"Jane Doe"), jpeg(200, b"Jane again")]
    out = deidentify(photo(frames, offsets="extended"), site_key, Profile()).dataset
    assert out_frames(out) == [stripped(f) for f in frames]


def test_frames_without_metadata_stay_byte_identical(site_key):
    ds = photo([jpeg(10, None)], offsets="basic")  # Pillow writes a bare JFIF APP0: nothing to strip
    before = ds.PixelData
    result = deidentify(ds, site_key, Profile())
    assert result.dataset.PixelData == before
    assert not [c for c in result.changes if c.action == "strip-jpeg"]


def test_a_frame_declaring_another_size_than_the_header_is_refused(site_key) -> None:
    """Headers-only routes decode nothing, but must not hand an archive's decoder a frame that asks
    for 65,000 x 65,000 pixels under a header of 16 x 16 (24 GB when a decoder ran it)."""
    with pytest.raises(Refused) as exc:
        deidentify(jpeg_bomb((65000, 65000)), site_key, Profile())
    assert exc.value.code == "corrupt-pixel-data"
    assert exc.value.reason.startswith(
        "frame 1 declares 65000 x 65000 pixels with 3 components, but the header"
    )
    larger = io.BytesIO()
    Image.new("RGB", (32, 16)).save(larger, "JPEG")
    with pytest.raises(Refused, match="frame 2 declares 32 x 16 pixels"):
        deidentify(photo([jpeg(10, None), larger.getvalue()], offsets="basic"), site_key, Profile())
    assert deidentify(photo([jpeg(10, None), jpeg(20, None)], offsets="basic"), site_key, Profile())


def test_a_frame_that_is_not_its_transfer_syntax_codestream_is_refused(site_key) -> None:
    """The segment walk starts at SOI (or SOC): a JPEG frame with one flipped bit in its SOI was
    forwarded unread, its comment and Exif still in it (fuzz_deid.py, seed 61207)."""
    frame = jpeg(10, b"Jane Doe MRN1")
    flipped = b"\x7f" + frame[1:]
    with pytest.raises(Refused) as exc:
        deidentify(photo([jpeg(20, None), flipped], offsets="basic"), site_key, Profile())
    assert (exc.value.code, exc.value.reason) == (
        "corrupt-jpeg",
        "frame 2 starts with 7F D8 FF E0, not the SOI (FF D8) that JPEG Baseline (Process 1) frames "
        "start with",
    )
    j2k = photo([frame], offsets="basic")
    j2k.file_meta.TransferSyntaxUID = JPEG2000Lossless
    with pytest.raises(Refused, match="frame 1 starts with FF D8 FF E0, not the SOC and SIZ"):
        deidentify(j2k, site_key, Profile())


def test_an_rle_frame_must_start_with_an_rle_header(site_key) -> None:
    ds = photo([jpeg(10, None)], offsets="none")
    ds.PhotometricInterpretation = "RGB"
    ds.compress(RLELossless, np.full((16, 16, 3), 90, np.uint8), encoding_plugin="pydicom")
    ds.NumberOfFrames = 1
    assert deidentify(ds, site_key, Profile()).dataset.PixelData == ds.PixelData
    ds.PixelData = encapsulate([jpeg(10, b"Jane Doe MRN1")])
    with pytest.raises(Refused) as exc:
        deidentify(ds, site_key, Profile())
    assert exc.value.code == "corrupt-pixel-data"
    assert exc.value.reason == "frame 1 does not start with an RLE header"
