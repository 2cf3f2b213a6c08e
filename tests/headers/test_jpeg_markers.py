"""strip_jpeg_segments: PHI-bearing JPEG/JPEG-LS/JPEG 2000 segments go, decoded pixels stay identical."""

from __future__ import annotations

import copy
import io
import json
import re
from pathlib import Path

import numpy as np
import openjpeg
import pydicom
import pytest
from PIL import Image, ImageCms
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_frames

from dicom_anon.headers.errors import Refused
from dicom_anon.headers.jpeg_markers import FrameSize, strip_and_measure, strip_jpeg_segments

EXIF_ARTIST = "Mildred Ratched (photographer)"
EXIF_DESCRIPTION = "Jane Doe-Mueller MRN00482913 left cheek"
COMMENT = "Patient: Jane Doe-Mueller MRN00482913"
XMP = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><dc:creator>Jane Doe-Mueller</dc:creator></x:xmpmeta>'


def _picture(size: tuple[int, int] = (64, 48)) -> Image.Image:
    rng = np.random.default_rng(7)
    base = np.linspace(0, 255, size[0] * size[1] * 3).reshape(size[1], size[0], 3)
    noise = rng.integers(0, 40, base.shape)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def _jpeg(**save: object) -> bytes:
    buf = io.BytesIO()
    _picture().save(buf, format="JPEG", quality=85, **save)
    return buf.getvalue()


def _exif() -> bytes:
    exif = Image.Exif()
    exif[0x013B] = EXIF_ARTIST
    exif[0x010E] = EXIF_DESCRIPTION
    return exif.tobytes()


def _srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload


def _after_soi(data: bytes, *segments: bytes) -> bytes:
    return data[:2] + b"".join(segments) + data[2:]


def _from_sos(data: bytes) -> bytes:
    return data[data.index(b"\xff\xda") :]


def _markers(data: bytes) -> list[int]:
    """Marker codes of the header segments up to the first SOS (the test's own simple walk)."""
    codes, pos = [], 2
    while True:
        code = data[pos + 1]
        codes.append(code)
        if code == 0xDA:
            return codes
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")


def _removed_bytes(descriptions: list[str]) -> int:
    return sum(int(re.search(r"\((\d+) bytes\)$", d).group(1)) for d in descriptions)


# --- JPEG (ISO 10918) -------------------------------------------------------


def test_exif_com_xmp_removed_pixels_and_scan_identical() -> None:
    original = _jpeg(exif=_exif(), comment=COMMENT.encode(), xmp=XMP)
    stripped, removed = strip_jpeg_segments(original)
    for text in (EXIF_ARTIST, EXIF_DESCRIPTION, COMMENT, "Jane Doe-Mueller"):
        assert text.encode() in original
        assert text.encode() not in stripped
    assert _from_sos(stripped) == _from_sos(original)
    assert np.array_equal(_decode(stripped), _decode(original))
    assert sorted(d.split(" (")[0] for d in removed) == ["APP1 Exif", "APP1 XMP", "COM"]


def test_descriptions_count_exactly_the_removed_bytes() -> None:
    original = _jpeg(exif=_exif(), comment=COMMENT.encode())
    stripped, removed = strip_jpeg_segments(original)
    assert _removed_bytes(removed) == len(original) - len(stripped)


def test_descriptions_never_echo_segment_content() -> None:
    # An unknown APPn whose first bytes are a name must not put the name in the description.
    original = _after_soi(_jpeg(), _segment(0xE5, b"Doe^Jane\x00secret"))
    stripped, removed = strip_jpeg_segments(original)
    assert removed == ["APP5 (19 bytes)"]
    assert b"Doe^Jane" not in stripped


def test_icc_profile_kept() -> None:
    icc = _srgb_icc()
    original = _jpeg(icc_profile=icc, comment=COMMENT.encode())
    stripped, removed = strip_jpeg_segments(original)
    assert icc in stripped
    assert removed == [f"COM ({len(COMMENT) + 4} bytes)"]
    assert Image.open(io.BytesIO(stripped)).info["icc_profile"] == icc


def test_jfif_kept_without_its_thumbnail() -> None:
    plain = _jpeg()
    assert _markers(plain)[0] == 0xE0
    jfif_len = int.from_bytes(plain[4:6], "big")
    jfif = plain[6 : 4 + jfif_len]
    thumbnail = bytes(range(2 * 2 * 3))  # 2x2 RGB thumbnail
    with_thumb = plain[:2] + _segment(0xE0, jfif[:12] + b"\x02\x02" + thumbnail) + plain[4 + jfif_len :]
    stripped, removed = strip_jpeg_segments(with_thumb)
    assert stripped == plain
    assert removed == ["APP0 JFIF thumbnail (12 bytes)"]


def test_jfxx_photoshop_and_other_appn_removed() -> None:
    plain = _jpeg()
    original = _after_soi(
        plain,
        _segment(0xE0, b"JFXX\x00\x10" + b"\xff\xd8 thumbnail"),
        _segment(0xED, b"Photoshop 3.0\x008BIM\x04\x04" + b"Doe^Jane"),
        _segment(0xE3, b"Meta\x00 maker notes"),
        _segment(0xEF, b"anything"),
    )
    stripped, removed = strip_jpeg_segments(original)
    assert stripped == plain
    assert [d.split(" (")[0] for d in removed] == ["APP0 JFXX", "APP13 Photoshop", "APP3", "APP15"]


def test_adobe_app14_kept_for_the_colour_transform() -> None:
    adobe = b"Adobe\x00\x64\x00\x00\x00\x00\x01"  # transform 1: YCbCr
    plain = _after_soi(_jpeg(), _segment(0xEE, adobe))
    stripped, removed = strip_jpeg_segments(plain)
    assert stripped == plain
    assert removed == []
    longer = _after_soi(_jpeg(), _segment(0xEE, adobe + b"Doe^Jane"))
    stripped, removed = strip_jpeg_segments(longer)
    assert stripped == plain
    assert removed == ["APP14 Adobe extra data (8 bytes)"]


def test_non_adobe_app14_removed() -> None:
    plain = _jpeg()
    stripped, removed = strip_jpeg_segments(_after_soi(plain, _segment(0xEE, b"NotAdobe text")))
    assert stripped == plain
    assert removed == ["APP14 (17 bytes)"]


def test_comment_between_progressive_scans_removed() -> None:
    plain = _jpeg(progressive=True)
    second_sos = plain.index(b"\xff\xda", plain.index(b"\xff\xda") + 2)
    original = plain[:second_sos] + _segment(0xFE, COMMENT.encode()) + plain[second_sos:]
    assert np.array_equal(_decode(original), _decode(plain))
    stripped, removed = strip_jpeg_segments(original)
    assert stripped == plain
    assert removed == [f"COM ({len(COMMENT) + 4} bytes)"]


def test_restart_markers_in_entropy_data_kept() -> None:
    plain = _jpeg(restart_marker_blocks=1)
    assert re.search(rb"\xff[\xd0-\xd7]", _from_sos(plain))
    original = _after_soi(plain, _segment(0xFE, COMMENT.encode()))
    stripped, _ = strip_jpeg_segments(original)
    assert stripped == plain


def test_fill_bytes_before_markers_kept() -> None:
    plain = _jpeg()
    dqt = plain.index(b"\xff\xdb")
    original = plain[:dqt] + b"\xff\xff" + _segment(0xFE, b"x") + plain[dqt:]
    stripped, _ = strip_jpeg_segments(original)
    assert stripped == plain[:dqt] + b"\xff\xff" + plain[dqt:]
    assert np.array_equal(_decode(stripped), _decode(plain))


def test_even_length_padding_after_eoi_kept() -> None:
    plain = _jpeg()
    for pad in (b"\x00", b"\xff"):
        assert strip_jpeg_segments(plain + pad) == (plain + pad, [])


def test_picture_appended_after_eoi_removed() -> None:
    # MPF and some phones append a second full JPEG (a preview, another shot) after EOI.
    plain = _jpeg()
    stripped, removed = strip_jpeg_segments(plain + _jpeg(comment=COMMENT.encode()))
    assert stripped == plain
    assert removed[0].startswith("data after EOI (")


def test_an_end_of_image_marker_inside_the_stream_is_refused() -> None:
    """An FF D9 inside the entropy-coded data ends the stream there for every decoder, which fills
    the rest of the image with grey; what follows it is the stream's own, not a trailer."""
    plain = _jpeg()
    scan = plain.index(b"\xff\xda")
    at = scan + (len(plain) - scan) // 2
    with pytest.raises(Refused, match="the stream goes on after it") as exc:
        strip_jpeg_segments(plain[:at] + b"\xff\xd9" + plain[at:])
    assert exc.value.code == "corrupt-jpeg"


def test_clean_stream_returned_as_is() -> None:
    plain = _jpeg()
    assert strip_jpeg_segments(plain) == (plain, [])


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda d: d[: d.index(b"\xff\xdb") + 20], id="truncated-in-header"),
        pytest.param(lambda d: d[:-2], id="no-eoi"),
        pytest.param(lambda d: d[:4] + b"\xff\xff" + d[6:], id="length-past-end"),
        pytest.param(lambda d: d[:2] + b"\x12\x34" + d[2:], id="not-a-marker"),
        pytest.param(lambda d: d[:2] + b"\xff\xf2\x00\x04ab" + d[2:], id="reserved-marker"),
        pytest.param(lambda d: d[:2] + b"\xff\xd0" + d[2:], id="restart-in-header"),
        pytest.param(lambda d: b"\xff\xc0" + d[2:], id="no-soi"),
    ],
)
def test_malformed_stream_refused(mangle) -> None:
    with pytest.raises(Refused) as err:
        strip_jpeg_segments(mangle(_jpeg(comment=COMMENT.encode())))
    assert err.value.code == "corrupt-jpeg"


def test_non_jpeg_frame_returned_unchanged() -> None:
    rle_header = (1).to_bytes(4, "little") + (64).to_bytes(4, "little") + bytes(56)
    frame = rle_header + b"\x05abcdef\x00"
    assert strip_jpeg_segments(frame) == (frame, [])
    assert strip_jpeg_segments(b"") == (b"", [])


# --- JPEG-LS ------------------------------------------------------------------


def _first_frame(name: str) -> tuple[pydicom.Dataset, bytes]:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} not installed")
    ds = pydicom.dcmread(path)
    return ds, next(generate_frames(ds.PixelData, number_of_frames=1))


def _decode_frame(ds: pydicom.Dataset, frame: bytes) -> np.ndarray:
    other = copy.deepcopy(ds)
    other.PixelData = encapsulate([frame])
    return other.pixel_array


def test_jpeg_ls_comment_after_scan_removed_scan_identical() -> None:
    ds, frame = _first_frame("MR_small_jpeg_ls_lossless.dcm")
    end = frame.rindex(b"\xff\xd9")
    original = (
        _after_soi(frame[:end], _segment(0xE1, b"Exif\x00\x00" + EXIF_ARTIST.encode()))
        + _segment(0xFE, COMMENT.encode())
        + frame[end:]
    )
    stripped, removed = strip_jpeg_segments(original)
    assert stripped == frame
    assert [d.split(" (")[0] for d in removed] == ["APP1 Exif", "COM"]
    assert np.array_equal(_decode_frame(ds, stripped), ds.pixel_array)


def test_jpeg_ls_spiff_removed_colour_identical() -> None:
    ds, frame = _first_frame("SC_rgb_jls_lossy_line.dcm")
    stripped, removed = strip_jpeg_segments(frame)
    assert [d.split(" (")[0] for d in removed] == ["APP8 SPIFF", "APP8"]
    assert _from_sos(stripped) == _from_sos(frame)
    assert np.array_equal(_decode_frame(ds, stripped), ds.pixel_array)


def test_jpeg_ls_hp_colour_transform_kept() -> None:
    _, frame = _first_frame("MR_small_jpeg_ls_lossless.dcm")
    mrfx = _after_soi(frame, _segment(0xE8, b"mrfx\x01"))
    assert strip_jpeg_segments(mrfx) == (mrfx, [])


# --- JPEG 2000 ----------------------------------------------------------------


def _j2k(**kwargs: object) -> bytes:
    arr = np.asarray(_picture().convert("L"))
    return openjpeg.encode(arr, **kwargs)


def _insert_tile_comment(code: bytes, text: bytes) -> bytes:
    """Put a COM in the (only) tile-part header and grow Psot and the TLM entry to match."""
    com = _segment(0x64, b"\x00\x01" + text)
    sot = code.index(b"\xff\x90\x00\x0a")
    psot = int.from_bytes(code[sot + 6 : sot + 10], "big")
    out = bytearray(code[: sot + 12] + com + code[sot + 12 :])
    out[sot + 6 : sot + 10] = (psot + len(com)).to_bytes(4, "big")
    tlm = code.find(b"\xff\x55", 0, sot)
    if tlm != -1:
        stlm = code[tlm + 5]
        width = 4 if stlm & 0x40 else 2
        field = tlm + 6 + ((stlm >> 4) & 0x3)
        old = int.from_bytes(code[field : field + width], "big")
        out[field : field + width] = (old + len(com)).to_bytes(width, "big")
    return bytes(out)


def test_j2k_main_header_comment_removed() -> None:
    original = _j2k()
    assert b"\xff\x64" in original[: original.index(b"\xff\x90")]  # OpenJPEG's "Created by" COM
    stripped, removed = strip_jpeg_segments(original)
    assert removed[0].startswith("COM (")
    assert b"\xff\x64" not in stripped[: stripped.index(b"\xff\x90")]
    assert stripped[stripped.index(b"\xff\x90") :] == original[original.index(b"\xff\x90") :]
    assert np.array_equal(openjpeg.decode(stripped), openjpeg.decode(original))


@pytest.mark.parametrize("add_tlm", [False, True], ids=["no-tlm", "tlm"])
def test_j2k_tile_part_comment_removed_and_lengths_fixed(add_tlm: bool) -> None:
    clean, _ = strip_jpeg_segments(_j2k(add_tlm=add_tlm))
    assert (b"\xff\x55" in clean) == add_tlm
    original = _insert_tile_comment(clean, COMMENT.encode())
    assert np.array_equal(openjpeg.decode(original), openjpeg.decode(clean))
    stripped, removed = strip_jpeg_segments(original)
    assert stripped == clean
    assert removed == [f"COM in tile-part header ({len(COMMENT) + 6} bytes)"]


def test_j2k_in_jp2_boxes_refused() -> None:
    jp2 = openjpeg.encode(np.asarray(_picture().convert("L")), codec_format=1)
    with pytest.raises(Refused, match="corrupt-jpeg"):
        strip_jpeg_segments(jp2)


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda d: d[:-2], id="no-eoc"),
        pytest.param(lambda d: d[:40], id="truncated-header"),
        pytest.param(lambda d: d[:2] + d[d.index(b"\xff\x52") :], id="no-siz"),
    ],
)
def test_j2k_malformed_refused(mangle) -> None:
    with pytest.raises(Refused, match="corrupt-jpeg"):
        strip_jpeg_segments(mangle(_j2k()))


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "MR_small_jp2klossless.dcm", "SC_rgb_gdcm_KY.dcm"])
def test_j2k_pydicom_files_decode_identically(name: str) -> None:
    ds, frame = _first_frame(name)
    stripped, removed = strip_jpeg_segments(frame)
    assert removed
    assert np.array_equal(_decode_frame(ds, stripped), ds.pixel_array)


# --- the shared test files ------------------------------------------------------


def _shared_jpeg_files(testdata: Path) -> list[Path]:
    dicom = testdata / "dicom"
    return sorted(dicom.glob("generated/*jpeg*.dcm")) + sorted(dicom.glob("pydicom/SC_*jpeg*.dcm"))


def test_shared_jpeg_frames_lose_planted_com_and_exif(testdata: Path) -> None:
    files = _shared_jpeg_files(testdata)
    assert files
    checked_planted = 0
    for path in files:
        ds = pydicom.dcmread(path)
        frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1))))
        stripped = [strip_jpeg_segments(f)[0] for f in frames]
        for before, after in zip(frames, stripped, strict=True):
            assert _from_sos(after) == _from_sos(before), path.name
        prefix = path.name.split("_jpeg")[0].replace("_INVALID", "")
        manifest = path.parent / f"{prefix}_phi_manifest.json"
        if manifest.exists():
            planted = json.loads(manifest.read_text(encoding="utf-8"))
            texts = [planted["jpeg_markers"]["COM"], EXIF_ARTIST, EXIF_DESCRIPTION]
            texts += [s for s in planted["strings"]["phi"] if len(s) >= 8]
            assert planted["jpeg_markers"]["COM"].encode() in frames[0], f"{path.name}: nothing planted?"
            for text in texts:
                assert text.encode() not in stripped[0], f"{path.name}: {text!r} left in the JPEG stream"
            checked_planted += 1
        ds.PixelData = encapsulate(stripped)
        assert np.array_equal(ds.pixel_array, pydicom.dcmread(path).pixel_array), path.name
    assert checked_planted >= 4


# --- the size a frame declares ---------------------------------------------------


def measured(frame: bytes) -> FrameSize | None:
    return strip_and_measure(frame)[2]


@pytest.mark.parametrize("save", [{}, {"progressive": True}, {"subsampling": 0}])
def test_the_walk_reads_the_jpeg_frame_header(save: dict) -> None:
    scans = 10 if save.get("progressive") else 1  # libjpeg's progressive script for colour
    assert measured(_after_soi(_jpeg(**save), _segment(0xFE, COMMENT.encode()))) == FrameSize(
        48, 64, 3, scans
    )
    grey = io.BytesIO()
    _picture((40, 30)).convert("L").save(grey, format="JPEG")
    assert measured(grey.getvalue()) == FrameSize(30, 40, 1, 1)


def test_the_walk_counts_every_scan() -> None:
    """A decoder passes over the whole image for each scan, however few bytes it holds."""
    progressive = _jpeg(progressive=True)
    last = progressive[progressive.rindex(b"\xff\xda") : -2]
    assert measured(progressive[:-2] + last * 500 + b"\xff\xd9").scans == 510


def test_the_walk_reads_jpeg_ls_and_jpeg_2000() -> None:
    ds, frame = _first_frame("SC_rgb_jls_lossy_line.dcm")
    assert measured(frame) == FrameSize(ds.Rows, ds.Columns, 3, 1)
    assert measured(_j2k()) == FrameSize(48, 64, 1, 1)


def test_the_walk_measures_nothing_in_data_without_a_frame_header() -> None:
    assert measured(b"\x01\x00\x00\x00" + bytes(60)) is None  # an RLE frame: a segment count


@pytest.mark.parametrize(
    "broken",
    [
        b"\xff\xd8\xff\xda\x00\x08" + bytes(6),  # a scan before any frame header
        b"\xff\xd8\xff\xdb\x00\x43",  # ends inside a table
        b"\xff\xd8\xff\xc0\x00\x11\x08\x00",  # a frame header cut short
        b"\xff\xd8\x00\x00",  # no marker where one must be
    ],
)
def test_a_stream_broken_before_its_frame_header_is_refused(broken: bytes) -> None:
    with pytest.raises(Refused) as exc:
        measured(broken)
    assert exc.value.code == "corrupt-jpeg"


def test_a_stray_restart_marker_outside_a_scan_is_refused() -> None:
    """libjpeg passes over an RST or TEM outside a scan and decodes on: one such marker could hide
    any number of scans behind it from a count that stopped there. The walk refuses it."""
    progressive = _jpeg(progressive=True)
    last = progressive[progressive.rindex(b"\xff\xda") : -2]
    first_scan = progressive.index(b"\xff\xda")
    hidden = progressive[:first_scan] + b"\xff\xd0" + progressive[first_scan:-2] + last * 500 + b"\xff\xd9"
    with pytest.raises(Refused, match="outside entropy-coded data"):
        measured(hidden)
