"""The value helpers: dummies valid for their VR, date shifting at the written precision, UIDs, free text."""

from __future__ import annotations

import pytest
from pydicom import config
from pydicom.valuerep import validate_value

from dicom_anon.headers.dates import shift_da, shift_dt
from dicom_anon.headers.dummies import dummy_value, empty_value
from dicom_anon.headers.text import is_free_text, names_prose
from dicom_anon.headers.uids import is_registered, new_uid

STRING_VRS = ["AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UR", "UT"]


@pytest.mark.parametrize("vr", STRING_VRS)
def test_dummy_passes_pydicoms_strict_vr_validation(vr):
    validate_value(vr, dummy_value(vr), config.RAISE)


@pytest.mark.parametrize("vr", ["US", "SS", "UL", "SL", "FL", "FD", "SV", "UV"])
def test_numeric_dummies_are_zero(vr):
    assert dummy_value(vr) == 0


@pytest.mark.parametrize("vr", ["OB", "OW", "UN", "OB or OW", "OF"])
def test_binary_dummies_are_empty(vr):
    assert dummy_value(vr) == b""


def test_dummy_for_sequence_is_the_engines_job():
    with pytest.raises(ValueError):
        dummy_value("SQ")


def test_empty_values():
    assert empty_value("SQ") == []
    assert empty_value("OB") == b""
    assert empty_value("LO") is None


def test_shift_da_moves_across_month_and_leap_day():
    assert shift_da("20240301", -1) == "20240229"
    assert shift_da("20230301", -1) == "20230228"
    assert shift_da("20240517", -365) == "20230518"


def test_shift_keeps_intervals():
    first, second = "20240101", "20240317"
    a, b = shift_da(first, -123), shift_da(second, -123)
    from datetime import date

    def days(text):
        return date(int(text[:4]), int(text[4:6]), int(text[6:])).toordinal()

    assert days(b) - days(a) == days(second) - days(first)


@pytest.mark.parametrize("bad", ["2024-05-17", "20241317", "", "abc", "2024051"])
def test_shift_da_refuses_what_it_cannot_read(bad):
    assert shift_da(bad, -10) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20240517143027.125000+0200", "20240507143027.125000+0200"),
        ("20240517", "20240507"),
        ("202405", "202404"),  # year-month stays year-month
        ("2024", "2023"),  # 1 Jan moved back 10 days
        ("2024051714", "2024050714"),
    ],
)
def test_shift_dt_keeps_precision_time_and_offset(value, expected):
    assert shift_dt(value, -10) == expected


def test_shift_dt_refuses_malformed():
    assert shift_dt("2024-05-17T14:30", -1) is None


def test_registered_uids_are_not_replaced(site_key):
    vl_photo = "1.2.840.10008.5.1.4.1.1.77.1.4"
    assert is_registered(vl_photo)
    assert new_uid(site_key, vl_photo) == vl_photo
    assert new_uid(site_key, "") == ""


def test_instance_uids_are_replaced_by_keyed_2_25_uids(site_key, other_site_key):
    original = "1.2.826.0.1.3680043.2.1125.1.99"
    new = new_uid(site_key, original)
    assert new.startswith("2.25.") and len(new) <= 64
    assert new == new_uid(site_key, original + "\x00")  # padding does not change the mapping
    assert new != new_uid(other_site_key, original)


@pytest.mark.parametrize(
    ("vr", "keyword", "expected"),
    [
        ("LT", "AdditionalPatientHistory", True),
        ("ST", "InstitutionAddress", True),
        ("UT", "TextValue", True),
        ("LO", "DeviceDescription", True),
        ("LO", "StudyComments", True),
        ("LO", "InstitutionName", False),
        ("SH", "StationName", False),
        ("LO", "CodeMeaning", False),
        ("CS", "ImageComments", False),
    ],
)
def test_free_text_is_prose_by_vr_or_by_name(vr, keyword, expected):
    assert is_free_text(vr, keyword) is expected


def test_only_descriptions_count_as_prose_by_name():
    assert names_prose("LO", "DeviceDescription")
    assert not names_prose("UT", "LensSerialNumber")
    assert not names_prose("ST", "InstitutionAddress")
    assert not names_prose("US", "DescriptionCount")
