"""The walk before pydicom parses: elements counted as pydicom would build them, inflation bounded."""

from __future__ import annotations

import struct

import pytest
from factories import camera_photo, item, to_bytes, vl_photo
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from dicom_anon.headers.errors import Refused
from dicom_anon.headers.precheck import check_before_parsing

LIMIT = 512 * 2**20


def nested(transfer_syntax: str) -> Dataset:
    """A photo whose header nests two sequences deep, items of both defined and undefined length."""
    ds = vl_photo(transfer_syntax=transfer_syntax, PatientName="Doe^Jane")
    codes = [item(CodeValue=f"C{i}", CodingSchemeDesignator="DCM", CodeMeaning="x") for i in range(5)]
    ds.ReferencedStudySequence = Sequence(
        [item(ReferencedSOPClassUID="1.2.3", ReferencedSOPInstanceUID=f"1.2.3.{i}") for i in range(4)]
    )
    ds.AnatomicRegionSequence = Sequence([item(CodeValue="T-D1200", AnatomicRegionModifierSequence=codes)])
    ds.AnatomicRegionSequence.is_undefined_length = True
    return ds


def built(ds: Dataset) -> int:
    """What pydicom builds: every element at every depth, and every sequence item."""
    count = 0
    for elem in ds.iterall():
        count += 1
        if elem.VR == "SQ":
            count += len(elem.value)
    return count


@pytest.mark.parametrize(
    "syntax",
    [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian],
)
def test_the_walk_counts_what_pydicom_builds(syntax: str) -> None:
    ds = nested(syntax)
    data = to_bytes(ds)
    n = built(ds)
    check_before_parsing(data, LIMIT, max_elements=n)
    with pytest.raises(Refused) as exc:
        check_before_parsing(data, LIMIT, max_elements=n - 1)
    assert exc.value.code == "too-many-elements"


def test_a_sequence_inside_an_undefined_length_un_is_walked_in_implicit_vr() -> None:
    """pydicom reads an undefined-length UN as a sequence of implicit VR items, so the walk does."""
    ds = nested(ExplicitVRLittleEndian)
    data = to_bytes(ds)
    inner = (
        struct.pack("<HHL", 0x0010, 0x0010, 8)
        + b"Doe^Jane"
        + struct.pack("<HHL", 0x0010, 0x0020, 4)
        + b"MRN1"
    )
    un = (
        struct.pack("<HH", 0x0008, 0x1111)
        + b"UN\0\0"
        + struct.pack("<L", 0xFFFFFFFF)
        + struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)
        + inner
        + struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
        + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    )
    at = data.index(struct.pack("<HH", 0x0008, 0x0016))  # before SOP Class UID: still in tag order
    data = data[:at] + un + data[at:]
    n = built(ds) + 4  # the UN element, its item, the item's two elements
    check_before_parsing(data, LIMIT, max_elements=n)
    with pytest.raises(Refused, match="too-many-elements"):
        check_before_parsing(data, LIMIT, max_elements=n - 1)


def test_half_a_million_tiny_elements_are_refused_unread() -> None:
    """500,000 two-byte private elements (5 MB) took 30 s and 280 MB to read and refuse."""
    data = to_bytes(camera_photo())
    tiny = b"".join(
        struct.pack("<HH", group, 0x0010)
        + b"LO\x02\x00X "
        + b"".join(struct.pack("<HH", group, e) + b"SH\x02\x00ab" for e in range(0x1000, 0x10FA))
        for group in range(0x0009, 0x0009 + 2 * 2000, 2)
    )
    at = data.index(struct.pack("<HH", 0x0010, 0x0010))  # the private groups go before Patient's Name
    with pytest.raises(Refused) as exc:
        check_before_parsing(data[:at] + tiny + data[at:], LIMIT)
    assert exc.value.code == "too-many-elements"
    assert exc.value.reason.startswith("more than 100000 elements, items, fragments and escape sequences")


def test_real_files_pass() -> None:
    """A JPEG photo, a plan of nested sequences, a deflated image (pydicom's own test files)."""
    for name in ("SC_rgb_jpeg_dcmtk.dcm", "rtplan.dcm", "image_dfl.dcm"):
        with open(get_testdata_file(name, download=False), "rb") as f:
            check_before_parsing(f.read(), LIMIT)


def test_damaged_data_is_left_to_strict_reading() -> None:
    data = to_bytes(nested(ExplicitVRLittleEndian))
    for cut in (200, 300, len(data) // 2, len(data) - 3):
        check_before_parsing(data[:cut], LIMIT)  # no refusal and no exception: strict reading says why
    check_before_parsing(b"not dicom at all", LIMIT)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_escape_sequences_in_text_count_as_pieces(syntax: str) -> None:
    """pydicom decodes text one escape sequence at a time: 0.35 s a MB of text that switches
    character sets every few bytes."""
    ds = nested(syntax)
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    ds.PatientName = "Yamada^Tarou=\033$B;3ED\033(B^\033$BB@O:\033(B"  # four escape sequences
    n = built(ds) + 4
    data = to_bytes(ds)
    check_before_parsing(data, LIMIT, max_elements=n)
    with pytest.raises(Refused, match="too-many-elements"):
        check_before_parsing(data, LIMIT, max_elements=n - 1)
