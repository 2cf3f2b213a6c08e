"""The site secret and the pseudonyms derived from it."""

from __future__ import annotations

import os
import stat

import pytest

from dicom_anon.headers.errors import SiteKeyError
from dicom_anon.headers.pseudonyms import MAX_SHIFT_DAYS, MIN_SHIFT_DAYS, SiteKey


def test_secret_is_created_with_mode_0600(tmp_path):
    path = tmp_path / "sub" / "site.key"
    key = SiteKey.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(key.secret) == 32


def test_secret_is_stable_across_loads(tmp_path):
    path = tmp_path / "site.key"
    first = SiteKey.load_or_create(path)
    second = SiteKey.load_or_create(path)
    assert first.patient_id("MRN1") == second.patient_id("MRN1")
    assert first.fingerprint() == second.fingerprint()


def test_world_readable_secret_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "site.key"
    SiteKey.load_or_create(path)
    os.chmod(path, 0o644)
    with pytest.raises(SiteKeyError, match="chmod 600"):
        SiteKey.load_or_create(path)


def test_short_secret_is_refused(tmp_path):
    path = tmp_path / "site.key"
    path.write_bytes(b"short")
    os.chmod(path, 0o600)
    with pytest.raises(SiteKeyError, match="at least 16"):
        SiteKey.load_or_create(path)


def test_pseudonyms_depend_on_the_secret(site_key, other_site_key):
    assert site_key.patient_id("MRN1") != other_site_key.patient_id("MRN1")
    assert site_key.uid("1.2.3.4") != other_site_key.uid("1.2.3.4")
    assert site_key.date_shift_days("MRN1") != other_site_key.date_shift_days("MRN1")


def test_pseudonyms_differ_between_patients(site_key):
    assert site_key.patient_id("MRN1") != site_key.patient_id("MRN2")
    assert site_key.patient_name("MRN1") != site_key.patient_name("MRN2")


def test_purposes_are_separated(site_key):
    # The same input must not give the same hash in two roles, or a UID would leak a patient ID hash.
    assert site_key.digest("uid", "X") != site_key.digest("patient-id", "X")


def test_uid_is_valid_and_short(site_key):
    uid = site_key.uid("1.2.840.99999.1.2.3")
    assert uid.startswith("2.25.")
    assert len(uid) <= 64
    assert uid[5:].isdigit() and not uid[5:].startswith("0")


def test_uid_ignores_trailing_padding(site_key):
    assert site_key.uid("1.2.3.4\x00") != site_key.uid("1.2.3.5")
    assert site_key.uid("1.2.3.4 ") == site_key.uid("1.2.3.4")


def test_date_shift_is_backwards_and_bounded(site_key):
    shifts = {site_key.date_shift_days(f"MRN{i}") for i in range(200)}
    assert all(-MAX_SHIFT_DAYS <= s <= -MIN_SHIFT_DAYS for s in shifts)
    assert len(shifts) > 150


def test_pseudonym_values_fit_their_vrs(site_key):
    assert len(site_key.patient_id("x")) <= 64
    assert len(site_key.accession_number("x")) <= 16
    assert len(site_key.study_id("x")) <= 16
    assert site_key.patient_name("x").startswith("ANON^")
