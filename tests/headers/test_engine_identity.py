"""Identity across instances and runs (UIDs, pseudonyms, date shift), refusals, charsets, no mutation."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pydicom
import pytest
from factories import JANE_DOE, VL_PHOTO, item, roundtrip, to_bytes, vl_photo
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import MPEG2MPML

from dicom_anon.headers.engine import Profile, deidentify
from dicom_anon.headers.errors import Refused
from dicom_anon.headers.options import Option
from dicom_anon.headers.pseudonyms import SiteKey

STUDY = "1.2.826.0.1.3680043.2.1125.9.1"
SERIES = "1.2.826.0.1.3680043.2.1125.9.2"


def photo(sop_uid: str = "1.2.826.0.1.3680043.2.1125.9.10", **attrs) -> Dataset:
    return vl_photo(
        sop_uid=sop_uid,
        **{
            **JANE_DOE,
            "StudyInstanceUID": STUDY,
            "SeriesInstanceUID": SERIES,
            "FrameOfReferenceUID": "1.2.826.0.1.3680043.2.1125.9.3",
            "AccessionNumber": "ACC2024051700731",
            "StudyID": "DERM-77031",
            **attrs,
        },
    )


def ref(uid: str) -> Sequence:
    return Sequence([item(ReferencedSOPClassUID=VL_PHOTO, ReferencedSOPInstanceUID=uid)])


DATES = Profile(options=frozenset({Option.RETAIN_MODIFIED_DATES}))


# --- UIDs across a study -----------------------------------------------------------------------


def test_references_between_instances_of_a_study_stay_consistent(site_key):
    first_uid, second_uid = "1.2.826.0.1.3680043.2.1125.9.11", "1.2.826.0.1.3680043.2.1125.9.12"
    first = deidentify(photo(first_uid), site_key, Profile()).dataset
    second_ds = photo(second_uid, ReferencedImageSequence=ref(first_uid), SourceImageSequence=ref(first_uid))
    second = deidentify(second_ds, site_key, Profile()).dataset
    assert first.StudyInstanceUID == second.StudyInstanceUID != STUDY
    assert first.SeriesInstanceUID == second.SeriesInstanceUID != SERIES
    assert first.FrameOfReferenceUID == second.FrameOfReferenceUID
    assert first.SOPInstanceUID != second.SOPInstanceUID
    assert second.ReferencedImageSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert second.SourceImageSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID
    for out in (first, second):
        assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID


def test_shared_generated_pair_references_each_other_after_deid(testdata, site_key):
    folder = testdata / "dicom" / "generated"
    manifest = json.loads((folder / "vlphoto_face_noburn_phi_manifest.json").read_text())
    explicit = deidentify(
        pydicom.dcmread(folder / "vlphoto_face_noburn_explicit_le.dcm"), site_key, Profile()
    )
    jpeg = deidentify(pydicom.dcmread(folder / "vlphoto_face_noburn_jpeg_baseline.dcm"), site_key, Profile())
    assert jpeg.dataset.ReferencedImageSequence[0].ReferencedSOPInstanceUID == explicit.dataset.SOPInstanceUID
    assert (
        explicit.dataset.StudyInstanceUID
        == jpeg.dataset.StudyInstanceUID
        == site_key.uid(manifest["uids"]["study"])
    )
    assert explicit.patient_pseudonym == jpeg.patient_pseudonym


# --- pseudonyms and date shift across runs -------------------------------------------------------


def test_same_patient_in_separate_runs_gets_the_same_pseudonyms_and_shift(site_key):
    secret = site_key.secret
    first = deidentify(photo(), SiteKey(bytes(secret)), DATES)
    other_study = photo("1.2.826.0.1.3680043.2.1125.9.99", StudyInstanceUID="1.2.3.777", StudyDate="20250101")
    second = deidentify(other_study, SiteKey(bytes(secret)), DATES)
    assert first.dataset.PatientID == second.dataset.PatientID == first.patient_pseudonym
    assert first.dataset.PatientName == second.dataset.PatientName
    assert first.date_shift_days == second.date_shift_days is not None
    assert first.patient_hash == second.patient_hash
    assert first.dataset.AccessionNumber == second.dataset.AccessionNumber != "ACC2024051700731"
    assert first.dataset.StudyInstanceUID != second.dataset.StudyInstanceUID


def test_a_different_secret_gives_different_pseudonyms_shift_and_uids(site_key, other_site_key):
    one, two = deidentify(photo(), site_key, DATES), deidentify(photo(), other_site_key, DATES)
    assert one.dataset.PatientID != two.dataset.PatientID
    assert one.dataset.PatientName != two.dataset.PatientName
    assert one.dataset.AccessionNumber != two.dataset.AccessionNumber
    assert one.dataset.StudyID != two.dataset.StudyID
    assert one.dataset.SOPInstanceUID != two.dataset.SOPInstanceUID
    assert one.patient_hash != two.patient_hash
    assert one.date_shift_days != two.date_shift_days


def test_different_patients_get_different_pseudonyms(site_key):
    one = deidentify(photo(), site_key, Profile())
    two = deidentify(photo(PatientID="MRN00000001"), site_key, Profile())
    assert one.patient_pseudonym != two.patient_pseudonym


def test_accession_and_study_id_are_pseudonyms_not_emptied(site_key):
    out = deidentify(photo(), site_key, Profile()).dataset
    assert out.AccessionNumber == site_key.accession_number("ACC2024051700731")
    assert out.StudyID == site_key.study_id("DERM-77031")
    empty = deidentify(photo(AccessionNumber=""), site_key, Profile()).dataset
    assert empty.AccessionNumber == ""


def test_without_a_patient_id_name_and_birth_date_identify_the_patient(site_key):
    a = deidentify(photo(PatientID=""), site_key, Profile())
    b = deidentify(photo("1.2.3.5", PatientID=""), site_key, Profile())
    c = deidentify(photo(PatientID="", PatientBirthDate="19800101"), site_key, Profile())
    assert a.patient_pseudonym == b.patient_pseudonym != c.patient_pseudonym
    assert a.dataset.PatientID == a.patient_pseudonym


def test_a_patient_without_any_identity_still_gets_pseudonyms(site_key):
    ds = photo()
    del ds.PatientID, ds.PatientName
    out = deidentify(ds, site_key, Profile()).dataset
    assert out.PatientID.startswith("ANON") and str(out.PatientName).startswith("ANON^")


# --- the input is never touched ------------------------------------------------------------------


def test_input_dataset_is_not_mutated(site_key):
    ds = photo(OperatorsName="Ratched^Mildred", ReferencedImageSequence=ref("1.2.3.4"))
    ds.add_new(0x00330010, "LO", "ACME")
    ds.add_new(0x00331001, "LO", "Doe Jane")
    before = to_bytes(ds)
    deidentify(ds, site_key, Profile(options=frozenset({Option.RETAIN_MODIFIED_DATES})))
    assert to_bytes(ds) == before


def test_input_file_dataset_is_not_mutated(testdata, site_key):
    ds = pydicom.dcmread(testdata / "dicom" / "generated" / "vlphoto_face_noburn_jpeg_baseline.dcm")
    before = to_bytes(ds)
    deidentify(ds, site_key, Profile())
    assert to_bytes(ds) == before


# --- refusals ----------------------------------------------------------------------------------------


def refused(ds: Dataset, key: SiteKey) -> str:
    with pytest.raises(Refused) as info:
        deidentify(ds, key, Profile())
    return info.value.code


def test_missing_sop_class_is_refused(site_key):
    ds = photo()
    del ds.SOPClassUID
    assert refused(ds, site_key) == "missing-sop-class"


def test_missing_sop_instance_uid_is_refused(site_key):
    ds = photo()
    del ds.SOPInstanceUID
    assert refused(ds, site_key) == "missing-sop-instance-uid"


@pytest.mark.parametrize(
    "sop_class",
    [
        "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF
        "1.2.840.10008.5.1.4.1.1.104.2",  # Encapsulated CDA
        "1.2.840.10008.5.1.4.1.1.104.3",  # Encapsulated STL
        "1.2.840.10008.5.1.4.1.1.66",  # Raw Data
        "1.2.840.10008.5.1.4.1.1.11.1",  # Grayscale Softcopy Presentation State
        "1.2.840.113619.4.27",  # a vendor's private SOP class
        "1.2.3.4.5",  # not a SOP class at all
    ],
)
def test_unsupported_sop_classes_are_refused(site_key, sop_class):
    assert refused(photo(SOPClassUID=sop_class), site_key) == "unsupported-sop-class"


def test_key_object_selection_needs_clean_structured_content(site_key):
    ko = photo(SOPClassUID="1.2.840.10008.5.1.4.1.1.88.59")
    assert refused(ko, site_key) == "structured-content"
    deidentify(ko, site_key, Profile(options=frozenset({Option.CLEAN_STRUCTURED_CONTENT})))


def test_burned_in_annotation_yes_is_refused(site_key):
    assert refused(photo(BurnedInAnnotation="YES"), site_key) == "burned-in-annotation"


def test_burned_in_shared_files_are_refused(testdata, site_key):
    for path in sorted((testdata / "dicom" / "generated").glob("vlphoto_*_explicit_le.dcm")):
        if "noburn" not in path.name:
            assert refused(pydicom.dcmread(path), site_key) == "burned-in-annotation"


def test_video_transfer_syntax_is_refused(site_key):
    ds = photo(PixelData=b"\x00\x00\x01\xb3" * 4)
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    assert refused(ds, site_key) == "unsupported-transfer-syntax"


# --- character sets ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("charset", "encoding"), [("ISO_IR 192", "utf-8"), ("ISO_IR 100", "latin-1")])
def test_non_ascii_names_are_gone_and_the_output_decodes(site_key, charset, encoding, tmp_path: Path):
    ds = photo(
        SpecificCharacterSet=charset,
        PatientName="Doe-Müller^Jane",
        OtherPatientNames=["Müller^Jane", "Doe-Müller^J"],
        OperatorsName="Çelik^Zoë",
    )
    reread = roundtrip(ds)
    assert reread.PatientName.family_name == "Doe-Müller"
    assert [str(n) for n in reread.OtherPatientNames] == ["Müller^Jane", "Doe-Müller^J"]
    data = to_bytes(deidentify(reread, site_key, Profile()).dataset)
    for text in ("Müller", "Çelik", "Zoë"):
        assert text.encode(encoding) not in data
    out = pydicom.dcmread(io.BytesIO(data))
    assert out.SpecificCharacterSet == charset
    assert str(out.PatientName) == site_key.patient_name("MRN00482913")
    assert "OtherPatientNames" not in out
    assert out.OperatorsName == "ANONYMIZED"


def test_the_same_name_in_two_character_sets_gives_one_pseudonym(site_key):
    def by_name(charset: str) -> str:
        ds = photo(SpecificCharacterSet=charset, PatientName="Doe-Müller^Jane", PatientID="")
        return deidentify(roundtrip(ds), site_key, Profile()).patient_pseudonym

    assert by_name("ISO_IR 192") == by_name("ISO_IR 100")


def test_patient_pseudonym_is_what_deidentify_writes(site_key):
    from dicom_anon.headers import patient_pseudonym

    ds = photo()
    assert patient_pseudonym(ds, site_key) == deidentify(ds, site_key, Profile()).dataset.PatientID
