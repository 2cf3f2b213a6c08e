"""The service's de-identification processes: the same bytes and refusals as in the worker's own
process, and a child that dies fails one attempt, not the pool."""

from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path

import pytest
from factories import to_bytes
from peers import tiny_photo

from dicom_anon.dicomio import read_instance
from dicom_anon.headers.engine import Profile, deidentify
from dicom_anon.headers.errors import Refused
from dicom_anon.headers.gate import release
from dicom_anon.headers.options import Option
from dicom_anon.headers.pseudonyms import SiteKey
from dicom_anon.service.deid_pool import DeidPool, Unreadable, released

OPTIONS = frozenset({Option.RETAIN_DEVICE_IDENTITY, Option.RETAIN_MODIFIED_DATES})


@pytest.fixture
def pool(tmp_path: Path):
    pool = DeidPool(tmp_path / "site.key", 1)
    yield pool
    pool.close()


def photo(burned_in: str = "NO") -> bytes:
    ds = tiny_photo(0)
    ds.BurnedInAnnotation = burned_in
    return to_bytes(ds)


def test_a_child_releases_the_bytes_the_worker_would(pool: DeidPool, tmp_path: Path) -> None:
    data = photo()
    profile = Profile(options=OPTIONS)
    here = deidentify(read_instance(data), SiteKey.load_or_create(tmp_path / "site.key"), profile)
    assert pool.deidentify(data, OPTIONS) == released(here, release(here, profile))
    assert b"Doe" not in pool.deidentify(data, OPTIONS).data


def test_a_refusal_comes_back_as_the_engine_raised_it(pool: DeidPool) -> None:
    with pytest.raises(Refused) as refused:
        pool.deidentify(photo(burned_in="YES"), OPTIONS)
    assert refused.value.code == "burned-in-annotation"


def test_a_child_that_dies_fails_that_attempt_and_the_next_gets_a_new_one(pool: DeidPool) -> None:
    pool.deidentify(photo(), OPTIONS)
    [child] = multiprocessing.active_children()
    os.kill(child.pid, signal.SIGKILL)
    with pytest.raises(RuntimeError, match="process died"):
        pool.deidentify(photo(), OPTIONS)
    assert pool.deidentify(photo(), OPTIONS).sop_class == "1.2.840.10008.5.1.4.1.1.77.1.4"


def test_bytes_that_do_not_read_strictly_are_refused_as_unreadable(pool: DeidPool) -> None:
    """The worker routes on a lenient reading; the child's strict one decides the quarantine stage."""
    ds = tiny_photo(0)
    ds.StudyDescription = "Photo of\x01Jane"  # a control character no text may hold
    with pytest.raises(Unreadable) as refused:
        pool.deidentify(to_bytes(ds), OPTIONS)
    assert refused.value.code == "bad-value"
