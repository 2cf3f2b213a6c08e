"""Every way an input file can be unusable gets a code and a sentence, never a traceback."""

from __future__ import annotations

from io import BytesIO

import pytest
from factories import to_bytes
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from dicom_anon.dicomio import looks_like_dicom, read_instance, write_instance
from dicom_anon.headers.errors import Refused


def make_instance(transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.PatientName = "Doe^Jane"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    return to_bytes(ds, implicit_vr=False, little_endian=True)


def refusal(data: bytes) -> str:
    with pytest.raises(Refused) as info:
        read_instance(data)
    return info.value.code


def test_reads_a_valid_instance():
    ds = read_instance(make_instance())
    assert ds.PatientName == "Doe^Jane"


def test_empty_file():
    assert refusal(b"") == "empty-file"


def test_not_dicom():
    assert refusal(b"hello, this is a text file\n" * 20) == "not-dicom"


def test_truncated_dataset():
    data = make_instance()
    assert refusal(data[: len(data) - 5]) == "corrupt-dicom"


def test_unknown_transfer_syntax():
    assert refusal(make_instance("1.2.3.4.5.6")) == "unknown-transfer-syntax"


def test_missing_sop_class():
    ds = read_instance(make_instance())
    del ds.SOPClassUID
    buf = BytesIO()
    ds.save_as(buf)
    assert refusal(buf.getvalue()) == "missing-sop-class"


def test_looks_like_dicom(tmp_path):
    dcm = tmp_path / "noext"
    dcm.write_bytes(make_instance())
    text = tmp_path / "README.md"
    text.write_text("# not dicom")
    assert looks_like_dicom(dcm)
    assert not looks_like_dicom(text)
    assert looks_like_dicom(tmp_path / "whatever.DCM")


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    data = make_instance()
    ds = read_instance(data)
    target = tmp_path / "out" / "x.dcm"
    write_instance(data, target)
    assert read_instance(target).SOPInstanceUID == ds.SOPInstanceUID
    assert [p.name for p in target.parent.iterdir()] == ["x.dcm"]


def test_truncated_pixel_data_is_refused():
    ds = read_instance(make_instance())
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 10, 100, 8, 8, 7
    ds.SamplesPerPixel, ds.PixelRepresentation, ds.PhotometricInterpretation = 1, 0, "MONOCHROME2"
    ds.PixelData = bytes(1000)
    ds["PixelData"].VR = "OB"
    with pytest.raises(Refused, match="truncated"):
        read_instance(to_bytes(ds)[:-100])


def test_truncated_inside_a_sequence_is_refused():
    ds = read_instance(make_instance())
    item = Dataset()
    item.PatientID = "MRN0001"
    item.IssuerOfPatientID = "HOSPITAL"
    ds.OtherPatientIDsSequence = [item]
    data = to_bytes(ds)
    cut = data.index(b"HOSPITAL") + 3
    with pytest.raises(Refused) as info:
        read_instance(data[:cut])
    assert info.value.code == "corrupt-dicom"


def deflated(inflated_bytes: int) -> bytes:
    """A Deflated Explicit VR Little Endian instance whose dataset inflates to about ``inflated_bytes``."""
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.add_new(0x00091010, "OB", bytes(inflated_bytes))
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return to_bytes(ds)


def test_a_deflated_instance_that_inflates_past_the_limit_is_refused_unread():
    """pydicom inflates a deflated dataset whole: 2 MB of zeros deflated took 4 GB to read."""
    bomb = deflated(3 * 2**20)
    assert len(bomb) < 2**15  # a thousand to one
    with pytest.raises(Refused) as info:
        read_instance(bomb, max_bytes=2**20)
    assert (info.value.code, info.value.reason) == (
        "too-large",
        "the deflated data set inflates to more than 1 MiB, the largest instance read",
    )
    assert read_instance(bomb, max_bytes=4 * 2**20).SOPClassUID == SecondaryCaptureImageStorage


def test_a_file_larger_than_the_limit_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "large.dcm"
    path.write_bytes(make_instance() + bytes(2**20))
    with pytest.raises(Refused, match="too-large: the instance is larger than 1 MiB"):
        read_instance(path, max_bytes=2**20)
