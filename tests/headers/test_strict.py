"""Strict reading and the last gate: a lying instance is refused with a code, never trusted.

Each hostile instance is built as bytes the way a damaged or hostile sender produces it, and
goes through ``batch.deid_file`` (what ``dicom-anon deid`` runs per file): the outcome must be a
refusal with the named code and no file written, and the planted name must be nowhere on disk.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from factories import camera_photo, item, pixel_module, to_bytes, vl_photo
from fuzz_corpus import (
    MARKER,
    elements,
    insert_element,
    jpeg_with_metadata,
    nested_sequences,
    set_length,
    with_transfer_syntax,
)
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit

from dicom_anon.batch import deid_file
from dicom_anon.dicomio import read_instance
from dicom_anon.headers import strict
from dicom_anon.headers.engine import Profile, deidentify
from dicom_anon.headers.errors import Refused
from dicom_anon.headers.gate import GateFailed, release
from dicom_anon.headers.options import Option
from dicom_anon.headers.pseudonyms import SiteKey

NAME = "ZQXPHI^SWALLOWED"


def _photo(**attrs: object) -> Dataset:
    return camera_photo(BurnedInAnnotation="NO", **attrs)


def _element(data: bytes, tag: int):
    return next(e for e in elements(data) if e.tag == tag)


def _outcome(tmp_path: Path, data: bytes, key: SiteKey):
    source = tmp_path / "in.dcm"
    source.write_bytes(data)
    outcome = deid_file(source, key, Profile(), tmp_path / "out")
    written = list((tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else []
    for path in written:
        assert MARKER not in path.read_bytes()
    return outcome, written


def _refused(tmp_path: Path, data: bytes, key: SiteKey) -> str:
    outcome, written = _outcome(tmp_path, data, key)
    assert outcome.refused is not None, "accepted"
    assert not written
    assert outcome.refused.reason and "\n" not in outcome.refused.reason
    return outcome.refused.code


def test_a_clean_photo_is_still_written(tmp_path: Path, site_key: SiteKey) -> None:
    outcome, written = _outcome(tmp_path, to_bytes(_photo(ReferringPhysicianName=NAME)), site_key)
    assert outcome.ok and len(written) == 1


# --- case 1 of the issue: a kept element swallows the ones after it ----------------------


def test_code_string_swallowing_the_referring_physician_is_refused(tmp_path: Path, site_key: SiteKey) -> None:
    data = to_bytes(_photo(ReferringPhysicianName=NAME))
    modality, study_uid = _element(data, 0x00080060), _element(data, 0x0020000D)
    lying = set_length(data, modality, study_uid.start - modality.value_at)
    assert _refused(tmp_path, lying, site_key) == "bad-value"


def test_rows_swallowing_what_follows_is_refused(tmp_path: Path, site_key: SiteKey) -> None:
    ds = _photo()
    ds.add_new(0x00291010, "LO", f"{NAME} CSA")
    data = to_bytes(ds)
    rows, pixels = _element(data, 0x00280010), _element(data, 0x00291010)
    lying = set_length(data, rows, pixels.start - rows.value_at)
    assert _refused(tmp_path, lying, site_key) == "bad-multiplicity"


def test_native_pixel_data_swallowing_trailing_elements_is_refused(tmp_path: Path, site_key: SiteKey) -> None:
    ds = _photo()
    ds.add_new(0x7FE10010, "LO", "TRAILER")
    ds.add_new(0x7FE11010, "LT", f"{NAME} trailing private text")
    data = to_bytes(ds)
    pixels = _element(data, 0x7FE00010)
    lying = set_length(data, pixels, len(data) - pixels.value_at)
    assert _refused(tmp_path, lying, site_key) == "pixel-data-mismatch"


@pytest.mark.parametrize("transfer_syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_lookup_table_swallowing_private_text_is_refused(
    tmp_path: Path, site_key: SiteKey, transfer_syntax: str
) -> None:
    """A binary attribute that may hold any number of values shows no wrong VR or multiplicity
    when it swallows the elements after it: their headers inside its value give it away."""
    ds = _photo()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.add_new(0x00281201, "OW", bytes(range(16)))  # Red Palette Color Lookup Table Data, kept
    ds.add_new(0x00291010, "LO", f"{NAME} private text")
    ds.add_new(0x00291011, "LT", f"{NAME} more private text")
    data = to_bytes(ds)
    lut = data.index(struct.pack("<HH", 0x0028, 0x1201))
    pixels = data.index(struct.pack("<HH", 0x7FE0, 0x0010))
    at, size = (lut + 8, 4) if transfer_syntax == ExplicitVRLittleEndian else (lut + 4, 4)
    lying = data[:at] + (pixels - at - size).to_bytes(size, "little") + data[at + size :]
    assert _refused(tmp_path, lying, site_key) == "bad-length"


# --- case 2: a two-valued UID -------------------------------------------------------------


def test_two_valued_sop_instance_uid_is_refused(tmp_path: Path, site_key: SiteKey) -> None:
    data = to_bytes(_photo(SOPInstanceUID="1.2.3.4\\1.2.3.5"))
    assert _refused(tmp_path, data, site_key) == "bad-multiplicity"


def test_multi_valued_transfer_syntax_is_refused(tmp_path: Path, site_key: SiteKey) -> None:
    data = with_transfer_syntax(to_bytes(_photo()), f"{ExplicitVRLittleEndian}\\{ImplicitVRLittleEndian}")
    assert _refused(tmp_path, data, site_key) == "bad-multiplicity"


# --- nesting, structure, VRs, text ------------------------------------------------------------


@pytest.mark.parametrize("depth", [17, 100, 500])
def test_deep_nesting_is_refused(tmp_path: Path, site_key: SiteKey, depth: int) -> None:
    data = insert_element(to_bytes(_photo()), 0x0040A730, nested_sequences(depth))
    assert _refused(tmp_path, data, site_key) == "too-deep"


def _waveform_photo() -> bytes:
    """A photo whose Waveform Sequence (removed with all it holds) carries a channel's code meaning."""
    source = item(CodeValue="1", CodingSchemeDesignator="DCM", CodeMeaning=f"{NAME} channel source")
    return to_bytes(_photo(WaveformSequence=Sequence([item(ChannelSourceSequence=Sequence([source]))])))


def test_a_sequence_cut_short_before_its_item_ends_is_refused(tmp_path: Path, site_key: SiteKey) -> None:
    # Found by benchmarks/fuzz_deid.py (seed 20261206): with the Waveform Sequence's length cut to
    # its item's header, pydicom ended the item there and read the Channel Source Sequence as a
    # top-level element, which the profile keeps, Code Meaning and all.
    data = _waveform_photo()
    waveform = _element(data, 0x54000100)
    lying = set_length(data, waveform, 8)
    assert _refused(tmp_path, lying, site_key) == "bad-structure"


def test_a_sequence_whose_last_item_runs_past_it_is_refused(tmp_path: Path, site_key: SiteKey) -> None:
    data = _waveform_photo()
    waveform = _element(data, 0x54000100)
    lying = set_length(data, waveform, waveform.length - 4)
    assert _refused(tmp_path, lying, site_key) == "bad-structure"


def _private_before_waveform(value: bytes, vr: str = "LO") -> bytes:
    """``_waveform_photo`` with a private element just before its Waveform Sequence."""
    source = item(CodeValue="1", CodingSchemeDesignator="DCM", CodeMeaning=f"{NAME} channel source")
    ds = _photo(WaveformSequence=Sequence([item(ChannelSourceSequence=Sequence([source]))]))
    ds.private_block(0x0029, "ACME 1.0", create=True).add_new(0x10, vr, value)
    return to_bytes(ds)


def test_a_private_value_that_swallowed_a_sequence_cut_short_is_refused(
    tmp_path: Path, site_key: SiteKey
) -> None:
    # Found by benchmarks/fuzz_deid.py (seed 777, 30,000 cases): the Waveform Sequence cut to its
    # item's header, then swallowed whole by a private text element too long; its item's Channel
    # Source Sequence was read at the top level, where the profile keeps it, Code Meaning and all.
    data = _private_before_waveform("ACME text")
    waveform = _element(data, 0x54000100)
    data = set_length(data, waveform, 8)
    private = _element(data, 0x00291010)
    lying = set_length(data, private, waveform.value_at + 8 - private.value_at)
    assert _refused(tmp_path, lying, site_key) == "bad-length"
    # Seed 8080: the same bytes under an implicit VR transfer syntax, which pydicom reads as the
    # explicit VR it finds; the swallowed header is looked for in both encodings.
    assert _refused(tmp_path, with_transfer_syntax(lying, ImplicitVRLittleEndian), site_key) == "bad-length"


def test_a_lookup_table_that_swallowed_a_sequence_and_its_item_header_is_refused(
    tmp_path: Path, site_key: SiteKey
) -> None:
    """The same with a public binary value the profile keeps and no VR or multiplicity rule can
    catch (a palette's lookup table data, OW 1-n): the whole sequence's header and its item's."""
    source = item(CodeValue="1", CodingSchemeDesignator="DCM", CodeMeaning=f"{NAME} channel source")
    ds = _photo(WaveformSequence=Sequence([item(ChannelSourceSequence=Sequence([source]))]))
    ds.add_new(0x00281201, "OW", bytes(range(16)))
    data = to_bytes(ds)
    lut, waveform = _element(data, 0x00281201), _element(data, 0x54000100)
    lying = set_length(data, lut, waveform.value_at + 8 - lut.value_at)
    assert _refused(tmp_path, lying, site_key) == "bad-length"


def test_in_implicit_vr_a_private_sequence_and_its_item_header_swallowed_are_refused(
    tmp_path: Path, site_key: SiteKey
) -> None:
    """Implicit VR names no SQ, and a private sequence is in no dictionary: any private data
    element's header counts before an item. Here the item's Requested Procedure Code Sequence came
    to the top level in tag order, Code Meaning and all."""
    ds = _photo()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    block = ds.private_block(0x0029, "ACME 1.0", create=True)
    block.add_new(0x10, "OB", b"ACME data")
    code = item(CodeValue="1", CodingSchemeDesignator="DCM", CodeMeaning=f"{NAME} code")
    block.add_new(0x20, "SQ", Sequence([item(RequestedProcedureCodeSequence=Sequence([code]))]))
    data = to_bytes(ds)
    value = data.index(struct.pack("<HH", 0x0029, 0x1010)) + 8
    sequence = data.index(struct.pack("<HH", 0x0029, 0x1020))
    lying = data[: value - 4] + struct.pack("<L", sequence + 16 - value) + data[value:]
    assert _refused(tmp_path, lying, site_key) == "bad-length"


def test_whole_items_inside_a_private_value_are_not_taken_for_swallowed_ones(
    tmp_path: Path, site_key: SiteKey
) -> None:
    """A vendor's embedded data set holds a sequence of whole items: the private value goes, the
    photo leaves."""
    code = struct.pack("<HH", 0x0008, 0x0100) + b"SH\x02\x001 "
    items = b"".join(struct.pack("<HHL", 0xFFFE, 0xE000, len(code)) + code for _ in range(2))
    embedded = struct.pack("<HH", 0x0008, 0x2218) + b"SQ\x00\x00" + struct.pack("<L", len(items)) + items
    outcome, written = _outcome(tmp_path, _private_before_waveform(embedded, "OB"), site_key)
    assert outcome.refused is None and len(written) == 1


def test_elements_out_of_order_are_refused(tmp_path: Path, site_key: SiteKey) -> None:
    data = to_bytes(_photo(ReferringPhysicianName=NAME))
    physician = _element(data, 0x00080090)
    whole = data[physician.start : physician.value_at + physician.length]
    # The element taken out and put back after Pixel Data: each element read whole, in the wrong place.
    moved = data.replace(whole, b"") + whole
    assert _refused(tmp_path, moved, site_key) == "bad-structure"


def test_command_element_inside_the_dataset_is_refused(tmp_path: Path, site_key: SiteKey) -> None:
    data = to_bytes(_photo())
    first = _element(data, 0x00080016)
    command = struct.pack("<HH", 0x0000, 0x0100) + b"US" + struct.pack("<HH", 2, 1)
    assert (
        _refused(tmp_path, data[: first.start] + command + data[first.start :], site_key) == "bad-structure"
    )


def test_wrong_vr_is_refused(tmp_path: Path, site_key: SiteKey) -> None:
    data = bytearray(to_bytes(_photo()))
    modality = _element(bytes(data), 0x00080060)
    data[modality.start + 4 : modality.start + 6] = b"DA"
    assert _refused(tmp_path, bytes(data), site_key) == "wrong-vr"


def test_control_characters_in_text_are_refused(tmp_path: Path, site_key: SiteKey) -> None:
    data = to_bytes(_photo(StudyID="AB\x00\x10CD"))
    assert _refused(tmp_path, data, site_key) == "bad-value"


def test_unknown_character_set_is_refused(tmp_path: Path, site_key: SiteKey) -> None:
    data = to_bytes(vl_photo(charset="ISO_IR 999", BurnedInAnnotation="NO", **pixel_module(2, 2, bytes(12))))
    assert _refused(tmp_path, data, site_key) == "bad-value"


# --- JPEG metadata that the headers-only path never stripped --------------------------------


def _jpeg_photo(transfer_syntax: str = JPEGBaseline8Bit) -> Dataset:
    ds = _photo(Rows=16, Columns=16, PhotometricInterpretation="YBR_FULL_422", LossyImageCompression="01")
    ds.PixelData = encapsulate([jpeg_with_metadata(b"ZQXPHI JPEG COMMENT")])
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    return ds


def test_encapsulated_jpeg_under_a_native_syntax_is_refused(tmp_path: Path, site_key: SiteKey) -> None:
    data = with_transfer_syntax(to_bytes(_jpeg_photo()), ExplicitVRLittleEndian)
    assert _refused(tmp_path, data, site_key) == "encapsulation-mismatch"


def test_jpeg_where_the_basic_offset_table_belongs_is_refused(tmp_path: Path, site_key: SiteKey) -> None:
    data = to_bytes(_jpeg_photo())
    pixels = _element(data, 0x7FE00010)
    frame = jpeg_with_metadata(b"ZQXPHI COM IN THE OFFSET TABLE")
    frame += b"\x00" * (len(frame) % 2)
    items = b"\xfe\xff\x00\xe0" + struct.pack("<I", len(frame)) + frame + b"\xfe\xff\xdd\xe0" + bytes(4)
    assert _refused(tmp_path, data[: pixels.value_at] + items, site_key) == "bad-encapsulation"


def test_a_fragment_length_that_lies_is_refused(tmp_path: Path, site_key: SiteKey) -> None:
    data = bytearray(to_bytes(_jpeg_photo()))
    pixels = _element(bytes(data), 0x7FE00010)
    fragment = pixels.value_at + 8  # after an empty Basic Offset Table
    length = int.from_bytes(data[fragment + 4 : fragment + 8], "little")
    data[fragment + 4 : fragment + 8] = struct.pack("<I", length - 2)
    assert _refused(tmp_path, bytes(data), site_key) == "bad-encapsulation"


def test_jpeg_photo_still_passes_and_loses_its_comment(tmp_path: Path, site_key: SiteKey) -> None:
    outcome, written = _outcome(tmp_path, to_bytes(_jpeg_photo()), site_key)
    assert outcome.ok and len(written) == 1


def test_icc_profile_that_lies_about_its_size_is_refused(tmp_path: Path, site_key: SiteKey) -> None:
    profile = struct.pack(">I", 4096) + bytes(124) + b"ZQXPHI swallowed"
    data = to_bytes(_photo(ICCProfile=profile))
    assert _refused(tmp_path, data, site_key) == "bad-length"


# --- free text the profile kept ---------------------------------------------------------------


def _deid_bytes(ds: Dataset, key: SiteKey) -> bytes:
    result = deidentify(read_instance(to_bytes(ds)), key, Profile())
    return release(result, Profile())


def test_referenced_file_id_is_removed(site_key: SiteKey) -> None:
    out = _deid_bytes(_photo(ReferencedFileID=["PATIENTS", "ZQXPHI", "IMG0001"]), site_key)
    assert MARKER not in out


def test_code_meaning_inside_a_waveform_channel_source_is_removed(site_key: SiteKey) -> None:
    source = item(CodeValue="5.6.3-9-1", CodingSchemeDesignator="SCPECG", CodeMeaning="Lead I ZQXPHI")
    ds = _photo(WaveformSequence=Sequence([item(ChannelSourceSequence=Sequence([source]))]))
    assert MARKER not in _deid_bytes(ds, site_key)


def test_code_string_outside_its_terms_is_cleaned(site_key: SiteKey) -> None:
    ds = _photo(ImageType=["ORIGINAL", "PRIMARY", "ZQXPHI"], ConversionType="ZQXPHI", Modality="XC")
    out = read_instance(_deid_bytes(ds, site_key))
    assert MARKER not in to_bytes(out)
    assert list(out.ImageType) == ["ORIGINAL", "PRIMARY", "CLEANED"]
    assert out.ConversionType == "CLEANED"
    assert out.Modality == "XC"  # a term: kept


# --- the last gate -----------------------------------------------------------------------------


def _result(key: SiteKey, options: frozenset[Option] = frozenset()):
    return deidentify(read_instance(to_bytes(_photo())), key, Profile(options=options))


def test_gate_passes_a_clean_result_and_its_bytes_read_back(site_key: SiteKey) -> None:
    result = _result(site_key)
    data = release(result, Profile())
    assert read_instance(data).SOPInstanceUID == result.dataset.SOPInstanceUID


@pytest.mark.parametrize(
    ("tamper", "code"),
    [
        (lambda ds: setattr(ds, "PixelSpacingCalibrationDescription", "ZQXPHI bug"), "gate-uncleaned-text"),
        (lambda ds: setattr(ds, "OtherPatientNames", "ZQXPHI"), "gate-removed-attribute"),
        (lambda ds: ds.add_new(0x00091010, "LO", "ZQXPHI"), "gate-private"),
        (lambda ds: ds.add_new(0x60000022, "LO", "ZQXPHI"), "gate-removed-attribute"),
        (lambda ds: ds.add_new(0x00431234, "LO", "ZQXPHI"), "gate-private"),
        (lambda ds: setattr(ds, "PatientIdentityRemoved", "NO"), "gate-unmarked"),
        (lambda ds: setattr(ds, "SOPInstanceUID", "1.2.3\\4.5.6"), "gate-bad-multiplicity"),
        (lambda ds: setattr(ds, "Modality", "ZQXPHI"), "gate-uncleaned-text"),
    ],
    ids=[
        "prose",
        "table-x",
        "private",
        "overlay",
        "private-no-creator",
        "unmarked",
        "two-uids",
        "code-string",
    ],
)
def test_gate_refuses_what_the_engine_should_have_removed(site_key: SiteKey, tamper, code: str) -> None:
    result = _result(site_key)
    tamper(result.dataset)
    with pytest.raises(GateFailed) as info:
        release(result, Profile())
    assert info.value.code == code
    assert "ZQXPHI" not in info.value.reason


def test_gate_keeps_what_retain_safe_private_allows(site_key: SiteKey) -> None:
    ds = _photo()
    block = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
    block.add_new(0x0C, "IS", "1000")
    options = frozenset({Option.RETAIN_SAFE_PRIVATE})
    result = deidentify(read_instance(to_bytes(ds)), site_key, Profile(options=options))
    assert b"SIEMENS MR HEADER" in release(result, Profile(options=options))


def test_gate_refuses_an_unwritable_dataset(site_key: SiteKey) -> None:
    result = _result(site_key)
    result.dataset.add_new(0x00000100, "US", 1)  # a command element: pydicom will not write it
    with pytest.raises(Refused) as info:
        release(result, Profile())
    assert info.value.code.startswith("gate-")


def test_native_pixel_data_is_unchanged_through_the_gate(site_key: SiteKey) -> None:
    assert read_instance(release(_result(site_key), Profile())).PixelData == bytes(range(48))


@pytest.mark.parametrize("window", [1, 3, 7])
def test_swallowed_headers_are_found_across_the_windows_a_long_value_is_read_in(monkeypatch, window):
    """A binary value is searched in windows (whole, 100 MB took 1.75 GB of arrays): a header
    that starts at a window's last word, or straddles two, is found as in one pass."""
    header = struct.pack("<HH", 0x0010, 0x0010) + b"PN" + struct.pack("<H", 8) + b"Doe^Jane"
    for offset in range(0, 40, 2):
        value = bytes(offset) + header + bytes(40 - offset)
        monkeypatch.setattr(strict, "_WINDOW_WORDS", window)
        assert strict._holds_elements(value, explicit=True), (window, offset)
        assert not strict._holds_elements(bytes(len(value)), explicit=True)
