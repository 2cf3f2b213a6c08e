"""Each action code on real elements, recursion, private/UN elements, icons, overlays, curves, markers."""

from __future__ import annotations

import pytest
from factories import JANE_DOE, VL_PHOTO, deid, item, pixel_module, roundtrip, to_bytes, vl_photo
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicom_anon.headers.text import CLEANED_TEXT

SOP_UID = "1.2.826.0.1.3680043.2.1125.7.1"


def photo(**attrs) -> Dataset:
    """A small VL Photographic instance with the patient and study attributes filled in."""
    ds = vl_photo(
        sop_uid=SOP_UID,
        **{
            **JANE_DOE,
            "StudyInstanceUID": "1.2.826.0.1.3680043.2.1125.7.2",
            "SeriesInstanceUID": "1.2.826.0.1.3680043.2.1125.7.3",
            "PatientSex": "F",
            "StudyTime": "143012",
            "AccessionNumber": "ACC2024051700731",
            "StudyID": "DERM-77031",
            **pixel_module(2, 2, b"\x01\x02\x03\x04", photometric="MONOCHROME2"),
            **attrs,
        },
    )
    ds.file_meta.SourceApplicationEntityTitle = "DERMCAM03"
    return ds


# --- single codes -----------------------------------------------------------------------


def test_x_removes(site_key):
    out = deid(photo(PatientAddress="12 Rue des Lilas", Occupation="Teacher"), site_key).dataset
    assert "PatientAddress" not in out
    assert "Occupation" not in out


def test_z_keeps_the_element_empty(site_key):
    out = deid(photo(ReferringPhysicianName="Strangelove^Hubert"), site_key).dataset
    assert "ReferringPhysicianName" in out and not out.ReferringPhysicianName
    assert "StudyDate" in out and not out.StudyDate
    assert "PatientBirthDate" in out and not out.PatientBirthDate


@pytest.mark.parametrize(
    ("keyword", "value", "dummy"),
    [
        ("PersonName", "Ratched^Mildred", "ANONYMIZED"),  # PN
        ("ClinicalTrialSubjectID", "SUBJ-42", "ANONYMIZED"),  # LO
        ("EntityLabel", "Jane's lesion", "ANONYMIZED"),  # SH
        ("XRayDetectorID", "DET-99", "ANONYMIZED"),  # UC
        ("Date", "20240517", "19000101"),  # DA
        ("Time", "143027", "000000"),  # TM
        ("DateTime", "20240517143027", "19000101000000"),  # DT
        ("ReasonForTheAttributeModification", "CORRECT", "ANONYMIZED"),  # CS
    ],
)
def test_d_writes_a_vr_valid_dummy(site_key, keyword, value, dummy):
    out = roundtrip(deid(photo(**{keyword: value}), site_key).dataset)
    assert str(out[keyword].value) == dummy


def test_d_on_a_uid_gives_a_keyed_uid(site_key):
    out = deid(photo(AnnotationGroupUID="1.2.3.4.5"), site_key).dataset
    assert out.AnnotationGroupUID == site_key.uid("1.2.3.4.5")


def test_d_on_a_sequence_keeps_its_structure_and_replaces_every_value(site_key):
    person = item(
        PersonIdentificationCodeSequence=Sequence(
            [
                item(
                    CodeValue="EMP-7731",
                    CodingSchemeDesignator="99STELSEWHERE",
                    CodeMeaning="Ratched, Mildred",
                )
            ]
        )
    )
    # Inside a kept sequence (Referenced Image Sequence is U), so the D row is reached.
    ref = item(ReferencedSOPClassUID=VL_PHOTO, ReferencedSOPInstanceUID="1.2.3.9")
    ref.PersonIdentificationCodeSequence = person.PersonIdentificationCodeSequence
    out = deid(photo(ReferencedImageSequence=Sequence([ref])), site_key).dataset
    code = out.ReferencedImageSequence[0].PersonIdentificationCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == ("ANONYMIZED",) * 3


def test_k_keeps_under_an_option(site_key):
    from dicom_anon.headers.options import Option

    out = deid(photo(PatientWeight="61.5"), site_key, Option.RETAIN_PATIENT_CHARACTERISTICS).dataset
    assert out.PatientWeight == 61.5
    assert out.PatientSex == "F"


def test_c_cleans_prose_to_a_neutral_value(site_key):
    from dicom_anon.headers.options import Option

    ds = photo(StudyDescription="Dermatology follow-up photo of Jane Doe-Müller")
    out = deid(ds, site_key, Option.CLEAN_DESCRIPTORS).dataset
    assert out.StudyDescription == CLEANED_TEXT


def test_u_replaces_instance_uids_and_leaves_registered_ones(site_key):
    ref = item(ReferencedSOPClassUID=VL_PHOTO, ReferencedSOPInstanceUID="1.2.3.4.5.6")
    out = deid(
        photo(FrameOfReferenceUID="1.2.3.4.7", ReferencedImageSequence=Sequence([ref])), site_key
    ).dataset
    assert out.SOPInstanceUID == site_key.uid(SOP_UID)
    assert out.FrameOfReferenceUID == site_key.uid("1.2.3.4.7")
    assert out.SOPClassUID == VL_PHOTO
    assert out.ReferencedImageSequence[0].ReferencedSOPClassUID == VL_PHOTO
    assert out.ReferencedImageSequence[0].ReferencedSOPInstanceUID == site_key.uid("1.2.3.4.5.6")


def test_multi_valued_uids_are_each_replaced(site_key):
    out = deid(photo(IrradiationEventUID=["1.2.3.98", "1.2.3.97"]), site_key).dataset
    assert list(out.IrradiationEventUID) == [site_key.uid("1.2.3.98"), site_key.uid("1.2.3.97")]


# --- combined codes ---------------------------------------------------------------------


def test_x_z_on_an_element_empties_it(site_key):
    out = deid(photo(AcquisitionDate="20240517"), site_key).dataset
    assert "AcquisitionDate" in out and not out.AcquisitionDate


def test_x_d_and_z_d_on_elements_write_dummies(site_key):
    out = deid(photo(SeriesDate="20240517", ContentDate="20240517", ContentTime="143027"), site_key).dataset
    assert (out.SeriesDate, out.ContentDate, out.ContentTime) == ("19000101", "19000101", "000000")


def test_x_z_d_on_an_element_writes_a_dummy(site_key):
    out = deid(photo(StationName="DERMCAM03-RM214", InstitutionName="St. Elsewhere"), site_key).dataset
    assert (out.StationName, out.InstitutionName) == ("ANONYMIZED", "ANONYMIZED")


def test_x_z_d_on_a_type_3_sequence_removes_it(site_key):
    codes = Sequence([item(CodeValue="STE", CodingSchemeDesignator="99X", CodeMeaning="St. Elsewhere")])
    out = deid(photo(InstitutionCodeSequence=codes), site_key).dataset
    assert "InstitutionCodeSequence" not in out


def test_x_z_on_a_type_2_sequence_leaves_it_empty(site_key):
    context = Sequence([item(ValueType="TEXT", TextValue="Jane prefers afternoons")])
    out = deid(photo(AcquisitionContextSequence=context), site_key).dataset
    assert "AcquisitionContextSequence" in out and len(out.AcquisitionContextSequence) == 0


def test_x_z_u_star_keeps_references_with_new_uids(site_key):
    source = Sequence([item(ReferencedSOPClassUID=VL_PHOTO, ReferencedSOPInstanceUID="1.2.3.4.5.8")])
    out = deid(photo(SourceImageSequence=source), site_key).dataset
    assert out.SourceImageSequence[0].ReferencedSOPInstanceUID == site_key.uid("1.2.3.4.5.8")


# --- outside the table ------------------------------------------------------------------


def test_public_attributes_outside_the_table_are_kept(site_key):
    out = deid(photo(Manufacturer="Canon", ImageLaterality="L"), site_key).dataset
    assert (out.Manufacturer, out.Modality, out.ImageLaterality) == ("Canon", "XC", "L")


def test_public_prose_outside_the_table_is_cleaned(site_key):
    context = Sequence([item(TextValue="Jane prefers afternoons")])
    # Anatomic Region Sequence is outside the table, so its item is walked with the table.
    out = deid(photo(AnatomicRegionSequence=context), site_key).dataset
    assert out.AnatomicRegionSequence[0].TextValue == CLEANED_TEXT


def test_unknown_even_group_elements_are_removed(site_key):
    ds = photo()
    ds.add_new(0x00089999, "LO", "who knows")
    out = deid(ds, site_key).dataset
    assert 0x00089999 not in out


# --- recursion ------------------------------------------------------------------------


def test_table_applies_at_every_depth(site_key):
    inner = item(
        PatientName="Doe^Jane",
        PatientID="MRN00482913",
        OperatorsName="Ratched^Mildred",
        PatientAddress="12 Rue des Lilas",
        ReferencedSOPInstanceUID="1.2.3.4.5.9",
        IconImageSequence=Sequence([item(Rows=1)]),
    )
    inner.add_new(0x00090010, "LO", "ACME")
    inner.add_new(0x00091001, "LO", "Doe Jane")
    middle = item(AnatomicRegionModifierSequence=Sequence([inner]))
    out = deid(photo(AnatomicRegionSequence=Sequence([middle])), site_key).dataset
    deep = out.AnatomicRegionSequence[0].AnatomicRegionModifierSequence[0]
    assert deep.PatientName == site_key.patient_name("MRN00482913")
    assert deep.PatientID == site_key.patient_id("MRN00482913")
    assert deep.OperatorsName == "ANONYMIZED"
    assert "PatientAddress" not in deep
    assert deep.ReferencedSOPInstanceUID == site_key.uid("1.2.3.4.5.9")
    assert "IconImageSequence" not in deep
    assert 0x00091001 not in deep and 0x00090010 not in deep


def test_changes_name_the_nested_location(site_key):
    inner = item(OperatorsName="Ratched^Mildred")
    result = deid(photo(AnatomicRegionSequence=Sequence([inner])), site_key)
    locations = [c.location for c in result.changes]
    assert "AnatomicRegionSequence[0] > (0008,1070) OperatorsName" in locations


# --- private, UN, icon, overlay, curve ------------------------------------------------------


def _with_private(ds: Dataset) -> Dataset:
    ds.add_new(0x00330010, "LO", "ACME PHOTODESK 1.0")
    ds.add_new(0x00331001, "LO", "Doe-Müller Jane")
    ds.add_new(0x00331005, "SQ", Sequence([item(PatientName="Doe^Jane", PatientID="MRN00482913")]))
    ds.add_new(0x00331006, "OB", b'{"mrn": "MRN00482913"}')
    return ds


def test_private_elements_and_creators_are_removed(site_key):
    result = deid(_with_private(photo()), site_key)
    assert not [e for e in result.dataset if e.tag.is_private]
    assert {c.action for c in result.changes if c.location.startswith("(0033")} == {"remove-private"}


def test_private_elements_read_as_un_from_implicit_vr_are_removed(site_key):
    ds = _with_private(photo())
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    reread = roundtrip(ds)
    assert reread[0x00331001].VR == "UN"
    out = deid(reread, site_key).dataset
    assert not [e for e in out if e.tag.is_private]
    assert b"MRN00482913" not in to_bytes(out)


def test_icon_image_sequence_is_removed(site_key):
    icon = Sequence([item(Rows=8, Columns=8, PixelData=b"\x00" * 64)])
    result = deid(photo(IconImageSequence=icon), site_key)
    assert "IconImageSequence" not in result.dataset
    assert any(c.action == "remove-icon" for c in result.changes)


@pytest.mark.parametrize("group", [0x6000, 0x6002, 0x601E])
def test_every_overlay_element_is_removed(site_key, group):
    ds = photo()
    ds.add_new((group << 16) | 0x0010, "US", 2)
    ds.add_new((group << 16) | 0x0022, "LO", "Lesion outline for Jane Doe")
    ds.add_new((group << 16) | 0x1500, "LO", "J.DOE")
    ds.add_new((group << 16) | 0x3000, "OW", b"\xff\x00")
    result = deid(ds, site_key)
    assert not [e for e in result.dataset if e.tag.group == group]
    assert [c.action for c in result.changes if c.location.startswith(f"({group:04X}")] == [
        "remove-overlay"
    ] * 4


def test_curve_groups_are_removed(site_key):
    ds = photo()
    ds.add_new(0x50000005, "US", 2)
    ds.add_new(0x50003000, "OW", b"\x00\x01")
    ds.add_new(0x50002500, "LO", "Curve of Jane")
    out = deid(ds, site_key).dataset
    assert not [e for e in out if e.tag.group == 0x5000]


def test_group_lengths_are_removed(site_key):
    ds = photo()
    ds.add_new(0x00080000, "UL", 100)
    assert 0x00080000 not in deid(ds, site_key).dataset


# --- markers and file meta ----------------------------------------------------------------


def test_markers_are_written(site_key):
    out = deid(photo(), site_key).dataset
    assert out.PatientIdentityRemoved == "YES"
    method = "\\".join(out.DeidentificationMethod)
    assert "dicom-anon" in method and site_key.fingerprint() in method
    assert [i.CodeValue for i in out.DeidentificationMethodCodeSequence] == ["113100"]
    assert {i.CodingSchemeDesignator for i in out.DeidentificationMethodCodeSequence} == {"DCM"}
    assert out.LongitudinalTemporalInformationModified == "REMOVED"


def test_stale_markers_from_the_input_are_replaced(site_key):
    old = Sequence([item(CodeValue="113106", CodingSchemeDesignator="DCM", CodeMeaning="Full dates")])
    out = deid(photo(DeidentificationMethodCodeSequence=old, PatientIdentityRemoved="NO"), site_key).dataset
    assert [i.CodeValue for i in out.DeidentificationMethodCodeSequence] == ["113100"]
    assert out.PatientIdentityRemoved == "YES"


def test_file_meta_follows_the_new_uid_and_forgets_the_sender(site_key):
    out = deid(photo(), site_key).dataset
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID == site_key.uid(SOP_UID)
    assert out.file_meta.MediaStorageSOPClassUID == VL_PHOTO
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert "SourceApplicationEntityTitle" not in out.file_meta


def test_output_writes_and_reads_back(site_key):
    out = roundtrip(deid(_with_private(photo()), site_key).dataset)
    assert out.PatientID == site_key.patient_id("MRN00482913")


# --- review lines ---------------------------------------------------------------------


def test_review_never_shows_an_original_value(site_key):
    ds = photo(PatientAddress="12 Rue des Lilas", OperatorsName="Ratched^Mildred")
    result = deid(_with_private(ds), site_key)
    originals = ["Doe^Jane", "MRN00482913", "12 Rue des Lilas", "Ratched", "ACC2024051700731", "19780314"]
    for change in result.changes:
        for original in originals:
            assert original not in change.old and original not in change.new, change


def test_review_lists_pseudonyms_and_removals(site_key):
    result = deid(photo(PatientAddress="12 Rue des Lilas"), site_key)
    by_location = {c.location: c for c in result.changes}
    patient_id = by_location["(0010,0020) PatientID"]
    assert (patient_id.action, patient_id.new) == ("pseudonym", site_key.patient_id("MRN00482913"))
    assert patient_id.old == "M…(11 chars)"
    address = by_location["(0010,1040) PatientAddress"]
    assert (address.action, address.new) == ("X", "")
