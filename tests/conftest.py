"""Fixtures shared by every test: where the shared test data lives, and a throwaway site secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicom_anon.headers.pseudonyms import SiteKey

TESTDATA = Path(__file__).resolve().parents[1].parent / "shared" / "testdata"


@pytest.fixture(scope="session")
def testdata() -> Path:
    """../shared/testdata, or skip: CI has it, a lone clone may not."""
    if not TESTDATA.is_dir():
        pytest.skip("../shared/testdata is absent")
    return TESTDATA


@pytest.fixture
def site_key() -> SiteKey:
    return SiteKey(b"test-secret-0123456789abcdef0123")


@pytest.fixture
def other_site_key() -> SiteKey:
    return SiteKey(b"another-secret-0123456789abcdef0")
