"""Decode every accepted photo encoding to RGB and encode back, losslessly unless asked."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from factories import frames_dataset, jpeg_bomb
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import get_decoder
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
)

from dicom_anon.headers.errors import Refused
from dicom_anon.pixels import OutputEncoding, codec, decode, encode


def make_ds(frames: np.ndarray, photometric: str = "RGB") -> Dataset:
    """A minimal uncompressed instance holding ``frames`` ((n, h, w, 3) or (n, h, w))."""
    return frames_dataset(frames, photometric)


def jpeg_ds(rgb: np.ndarray) -> Dataset:
    """JPEG Baseline YBR_FULL_422, as cameras and most clinic PACS send photos."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90, subsampling=1)
    ds = make_ds(rgb[None])
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    return ds


def roundtrip(ds: Dataset) -> Dataset:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    buf.seek(0)
    return pydicom.dcmread(buf)


@pytest.fixture
def rgb() -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.integers(0, 256, (2, 48, 64, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("output", "syntax"),
    [
        (OutputEncoding.EXPLICIT_LE, ExplicitVRLittleEndian),
        (OutputEncoding.RLE, RLELossless),
        (OutputEncoding.JPEG2000_LOSSLESS, JPEG2000Lossless),
    ],
)
def test_lossless_outputs_are_bit_identical_multiframe(rgb: np.ndarray, output, syntax) -> None:
    decoded = decode(make_ds(rgb))
    assert decoded.frames.shape == (2, 48, 64, 3)
    ds = make_ds(rgb)
    encode(ds, decoded.frames, monochrome=False, lossy_source=False, output=output)
    back = roundtrip(ds)
    assert back.file_meta.TransferSyntaxUID == syntax
    assert back.NumberOfFrames == 2
    assert np.array_equal(decode(back).frames, rgb)
    assert "LossyImageCompressionRatio" not in back


def test_ybr_jpeg_decodes_to_rgb_and_stays_marked_lossy() -> None:
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 0] = 200  # a red square: a wrong YBR->RGB conversion would show in the channels
    ds = jpeg_ds(rgb)
    decoded = decode(ds)
    assert decoded.lossy_source
    assert np.abs(decoded.frames[0].astype(int) - rgb).max() <= 4
    encode(ds, decoded.frames, monochrome=False, lossy_source=True, source_syntax=decoded.source_syntax)
    back = roundtrip(ds)
    assert back.PhotometricInterpretation == "RGB"
    # Lossless storage of an image that was once lossy is still lossy (PS3.3 C.7.6.1.1.5).
    assert back.LossyImageCompression == "01"
    assert back.LossyImageCompressionMethod == "ISO_10918_1"
    assert np.array_equal(decode(back).frames, decoded.frames)


def jpeg_frames_ds(frames: np.ndarray) -> Dataset:
    """A multi-frame JPEG Baseline YBR_FULL_422 instance, one JPEG stream per frame."""
    streams = []
    for frame in frames:
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=90, subsampling=1)
        streams.append(buf.getvalue())
    ds = make_ds(frames)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PixelData = encapsulate(streams)
    ds["PixelData"].VR = "OB"
    return ds


def test_ybr_jpeg_frames_decode_natively_to_the_same_rgb_as_pydicom() -> None:
    # The libjpeg-turbo plugin converts colour while decoding; it must agree with pydicom's
    # own YBR->RGB conversion (up to rounding and chroma upsampling) on every frame.
    rng = np.random.default_rng(3)
    frames = np.stack([np.full((48, 64, 3), c, np.uint8) for c in ((200, 30, 40), (20, 160, 220))])
    frames = (frames.astype(int) + rng.integers(-8, 9, frames.shape)).clip(0, 255).astype(np.uint8)
    ds = jpeg_frames_ds(frames)
    assert codec.RGB_PLUGIN in get_decoder(JPEGBaseline8Bit).available_plugins
    ours = decode(ds).frames
    theirs, info = get_decoder(JPEGBaseline8Bit).as_array(ds, as_rgb=True, decoding_plugin="pylibjpeg")
    assert str(info["photometric_interpretation"]) == "RGB"
    assert ours.shape == (2, 48, 64, 3)
    assert np.abs(ours.astype(int) - theirs).max() <= 3
    assert np.abs(ours.astype(int) - frames).mean() < 6


def test_lossy_output_only_when_asked_and_marked(rgb: np.ndarray) -> None:
    ds = make_ds(rgb)
    encode(ds, rgb, monochrome=False, lossy_source=False, output=OutputEncoding.JPEG_BASELINE, quality=80)
    back = roundtrip(ds)
    assert back.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    assert back.PhotometricInterpretation == "YBR_FULL_422"
    assert back.LossyImageCompression == "01"
    assert back.LossyImageCompressionMethod == "ISO_10918_1"
    assert float(back.LossyImageCompressionRatio) > 1.0
    assert decode(back).frames.shape == rgb.shape


def test_grey_goes_back_as_monochrome2_exactly() -> None:
    grey = np.arange(40 * 30, dtype=np.uint32).reshape(1, 40, 30).astype(np.uint8)
    decoded = decode(make_ds(grey, "MONOCHROME2"))
    assert decoded.monochrome
    assert np.array_equal(decoded.frames[0, ..., 1], grey[0])
    ds = make_ds(grey, "MONOCHROME2")
    encode(ds, decoded.frames, monochrome=True, lossy_source=False, output=OutputEncoding.RLE)
    back = roundtrip(ds)
    assert back.PhotometricInterpretation == "MONOCHROME2"
    assert back.SamplesPerPixel == 1
    assert np.array_equal(back.pixel_array, grey[0])


def test_monochrome1_is_inverted_to_what_a_viewer_shows() -> None:
    grey = np.full((1, 8, 8), 10, np.uint8)
    decoded = decode(make_ds(grey, "MONOCHROME1"))
    assert int(decoded.frames.max()) == 245


def test_sixteen_bit_is_refused_as_unsupported() -> None:
    ds = make_ds(np.zeros((1, 4, 4), np.uint8), "MONOCHROME2")
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelData = np.zeros((4, 4), np.uint16).tobytes()
    with pytest.raises(Refused) as exc:
        decode(ds)
    assert exc.value.code == "unsupported-pixels"


def test_corrupt_jpeg_is_refused_as_undecodable() -> None:
    ds = jpeg_ds(np.zeros((16, 16, 3), np.uint8))
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xdbnot a jpeg at all" * 3])
    with pytest.raises(Refused) as exc:
        decode(ds)
    assert exc.value.code == "undecodable-pixels"


def test_a_jpeg_cut_short_is_refused_not_decoded_with_grey_where_it_ends() -> None:
    """Decoders read a stream cut short and fill what is missing with grey; a face route then
    forwarded a photo cut off below the nose with a grey block where its kept mouth had been. The
    pixel stage walks each frame as the header stage does: no EOI, refused."""
    ds = jpeg_ds(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    stream = next(generate_frames(ds.PixelData, number_of_frames=1))
    decode(ds)  # whole, it decodes
    cut = stream[: len(stream) * 3 // 4]
    ds.PixelData = encapsulate([cut + b"\x00" * (len(cut) % 2)])
    with pytest.raises(Refused) as exc:
        decode(ds)
    assert exc.value.code == "undecodable-pixels"
    assert "without EOI" in exc.value.reason, exc.value.reason


def test_a_jpeg_the_decoder_cannot_read_is_refused_with_the_decoders_reason() -> None:
    """A stream whose segments are in order but whose scan names a component the frame does not
    have passes the structural checks and fails in the decoder: the reason is the decoder's own,
    on one line, not the heading pydicom puts over its plugins' errors ("Unable to decode as
    exceptions were raised by all available plugins:")."""
    ds = jpeg_ds(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    stream = bytearray(next(generate_frames(ds.PixelData, number_of_frames=1)))
    scan = stream.find(b"\xff\xda")
    stream[scan + 5] = 9  # the scan's first component selector: the frame's are 1, 2 and 3
    ds.PixelData = encapsulate([bytes(stream)])
    with pytest.raises(Refused) as exc:
        decode(ds)
    assert exc.value.code == "undecodable-pixels"
    reason = exc.value.reason
    assert reason.startswith("JPEG Baseline (Process 1) pixel data could not be decoded: "), reason
    assert "component ID that does not exist" in reason, reason
    assert "\n" not in reason and "all available plugins" not in reason


def many_scans(extra: int) -> Dataset:
    """A progressive JPEG photo whose last scan (26 bytes, all zero coefficients) is repeated:
    1,000 more made a 12 MP photo take 10 s to decode."""
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (128, 128, 128)).save(buf, format="JPEG", progressive=True)
    data = buf.getvalue()
    last = data[data.rindex(b"\xff\xda") : -2]
    ds = jpeg_ds(np.zeros((48, 64, 3), np.uint8))
    ds.PixelData = encapsulate([data[:-2] + last * extra + b"\xff\xd9"])
    return ds


def native_claiming(rows: int, columns: int, frames: int = 1) -> Dataset:
    ds = make_ds(np.zeros((1, 4, 4, 3), np.uint8))
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, columns, frames
    return ds


@pytest.mark.parametrize(
    ("photo", "code", "reason"),
    [
        # ~700 bytes whose SOF declares 65,000 x 65,000: a decoder took 24 GB and was killed
        (lambda: jpeg_bomb((65000, 65000)), "undecodable-pixels", "frame 1 declares 65000 x 65000"),
        (lambda: jpeg_bomb((32, 16), frames=2), "undecodable-pixels", "declares 16 x 32 pixels"),
        (lambda: jpeg_bomb((30000, 30000), (30000, 30000)), "unsupported-pixels", "900 MP"),
        (lambda: native_claiming(60000, 60000), "unsupported-pixels", "3600 MP"),
        (lambda: native_claiming(3000, 4000, frames=11), "unsupported-pixels", "in 11 frame(s), 132 MP"),
        (lambda: native_claiming(0, 4000), "undecodable-pixels", "empty image"),
        (lambda: many_scans(200), "undecodable-pixels", "frame 1 holds 210 scans"),
    ],
    ids=[
        "jpeg-declares-more",
        "frames-declare-another-size",
        "jpeg-too-large",
        "native-too-large",
        "too-many-frames",
        "empty",
        "too-many-scans",
    ],
)
def test_an_image_asking_for_gigabytes_is_refused_before_a_decoder_runs(
    monkeypatch, photo, code, reason
) -> None:
    def no_decoding(*args: object) -> None:
        raise AssertionError("a decoder was asked")

    monkeypatch.setattr(codec, "get_decoder", no_decoding)
    with pytest.raises(Refused) as exc:
        decode(roundtrip(photo()))
    assert exc.value.code == code
    assert reason in exc.value.reason


def test_a_photo_of_the_largest_size_admitted_reaches_the_decoder(monkeypatch) -> None:
    class Asked(Exception):
        pass

    def asked(*args: object) -> None:
        raise Asked

    monkeypatch.setattr(codec, "get_decoder", asked)
    assert codec.MAX_PIXELS == 3000 * 4000 * 10
    with pytest.raises(Asked):
        decode(native_claiming(3000, 4000, frames=10))


def test_missing_pixel_data_is_refused() -> None:
    ds = make_ds(np.zeros((1, 4, 4, 3), np.uint8))
    del ds.PixelData
    with pytest.raises(Refused) as exc:
        decode(ds)
    assert exc.value.code == "undecodable-pixels"


def test_shared_testdata_photos_decode(testdata) -> None:
    for name in ("vlphoto_face_jpeg_baseline.dcm", "vlphoto_face_explicit_le.dcm"):
        decoded = decode(pydicom.dcmread(testdata / "dicom" / "generated" / name))
        assert decoded.frames.shape == (1, 512, 512, 3)
    multi = decode(pydicom.dcmread(testdata / "dicom" / "pydicom" / "examples_ybr_color.dcm"))
    assert multi.frames.shape == (30, 240, 320, 3)


def test_an_encoder_failure_is_refused_not_raised() -> None:
    # OpenJPEG cannot code a 3x3 image; the photo must be refused, not crash the worker.
    tiny = np.zeros((1, 3, 3, 3), np.uint8)
    with pytest.raises(Refused) as exc:
        encode(
            make_ds(tiny), tiny, monochrome=False, lossy_source=False, output=OutputEncoding.JPEG2000_LOSSLESS
        )
    assert exc.value.code == "unencodable-pixels"
