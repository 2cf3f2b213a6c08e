"""Strict reading at intake: a lying instance is refused in the C-STORE answer, never acknowledged.

Issue 21: an element whose length swallowed the patient's name was acknowledged and forwarded;
sequences nested 100-500 deep were acknowledged and then quarantined as internal errors. Each
is sent as raw bytes, as a hostile sender would, and must get 0xC000 with the rule it broke,
leave nothing in the queue, and not stop a good photo sent after it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from factories import to_bytes
from fuzz_corpus import elements, insert_element, nested_sequences, set_length
from peers import events, tiny_photo, wait_until
from test_ingress import send_raw, store

NAME = b"ZQXPHI"


def _swallowing_modality() -> bytes:
    ds = tiny_photo()
    ds.ReferringPhysicianName = "ZQXPHI^REFERRER"
    data = to_bytes(ds)
    modality = next(e for e in elements(data) if e.tag == 0x00080060)
    study_uid = next(e for e in elements(data) if e.tag == 0x0020000D)
    return set_length(data, modality, study_uid.start - modality.value_at)


@pytest.mark.parametrize(
    ("build", "code"),
    [
        (_swallowing_modality, "bad-value"),
        (lambda: insert_element(to_bytes(tiny_photo()), 0x0040A730, nested_sequences(100)), "too-deep"),
        (lambda: insert_element(to_bytes(tiny_photo()), 0x0040A730, nested_sequences(500)), "too-deep"),
    ],
    ids=["swallowing-length", "nested-100", "nested-500"],
)
def test_hostile_instance_is_refused_at_intake(start_service, tmp_path: Path, build, code: str) -> None:
    service = start_service()
    path = tmp_path / "hostile.dcm"
    path.write_bytes(build())
    rsp = send_raw(service.port, path)
    assert rsp.Status == 0xC000
    assert rsp.ErrorComment.startswith(code)
    [refused] = events(service.settings.data_dir, "instance_refused")
    assert refused["code"] == code
    assert not events(service.settings.data_dir, "instance_received")
    assert store(service.port, tiny_photo(1)).Status == 0x0000  # the next photo is taken and forwarded
    archive = Path(service.settings.destinations["teaching"].folder)
    wait_until(lambda: list(archive.glob("*.dcm")), 10, "the good photo in the archive")
    for sent in archive.glob("*.dcm"):
        assert NAME not in sent.read_bytes()
