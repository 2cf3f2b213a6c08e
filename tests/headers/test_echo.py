"""The last gate looks for the patient's own name and IDs in whatever text the copy keeps."""

from __future__ import annotations

import pytest
from factories import deid, vl_photo
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicom_anon.headers.engine import Profile
from dicom_anon.headers.gate import GateFailed, release
from dicom_anon.headers.options import Option


def _photo(**attrs) -> Dataset:
    return vl_photo(**{"PatientName": "Echolot^Marianne", "PatientID": "PID-778812", **attrs})


def _coded(meaning: str) -> Sequence:
    """A site's own code, which the profile keeps with its meaning (coded anatomy)."""
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "L-77", "99CLINIC", meaning
    return Sequence([item])


@pytest.mark.parametrize(
    ("attrs", "what", "where"),
    [
        ({"AnatomicRegionSequence": _coded("Photo of Marianne Echolot")}, "name", "Code Meaning"),
        ({"AnatomicRegionSequence": _coded("ECHOLOT, MARIANNE (left cheek)")}, "name", "Code Meaning"),
        (
            {"PatientName": "Echolot^Marianne Louise", "AnatomicRegionSequence": _coded("Marianne Echolot")},
            "name",
            "Code Meaning",
        ),
        ({"ManufacturerModelName": "CAM-2 pid-778812"}, "ID", "Manufacturer's Model Name"),
    ],
)
def test_the_patients_name_or_id_kept_anywhere_holds_the_copy(site_key, attrs, what, where) -> None:
    result = deid(_photo(**attrs), site_key)
    with pytest.raises(GateFailed) as refused:
        release(result, Profile())
    assert refused.value.code == "gate-identifier-echo"
    assert f"patient's {what} in" in refused.value.reason and where in refused.value.reason
    # The reason says where, never what: it goes to the quarantine list and the audit trail.
    assert "Marianne" not in refused.value.reason and "778812" not in refused.value.reason
    assert "Marianne" not in repr(result.identifiers)


@pytest.mark.parametrize(
    "attrs",
    [
        # A family name alone is also a colour or a maker; a given name alone, a word.
        {"PatientName": "Brown^Mark", "AnatomicRegionSequence": _coded("Brown birth mark, Browning's area")},
        # Short IDs are also versions and lot numbers.
        {"PatientID": "1234", "SoftwareVersions": "1234"},
        # Inside a longer token it is another value.
        {"PatientID": "778812", "ManufacturerModelName": "X7788123"},
    ],
)
def test_what_cannot_tell_the_patient_apart_from_chance_passes(site_key, attrs) -> None:
    ds = vl_photo(**{"PatientName": "Echolot^Marianne", "PatientID": "PID-778812", **attrs})
    assert release(deid(ds, site_key), Profile())


def test_the_name_an_option_keeps_nowhere_is_still_looked_for_under_options(site_key) -> None:
    options = (Option.RETAIN_DEVICE_IDENTITY, Option.RETAIN_INSTITUTION_IDENTITY)
    ds = _photo(InstitutionName="Marianne Echolot Dermatology")
    result = deid(ds, site_key, *options)
    with pytest.raises(GateFailed, match=r"patient's name in .*Institution Name"):
        release(result, Profile(options=frozenset(options)))
