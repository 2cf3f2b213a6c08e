"""Sending to an archive: the egress stall of issue 22 (pynetdicom's reactor taking the archive's
C-STORE response), and the outbox file sent as it lies.

Under load the race is rare per instance (6 runs in 33 of 1,000 small instances stalled) because it
needs two unlucky preemptions: the reactor thread descheduled just after it passed its pause check
(while ``send_c_store`` believes it paused), and the sending thread descheduled just after it sent,
so the reactor reads the response first. These tests make both preemptions happen every time, with
short sleeps at exactly those two points in the real pynetdicom objects, and send through the real
``DicomLink`` to a real archive: each instance must be answered, none may wait out the DIMSE timeout.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from factories import write
from peers import free_port, tiny_photo
from pydicom import dcmread
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.association import Association

from dicom_anon.config import Destination, EgressSettings
from dicom_anon.service.egress import DicomLink
from dicom_anon.service.ingress import decodable_transfer_syntaxes

# What the archive answers within; a send that waits this long has lost its response.
DIMSE_TIMEOUT_S = 3.0


def _until(condition: Callable[[], bool], limit_s: float = 0.5) -> None:
    deadline = time.monotonic() + limit_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.0001)


class _PreemptedAfterCheck(threading.Event):
    """The reactor's checkpoint: once the reactor has passed it, the reactor is held (as if
    descheduled) until a sender has cleared it and the archive's answer is in the DIMSE queue."""

    def __init__(self, answers: queue.Queue) -> None:
        super().__init__()
        self.answers = answers

    def wait(self, timeout: float | None = None) -> bool:
        passed = super().wait(timeout)
        _until(lambda: not self.is_set())
        _until(lambda: not self.answers.empty())
        return passed


class _LateReader(queue.Queue):
    """The DIMSE message queue: a blocking read (the sender's) starts only once the answer is in
    and 5 ms more, as if the sending thread were descheduled just after it sent."""

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if block:
            _until(lambda: not self.empty())
            time.sleep(0.005)
        return super().get(block, timeout)


def _preempt(assoc: Association) -> None:
    answers = _LateReader()
    checkpoint = _PreemptedAfterCheck(answers)
    checkpoint.set()
    assoc._reactor_checkpoint = checkpoint
    assoc.dimse.msg_queue = answers


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    return write(tiny_photo(0), tmp_path / "photo.dcm")


def _link(port: int) -> DicomLink:
    dest = Destination(ae_title="TEACHING", host="127.0.0.1", port=port)
    return DicomLink(dest, "ANON", EgressSettings.model_validate({"timeouts": {"dimse": DIMSE_TIMEOUT_S}}))


def test_every_store_gets_its_response_when_the_reactor_races_the_sender(archive, photo):
    """On pynetdicom 3.0.4 without our guard, the first preempted send loses its response."""
    scp = archive()
    link = _link(scp.port)
    ds = dcmread(photo)
    sop_class, ts = str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)
    assert link.send(photo, sop_class, ts, "2.25.1") == 0x0000  # opens the association
    assert link.assoc is not None
    _preempt(link.assoc)
    count = 20
    for _ in range(count):
        # A lost response raises TransientError ("no response to C-STORE") after the DIMSE timeout.
        assert link.send(photo, sop_class, ts, "2.25.1") == 0x0000
    link.close()
    assert len(scp.wait_for(count + 1)) == count + 1


def test_many_small_instances_over_fresh_associations(archive, photo):
    """A loop of associations, each preempted from its first send: the guard is on every one."""
    scp = archive()
    ds = dcmread(photo)
    sop_class, ts = str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)
    rounds = 10
    for _ in range(rounds):
        link = _link(scp.port)
        link.offered.add((sop_class, ts))
        link.assoc = link._associate()
        _preempt(link.assoc)
        for _ in range(3):
            assert link.send(photo, sop_class, ts, "2.25.1") == 0x0000
        link.close()
    assert len(scp.wait_for(rounds * 3)) == rounds * 3


def test_the_outbox_file_is_sent_as_it_lies(photo, tmp_path):
    """Encode once: the data set on the wire is the file's bytes after its meta header."""
    received: list[bytes] = []

    def store(event: evt.Event) -> int:
        received.append(event.request.DataSet.getvalue())
        return 0x0000

    ae = AE(ae_title="TEACHING")
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, decodable_transfer_syntaxes())
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, store)])
    try:
        ds = dcmread(photo)
        link = _link(port)
        assert link.send(photo, str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID), "2.25.1") == 0
        link.close()
    finally:
        server.shutdown()
    data = photo.read_bytes()
    meta_end = 132 + 12 + int.from_bytes(data[140:144], "little")  # preamble, DICM, group length
    assert received == [data[meta_end:]]
