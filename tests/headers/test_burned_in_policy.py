"""Burned-in text: refused when flagged, and when unflagged on classes that usually carry it."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from dicom_anon.headers.engine import Profile, deidentify
from dicom_anon.headers.errors import Refused
from dicom_anon.headers.options import Option

US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
SC_IMAGE = "1.2.840.10008.5.1.4.1.1.7"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
VL_PHOTO = "1.2.840.10008.5.1.4.1.1.77.1.4"


def instance(sop_class: str, burned_in: str | None) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.PatientID = "MRN1"
    if burned_in is not None:
        ds.BurnedInAnnotation = burned_in
    return ds


@pytest.mark.parametrize("sop_class", [US_IMAGE, SC_IMAGE])
@pytest.mark.parametrize("flag", [None, "", "UNKNOWN"])
def test_unflagged_screen_like_images_are_refused(site_key, sop_class, flag):
    with pytest.raises(Refused) as info:
        deidentify(instance(sop_class, flag), site_key, Profile())
    assert info.value.code == "burned-in-annotation-unknown"


@pytest.mark.parametrize("sop_class", [US_IMAGE, SC_IMAGE])
def test_explicit_no_is_accepted(site_key, sop_class):
    result = deidentify(instance(sop_class, "NO"), site_key, Profile())
    assert result.dataset.BurnedInAnnotation == "NO"


@pytest.mark.parametrize("sop_class", [MR_IMAGE, VL_PHOTO])
def test_unflagged_other_images_are_taken_at_their_word(site_key, sop_class):
    deidentify(instance(sop_class, None), site_key, Profile())


def test_pixel_stage_can_vouch_for_unflagged_images(site_key):
    result = deidentify(
        instance(US_IMAGE, None), site_key, Profile(), pixels_cleaned=frozenset({Option.CLEAN_PIXEL_DATA})
    )
    assert result.dataset.PatientIdentityRemoved == "YES"


def test_shared_ultrasound_with_burned_in_name_is_refused(site_key, testdata):
    import pydicom

    ds = pydicom.dcmread(testdata / "dicom" / "deid-data" / "ultrasound_RGB_IMAGE.dcm")
    with pytest.raises(Refused) as info:
        deidentify(ds, site_key, Profile())
    assert info.value.code == "burned-in-annotation-unknown"
