"""Ingress: who may associate, what is answered for good and bad data, and that Success means on disk."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from factories import VL_PHOTO, to_bytes
from peers import events, tiny_photo, wait_until
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config, build_context
from pynetdicom.sop_class import Verification

from dicom_anon.service.ingress import decodable_transfer_syntaxes
from dicom_anon.service.store_sqlite import SqliteStore


def associate(port: int, *, calling: str = "CLINIC", called: str = "DICOM_ANON", syntaxes=None):
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    contexts = [build_context(VL_PHOTO, syntaxes or [ExplicitVRLittleEndian]), build_context(Verification)]
    return ae.associate("127.0.0.1", port, contexts=contexts, ae_title=called)


def store(port: int, ds_or_path, **kwargs) -> Dataset:
    assoc = associate(port, **kwargs)
    assert assoc.is_established
    try:
        return assoc.send_c_store(ds_or_path)
    finally:
        assoc.release()


def data_dir(service) -> Path:
    return service.settings.data_dir


def test_receipt_is_audited_without_the_raw_uid(start_service):
    service = start_service(routes=[], unmatched="quarantine")
    ds = tiny_photo()
    assert store(service.port, ds).Status == 0x0000
    [received] = events(data_dir(service), "instance_received")
    assert received["sop_uid_hash"] == service.runtime.key.keyed_hash(ds.SOPInstanceUID)
    assert received["calling_ae"] == "CLINIC" and received["transfer_syntax"] == ExplicitVRLittleEndian
    assert ds.SOPInstanceUID not in (data_dir(service) / "audit" / "audit.jsonl").read_text()


def test_success_means_spooled_and_queued(start_service):
    service = start_service()
    for w in service.workers:  # nothing may take the job away before we look
        w.stop()
        w.join()
    ds = tiny_photo()
    assert store(service.port, ds).Status == 0x0000
    check = SqliteStore(service.settings.state_path)
    [path] = check.spool_paths()
    assert check.counts()["jobs.received"] == 1
    check.close()
    spooled = data_dir(service) / path
    assert spooled.read_bytes()[128:132] == b"DICM"
    assert ds.SOPInstanceUID.encode() in spooled.read_bytes()
    assert spooled.stat().st_mode & 0o077 == 0


def test_same_instance_again_is_acknowledged_once(start_service):
    service = start_service()
    ds = tiny_photo()
    assert store(service.port, ds).Status == 0x0000
    assert store(service.port, ds).Status == 0x0000
    assert len(events(data_dir(service), "instance_received")) == 1
    assert len(events(data_dir(service), "instance_duplicate")) == 1


def test_verification_answers(start_service):
    service = start_service()
    assoc = associate(service.port)
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


@pytest.mark.parametrize(
    ("calling", "called", "reason"),
    [
        ("STRANGER", "DICOM_ANON", "calling AE 'STRANGER' from 127.0.0.1 is not allowed"),
        ("CLINIC", "SOMEONE_ELSE", "called AE title 'SOMEONE_ELSE' is not ours"),
    ],
)
def test_association_refused_and_audited_as_security_event(start_service, calling, called, reason):
    service = start_service()
    assoc = associate(service.port, calling=calling, called=called)
    assert assoc.is_rejected
    [event] = events(data_dir(service), "association_rejected")
    assert event["category"] == "security" and event["reason"] == reason and event["peer"] == "127.0.0.1"


def test_caller_from_an_address_not_on_its_list_is_refused(start_service):
    service = start_service(
        ingress={"allowed_callers": [{"ae_title": "CLINIC", "addresses": ["10.0.0.0/8"]}]}
    )
    assert associate(service.port).is_rejected


def test_above_the_high_water_mark_new_associations_are_refused(start_service):
    service = start_service(spool={"min_free_mb": 10**9})
    assoc = associate(service.port)
    assert assoc.is_rejected
    assert assoc.acceptor.primitive.result == 0x02  # transient: the sender should retry later
    assert "disk nearly full" in events(data_dir(service), "association_rejected")[0]["reason"]


def send_raw(port: int, path: Path) -> Dataset:
    """Send a file's bytes as they are (pynetdicom would otherwise decode and re-encode them)."""
    old = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        return store(port, path)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = old


def test_truncated_dataset_gets_cannot_understand(start_service, tmp_path):
    service = start_service()
    path = tmp_path / "truncated.dcm"
    path.write_bytes(to_bytes(tiny_photo())[:-20])
    rsp = send_raw(service.port, path)
    assert 0xC000 <= rsp.Status <= 0xCFFF
    assert "truncated" in rsp.ErrorComment
    [refused] = events(data_dir(service), "instance_refused")
    assert refused["code"] == "corrupt-dicom" and refused["status"] == "0xC000"
    assert store(service.port, tiny_photo()).Status == 0x0000  # and the service goes on


def test_garbage_bytes_get_cannot_understand(start_service, tmp_path):
    service = start_service()
    good = to_bytes(tiny_photo())
    meta_end = good.index(b"\x08\x00")  # first dataset element after the file meta group
    path = tmp_path / "garbage.dcm"
    path.write_bytes(good[:meta_end] + bytes(range(7, 250)) * 3)
    rsp = send_raw(service.port, path)
    assert 0xC000 <= rsp.Status <= 0xCFFF
    assert events(data_dir(service), "instance_refused")


def test_sop_class_mismatch_is_refused(start_service, tmp_path):
    service = start_service()
    ds = tiny_photo()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # the dataset says SC, the request says VL Photo
    ds.file_meta.MediaStorageSOPClassUID = VL_PHOTO
    ds.preamble = b"\0" * 128
    path = tmp_path / "mismatch.dcm"
    ds.save_as(path, enforce_file_format=False)  # keep the file meta as set, not derived from the dataset
    rsp = send_raw(service.port, path)
    assert rsp.Status == 0xA900


def test_unsupported_transfer_syntax_is_refused_at_negotiation(start_service):
    service = start_service()
    assoc = associate(service.port, syntaxes=["1.2.840.10008.1.2.4.100"])  # MPEG2: pydicom cannot decode it
    assert assoc.is_established
    assert not [cx for cx in assoc.accepted_contexts if cx.abstract_syntax == VL_PHOTO]
    assoc.release()
    [accepted] = events(data_dir(service), "association_accepted")
    assert accepted["contexts_rejected"] == [f"{VL_PHOTO}:1.2.840.10008.1.2.4.100"]


def test_write_error_answers_out_of_resources(start_service):
    service = start_service()
    blocker = data_dir(service) / "spool" / time.strftime("%Y%m%d")
    blocker.write_text("a file where today's spool folder should be")
    rsp = store(service.port, tiny_photo())
    assert rsp.Status == 0xA700
    assert events(data_dir(service), "instance_refused")[0]["code"] == "spool-write-failed"


def test_compressed_syntaxes_are_offered_first():
    syntaxes = decodable_transfer_syntaxes()
    assert "1.2.840.10008.1.2.4.50" in syntaxes  # JPEG Baseline, the clinic cameras' syntax
    assert syntaxes.index("1.2.840.10008.1.2.4.50") < syntaxes.index(ExplicitVRLittleEndian)


def test_every_vl_class_is_accepted(start_service):
    service = start_service()
    ae = AE(ae_title="CLINIC")
    dermoscopy = "1.2.840.10008.5.1.4.1.1.77.1.7"
    assoc = ae.associate(
        "127.0.0.1", service.port, contexts=[build_context(dermoscopy)], ae_title="DICOM_ANON"
    )
    assert [cx.abstract_syntax for cx in assoc.accepted_contexts] == [dermoscopy]
    assoc.release()


def test_many_instances_on_one_association_all_land(start_service):
    service = start_service(routes=[], unmatched="drop")
    assoc = associate(service.port)
    uids = []
    for i in range(20):
        ds = tiny_photo(i)
        uids.append(ds.SOPInstanceUID)
        assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    wait_until(lambda: len(events(data_dir(service), "instance_dropped")) == 20, 10, "20 dropped")
    hashes = {e["sop_uid_hash"] for e in events(data_dir(service), "instance_received")}
    assert hashes == {service.runtime.key.keyed_hash(u) for u in uids}
    assert generate_uid() not in hashes


def test_more_associations_than_allowed_are_refused(start_service):
    service = start_service(ingress={"max_associations": 1})
    first = associate(service.port)
    assert first.is_established
    second = associate(service.port)
    assert second.is_rejected
    first.release()
    wait_until(lambda: events(data_dir(service), "association_rejected"), 5, "the audited refusal")
    assert "more than 1 associations" in events(data_dir(service), "association_rejected")[0]["reason"]


def test_spool_above_high_water_mark_refuses_new_associations(start_service):
    service = start_service(spool={"high_water_mb": 1})
    for w in service.workers:  # the queue does not drain, as when the pipeline falls behind
        w.stop()
        w.join()
    big = tiny_photo()
    big.Rows = big.Columns = 640
    big.PixelData = bytes(640 * 640 * 3)
    assert store(service.port, big).Status == 0x0000
    assoc = associate(service.port)
    assert assoc.is_rejected and assoc.acceptor.primitive.result == 0x02
    assert "high-water mark" in events(data_dir(service), "association_rejected")[0]["reason"]
