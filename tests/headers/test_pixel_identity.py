"""Headers-only de-identification leaves the image alone: native Pixel Data byte for byte, and
encapsulated frames identical apart from the JPEG segments that were removed."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import openjpeg
import pydicom
from factories import deid, pixel_module, roundtrip, vl_photo
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit, RLELossless

from dicom_anon.headers.errors import Refused
from dicom_anon.headers.jpeg_markers import strip_jpeg_segments
from dicom_anon.headers.pseudonyms import SiteKey

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _deid(ds: Dataset, key: SiteKey) -> Dataset:
    """De-identify a copy and read the written bytes back, as a receiver would see them."""
    return roundtrip(deid(ds, key).dataset)


def _frames(ds: Dataset) -> list[bytes]:
    """Each frame without the NUL that pads an odd-length frame to an even fragment length."""
    frames = generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1) or 1))
    return [
        frame.rstrip(b"\x00") if frame.rstrip(b"\x00").endswith(b"\xff\xd9") else frame for frame in frames
    ]


def assert_pixels_preserved(source: Dataset, output: Dataset) -> None:
    """The check every test here makes, for one input/output pair."""
    tsyntax = source.file_meta.TransferSyntaxUID
    assert output.file_meta.TransferSyntaxUID == tsyntax
    if not tsyntax.is_encapsulated:
        assert output.PixelData == source.PixelData
        return
    expected = [strip_jpeg_segments(frame)[0] for frame in _frames(source)]
    assert _frames(output) == expected
    assert np.array_equal(output.pixel_array, source.pixel_array)


def _files(folder: Path, pattern: str) -> list[Path]:
    return sorted(folder.glob(pattern))


def test_examples_pixels_preserved(site_key: SiteKey) -> None:
    files = _files(EXAMPLES, "*.dcm")
    assert len(files) >= 6
    for path in files:
        assert_pixels_preserved(pydicom.dcmread(path), _deid(pydicom.dcmread(path), site_key))


def test_shared_files_pixels_preserved(testdata: Path, site_key: SiteKey) -> None:
    """Every shared file the engine accepts; the JPEG ones carry COM and EXIF that must go."""
    checked, refused = [], []
    for path in _files(testdata / "dicom", "**/*.dcm"):
        try:
            output = _deid(pydicom.dcmread(path), site_key)
        except Refused as err:
            refused.append((path.name, err.code))
            continue
        assert_pixels_preserved(pydicom.dcmread(path), output)
        checked.append(path.name)
    assert "vlphoto_face_noburn_jpeg_baseline.dcm" in checked
    assert "vlphoto_intraoral_noburn_explicit_le.dcm" in checked


def test_jpeg_markers_really_removed_from_shared_jpeg(testdata: Path, site_key: SiteKey) -> None:
    path = testdata / "dicom" / "generated" / "vlphoto_face_noburn_jpeg_baseline.dcm"
    source = pydicom.dcmread(path)
    output = _deid(pydicom.dcmread(path), site_key)
    assert b"\xff\xfe" in _frames(source)[0][:2000]
    assert _frames(output)[0] != _frames(source)[0]
    assert len(_frames(output)[0]) < len(_frames(source)[0])


def _photo(transfer_syntax: str, frames: list[bytes] | bytes, rows: int, cols: int, samples: int) -> Dataset:
    """A VL Photographic instance around ``frames`` (encapsulated) or native pixel bytes."""
    native = isinstance(frames, bytes)
    ds = vl_photo(
        transfer_syntax=transfer_syntax,
        PatientName="Pixel^Test",
        PatientID="PIX-1",
        ImageType=["ORIGINAL", "PRIMARY"],
        BurnedInAnnotation="NO",
        **pixel_module(
            rows,
            cols,
            frames if native else encapsulate(frames, has_bot=len(frames) > 1),
            photometric="YBR_FULL_422" if samples == 3 else "MONOCHROME2",
        ),
    )
    if not native:
        if len(frames) > 1:
            ds.NumberOfFrames = len(frames)
        ds["PixelData"].is_undefined_length = True
    return roundtrip(ds)


def _jpeg(seed: int, comment: bytes) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(
        buf, format="JPEG", comment=comment, quality=90
    )
    return buf.getvalue()


def test_multiframe_jpeg_each_frame_stripped(site_key: SiteKey) -> None:
    frames = [_jpeg(i, f"frame {i} of Pixel^Test".encode()) for i in range(3)]
    source = _photo(JPEGBaseline8Bit, frames, 24, 32, 3)
    output = _deid(source, site_key)
    assert_pixels_preserved(source, output)
    assert all(b"Pixel^Test" not in frame for frame in _frames(output))


def test_frame_split_over_fragments_stripped(site_key: SiteKey) -> None:
    source = _photo(JPEGBaseline8Bit, [_jpeg(4, b"fragmented Pixel^Test")], 24, 32, 3)
    source.PixelData = encapsulate([_jpeg(4, b"fragmented Pixel^Test")], fragments_per_frame=3)
    assert len(list(pydicom.encaps.generate_fragments(source.PixelData))) == 4  # offset table + 3
    output = _deid(source, site_key)
    assert_pixels_preserved(source, output)
    assert b"Pixel^Test" not in output.PixelData


def test_jpeg_2000_comment_stripped_pixels_identical(site_key: SiteKey) -> None:
    arr = np.random.default_rng(5).integers(0, 255, (64, 64), dtype=np.uint8)
    source = _photo(JPEG2000Lossless, [openjpeg.encode(arr)], 64, 64, 1)
    output = _deid(source, site_key)
    assert_pixels_preserved(source, output)
    assert np.array_equal(output.pixel_array, arr)


def test_rle_frames_untouched(site_key: SiteKey) -> None:
    arr = np.random.default_rng(6).integers(0, 4, (24, 32), dtype=np.uint8)
    native = _photo(ExplicitVRLittleEndian, arr.tobytes(), 24, 32, 1)
    native.compress(RLELossless)
    source = _photo(RLELossless, _frames(native), 24, 32, 1)
    output = _deid(source, site_key)
    assert output.PixelData == source.PixelData
    assert np.array_equal(output.pixel_array, arr)


def test_encapsulated_without_markers_byte_identical(site_key: SiteKey) -> None:
    rng = np.random.default_rng(9)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(buf, format="JPEG")
    assert strip_jpeg_segments(buf.getvalue()) == (buf.getvalue(), [])
    source = _photo(JPEGBaseline8Bit, [buf.getvalue()], 24, 32, 3)
    output = _deid(source, site_key)
    assert output.PixelData == source.PixelData
