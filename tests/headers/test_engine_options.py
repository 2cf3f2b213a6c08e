"""One test (or a few) per PS3.15 option: what it keeps, what it cleans, the code it writes."""

from __future__ import annotations

import warnings
from datetime import date

import pytest
from factories import JANE_DOE, VL_PHOTO, deid, item, vl_photo
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicom_anon.headers.engine import Profile, deidentify
from dicom_anon.headers.errors import Refused
from dicom_anon.headers.options import OPTION_INFO, Option
from dicom_anon.headers.text import CLEANED_TEXT

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
SOP_UID = "1.2.826.0.1.3680043.2.1125.8.1"


def photo(**attrs) -> Dataset:
    return vl_photo(
        sop_uid=SOP_UID,
        media_storage=False,
        **{
            **JANE_DOE,
            "StudyInstanceUID": "1.2.826.0.1.3680043.2.1125.8.2",
            "SeriesInstanceUID": "1.2.826.0.1.3680043.2.1125.8.3",
            "PatientSex": "F",
            "StudyTime": "143012",
            "BurnedInAnnotation": "NO",
            "RecognizableVisualFeatures": "YES",
            **attrs,
        },
    )


def codes(ds: Dataset) -> set[str]:
    return {i.CodeValue for i in ds.DeidentificationMethodCodeSequence}


@pytest.mark.parametrize(
    "option", sorted(set(Option) - {Option.CLEAN_PIXEL_DATA, Option.CLEAN_RECOGNIZABLE_VISUAL_FEATURES})
)
def test_each_header_option_is_applied_and_coded(site_key, option):
    result = deid(photo(), site_key, option)
    assert option in result.options
    assert codes(result.dataset) == {"113100", OPTION_INFO[option].code}
    assert f"option {option.value}" in list(result.dataset.DeidentificationMethod)


# --- clean pixel data / clean recognizable visual features: only via pixels_cleaned -------------


def test_pixel_options_are_not_claimed_without_the_pixel_stage(site_key):
    both = (Option.CLEAN_PIXEL_DATA, Option.CLEAN_RECOGNIZABLE_VISUAL_FEATURES)
    result = deid(photo(), site_key, *both)
    assert not set(both) & result.options
    assert codes(result.dataset) == {"113100"}
    assert result.dataset.RecognizableVisualFeatures == "YES"


def test_clean_pixel_data_from_the_pixel_stage_accepts_burned_in_and_says_no(site_key):
    ds = photo(BurnedInAnnotation="YES")
    with pytest.raises(Refused):
        deid(ds, site_key, Option.CLEAN_PIXEL_DATA)
    result = deid(ds, site_key, Option.CLEAN_PIXEL_DATA, pixels_cleaned={Option.CLEAN_PIXEL_DATA})
    assert Option.CLEAN_PIXEL_DATA in result.options
    assert result.dataset.BurnedInAnnotation == "NO"
    assert "113101" in codes(result.dataset)


def test_clean_recognizable_visual_features_from_the_pixel_stage_says_no(site_key):
    cleaned = {Option.CLEAN_RECOGNIZABLE_VISUAL_FEATURES}
    result = deid(photo(), site_key, pixels_cleaned=cleaned)
    assert result.dataset.RecognizableVisualFeatures == "NO"
    assert "113102" in codes(result.dataset)


# --- clean graphics ---------------------------------------------------------------------------


def test_clean_graphics_still_removes_overlays_and_says_so(site_key):
    ds = photo()
    ds.add_new(0x60003000, "OW", b"\xff\x00")
    ds.add_new(0x60004000, "LT", "Outline for Jane Doe")
    result = deid(ds, site_key, Option.CLEAN_GRAPHICS)
    assert 0x60003000 not in result.dataset and 0x60004000 not in result.dataset
    assert {c.action for c in result.changes if c.location.startswith("(6000")} == {"remove-overlay"}


# --- clean structured content -----------------------------------------------------------------


def _context() -> Sequence:
    concept = Sequence(
        [item(CodeValue="121008", CodingSchemeDesignator="DCM", CodeMeaning="Person Observer Name")]
    )
    comment = Sequence([item(CodeValue="121106", CodingSchemeDesignator="DCM", CodeMeaning="Comment")])
    return Sequence(
        [
            item(ValueType="PNAME", ConceptNameCodeSequence=concept, PersonName="Ratched^Mildred"),
            item(ValueType="TEXT", ConceptNameCodeSequence=comment, TextValue="Jane prefers afternoons"),
        ]
    )


def test_clean_structured_content_keeps_the_tree_and_cleans_its_values(site_key):
    out = deid(
        photo(AcquisitionContextSequence=_context()), site_key, Option.CLEAN_STRUCTURED_CONTENT
    ).dataset
    first, second = out.AcquisitionContextSequence
    assert first.ValueType == "PNAME" and first.ConceptNameCodeSequence[0].CodeValue == "121008"
    assert first.PersonName == "ANONYMIZED"
    assert second.TextValue == CLEANED_TEXT


def test_structured_reports_need_clean_structured_content(site_key):
    sr = photo(SOPClassUID=BASIC_TEXT_SR, ContentSequence=_context())
    with pytest.raises(Refused) as refused:
        deid(sr, site_key)
    assert refused.value.code == "structured-content"
    out = deid(sr, site_key, Option.CLEAN_STRUCTURED_CONTENT).dataset
    assert out.ContentSequence[0].PersonName == "ANONYMIZED"
    assert out.ContentSequence[1].TextValue == CLEANED_TEXT
    assert "LongitudinalTemporalInformationModified" not in out  # an image attribute


# --- clean descriptors --------------------------------------------------------------------------


def test_clean_descriptors_keeps_descriptions_present_but_cleaned(site_key):
    ds = photo(
        StudyDescription="Dermatology follow-up photo of Jane Doe",
        SeriesDescription="Face frontal - J. Doe",
        ImageComments="Consent signed by Jane Doe",
    )
    without = deid(ds, site_key).dataset
    assert "StudyDescription" not in without and "ImageComments" not in without
    out = deid(ds, site_key, Option.CLEAN_DESCRIPTORS).dataset
    assert (out.StudyDescription, out.SeriesDescription, out.ImageComments) == (CLEANED_TEXT,) * 3


def test_clean_descriptors_keeps_coded_descriptors(site_key):
    diagnosis = Sequence([item(CodeValue="254701007", CodingSchemeDesignator="SCT", CodeMeaning="BCC")])
    out = deid(photo(AdmittingDiagnosesCodeSequence=diagnosis), site_key, Option.CLEAN_DESCRIPTORS).dataset
    assert out.AdmittingDiagnosesCodeSequence[0].CodeValue == "254701007"


# --- dates ---------------------------------------------------------------------------------------


def test_basic_profile_removes_dates(site_key):
    result = deid(photo(AcquisitionDateTime="20240517143027.125+0200", ContentDate="20240517"), site_key)
    out = result.dataset
    assert not out.StudyDate and not out.PatientBirthDate
    assert out.ContentDate == "19000101"
    assert out.AcquisitionDateTime == "19000101000000"
    assert result.date_shift_days is None


def test_retain_full_dates_keeps_them(site_key):
    out = deid(photo(ContentDate="20240517"), site_key, Option.RETAIN_FULL_DATES).dataset
    assert (out.StudyDate, out.ContentDate) == ("20240517", "20240517")
    assert not out.PatientBirthDate  # no option column in Table E.1-1: always Z
    assert out.StudyTime == "143012"
    assert out.LongitudinalTemporalInformationModified == "UNMODIFIED"


def _ordinal(text: str) -> int:
    return date(int(text[:4]), int(text[4:6]), int(text[6:8])).toordinal()


def test_retain_modified_dates_shifts_by_the_patients_offset(site_key):
    ds = photo(AcquisitionDateTime="20240517143027.125+0200", ContentDate="20240517", ContentTime="143027")
    result = deid(ds, site_key, Option.RETAIN_MODIFIED_DATES)
    out = result.dataset
    shift = site_key.date_shift_days("MRN00482913")
    assert result.date_shift_days == shift < 0
    assert _ordinal(out.StudyDate) - _ordinal("20240517") == shift
    assert not out.PatientBirthDate
    assert out.AcquisitionDateTime.endswith("143027.125+0200")
    assert _ordinal(out.AcquisitionDateTime) - _ordinal("20240517") == shift
    assert (out.StudyTime, out.ContentTime) == ("143012", "143027")
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    assert "113107" in codes(out)


def test_retain_modified_dates_dummies_an_unreadable_date(site_key):
    # pydicom only warns about the value, and not at all once dicomio has turned its reading
    # validation off (its warnings quote values into logs): the engine must cope either way.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = photo(ContentDate="17.05.2024")
    out = deid(ds, site_key, Option.RETAIN_MODIFIED_DATES).dataset
    assert out.ContentDate == "19000101"


def test_dates_in_sequences_shift_too(site_key):
    context = Sequence([item(ValueType="DATE", Date="20240510")])
    opts = (Option.RETAIN_MODIFIED_DATES, Option.CLEAN_STRUCTURED_CONTENT)
    out = deid(photo(AcquisitionContextSequence=context), site_key, *opts).dataset
    shifted = out.AcquisitionContextSequence[0].Date
    assert _ordinal(shifted) - _ordinal("20240510") == site_key.date_shift_days("MRN00482913")


def test_full_and_modified_dates_exclude_each_other():
    with pytest.raises(ValueError, match="exclude"):
        Profile(options=frozenset({Option.RETAIN_FULL_DATES, Option.RETAIN_MODIFIED_DATES}))


# --- patient characteristics, device, institution, UIDs --------------------------------------------


def test_retain_patient_characteristics(site_key):
    ds = photo(PatientAge="046Y", PatientWeight="61.5", PatientSize="1.68", Allergies="Penicillin (Jane)")
    without = deid(ds, site_key).dataset
    assert "PatientAge" not in without and not without.PatientSex
    out = deid(ds, site_key, Option.RETAIN_PATIENT_CHARACTERISTICS).dataset
    assert (out.PatientAge, out.PatientSex, str(out.PatientWeight)) == ("046Y", "F", "61.5")
    assert out.Allergies == CLEANED_TEXT


def test_retain_device_identity(site_key):
    ds = photo(
        DeviceSerialNumber="SN-0429-7781-XZ",
        StationName="DERMCAM03-RM214",
        StationAETitle="DERMCAM03",
        DeviceDescription="Camera registered to Dr. Hubert Strangelove",
        LensSerialNumber="LENS-8842-0071",
    )
    without = deid(ds, site_key).dataset
    assert without.DeviceSerialNumber == "ANONYMIZED" and "DeviceDescription" not in without
    out = deid(ds, site_key, Option.RETAIN_DEVICE_IDENTITY).dataset
    assert (out.DeviceSerialNumber, out.StationName) == ("SN-0429-7781-XZ", "DERMCAM03-RM214")
    assert out.LensSerialNumber == "LENS-8842-0071"  # UT, but an identifier the option keeps
    assert out.StationAETitle == CLEANED_TEXT  # C in the table
    assert out.DeviceDescription == CLEANED_TEXT  # K, but prose is never copied


def test_retain_institution_identity(site_key):
    ds = photo(
        InstitutionName="St. Elsewhere General Hospital",
        InstitutionalDepartmentName="Dermatology",
        InstitutionAddress="1 Hospital Plaza, Springfield",
    )
    out = deid(ds, site_key, Option.RETAIN_INSTITUTION_IDENTITY).dataset
    assert (out.InstitutionName, out.InstitutionalDepartmentName) == (
        "St. Elsewhere General Hospital",
        "Dermatology",
    )
    assert out.InstitutionAddress == "1 Hospital Plaza, Springfield"
    assert deid(ds, site_key).dataset.InstitutionName == "ANONYMIZED"


def test_retain_uids(site_key):
    ref = Sequence([item(ReferencedSOPClassUID=VL_PHOTO, ReferencedSOPInstanceUID="1.2.3.4.5")])
    out = deid(photo(ReferencedImageSequence=ref), site_key, Option.RETAIN_UIDS).dataset
    assert out.SOPInstanceUID == SOP_UID
    assert out.StudyInstanceUID == "1.2.826.0.1.3680043.2.1125.8.2"
    assert out.ReferencedImageSequence[0].ReferencedSOPInstanceUID == "1.2.3.4.5"
    assert out.file_meta.MediaStorageSOPInstanceUID == SOP_UID


# --- retain safe private ---------------------------------------------------------------------------


def _mr_private(ds: Dataset) -> Dataset:
    ds.add_new(0x00190010, "LO", "SIEMENS MR HEADER")
    ds.add_new(0x0019100C, "IS", "1000")  # B_value: on the safe list
    ds.add_new(0x00191099, "LO", "Doe Jane")  # same block, not on the list
    ds.add_new(0x00290010, "LO", "ACME")
    ds.add_new(0x0029100C, "IS", "5")  # same element byte, other creator
    return ds


def test_retain_safe_private_keeps_only_listed_elements_and_their_creator(site_key):
    out = deid(_mr_private(photo()), site_key, Option.RETAIN_SAFE_PRIVATE).dataset
    assert out[0x0019100C].value == 1000
    assert out[0x00190010].value == "SIEMENS MR HEADER"
    assert 0x00191099 not in out
    assert 0x00290010 not in out and 0x0029100C not in out


def test_without_retain_safe_private_even_safe_elements_go(site_key):
    out = deid(_mr_private(photo()), site_key).dataset
    assert not [e for e in out if e.tag.is_private]


def test_site_safe_private_list(site_key):
    profile = Profile(
        options=frozenset({Option.RETAIN_SAFE_PRIVATE}), safe_private=frozenset({("ACME", 0x0C)})
    )
    out = deidentify(_mr_private(photo()), site_key, profile).dataset
    assert out[0x0029100C].value == 5
    assert 0x0019100C not in out
