"""One bad instance never stops the running service: a job that keeps failing goes to quarantine
without holding up the jobs behind it, and a delivery that cannot be sent is quarantined while
the sender goes on.

Intake refuses the issue's examples once it parses strictly; these tests are about what the
worker and the sender do when such data reaches them anyway (defence in depth): the failure is
planted in routing, or the bad copy put in the outbox as a worker that let it through would.
"""

from __future__ import annotations

import errno
import hashlib
import sqlite3

import pytest
from conftest import settings_for
from factories import to_bytes
from peers import events, free_port, tiny_photo, wait_until
from pydicom.dataset import Dataset
from pynetdicom import AE, build_context
from pynetdicom.sop_class import Verification
from test_pipeline import archived, send

from dicom_anon.rules import Decision, Rules
from dicom_anon.service.app import Service
from dicom_anon.service.failures import is_environment
from dicom_anon.service.files import write_durable
from dicom_anon.service.store import NewJob, NewOutput
from dicom_anon.service.store_sqlite import SqliteStore
from dicom_anon.service.worker import JOB_TRIES, Worker


def spool(service: Service, ds: Dataset) -> int:
    """What ingress does with an instance it acknowledges: spool file, then job row."""
    assert service.store is not None
    data = to_bytes(ds)
    path = service.layout.new_spool_path()
    write_durable(path, data)
    job_id, new = service.store.add_job(
        NewJob(
            calling_ae="CLINIC",
            peer="127.0.0.1",
            sop_class=str(ds.SOPClassUID),
            sop_key=hashlib.sha256(str(ds.SOPInstanceUID).encode()).hexdigest()[:32],
            digest=hashlib.sha256(data).hexdigest(),
            transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
            size=len(data),
            spool_path=service.layout.rel(path),
        )
    )
    assert new
    service._work.set()
    return job_id


def pause_workers(service: Service) -> None:
    for worker in service.workers:
        worker.stop()
        worker.join()
    service.workers = []


def resume_workers(service: Service) -> None:
    assert service.runtime is not None
    worker = Worker(0, service.runtime, service._work)
    worker.start()
    service.workers.append(worker)


class _RulesThatFailOn(Rules):
    """Routing with a fault planted for one instance (Instance Number 666): the exception no stage
    turns into a quarantine, as a bug meeting one odd instance would raise it."""

    def decide(self, ds: Dataset, calling_ae: str) -> list[Decision]:
        if ds.get("InstanceNumber") == 666:
            raise KeyError("planted")
        return super().decide(ds, calling_ae)


def test_a_job_that_keeps_failing_is_quarantined_and_does_not_hold_up_the_queue(start_service):
    """It was put back in line every 5 s without limit, and since the oldest job was always taken
    next, nothing behind it moved while intake kept answering Success."""
    service = start_service()
    assert service.runtime is not None and service.store is not None
    service.runtime.rules = _RulesThatFailOn(service.settings)
    pause_workers(service)  # the failing job goes first in line, two good ones behind it
    poison = tiny_photo(0)
    poison.InstanceNumber = 666
    assert send(service.port, poison, tiny_photo(1), tiny_photo(2)) == [0, 0, 0]
    resume_workers(service)

    data_dir = service.settings.data_dir
    wait_until(lambda: len(archived(service)) == 2, 10, "the two photos behind the failing one")
    assert not events(data_dir, "instance_quarantined")  # they did not wait for it
    wait_until(lambda: events(data_dir, "instance_quarantined"), 15, "the failing job held")
    [held] = events(data_dir, "instance_quarantined")
    assert held["job"] == 1 and held["code"] == "processing-failed" and held["stage"] == "worker"
    assert f"failed {JOB_TRIES} times (KeyError at" in held["reason"]
    [row] = service.store.quarantined()
    assert row.reason == held["reason"]
    assert (service.layout.abs(row.path) / "instance.dcm").is_file()  # the original, to release later
    assert service.dead_threads() == []
    assert service.store.counts()["jobs.done"] == 3


def test_an_instance_whose_copy_cannot_be_written_does_not_stop_forwarding(start_service):
    """The issue's case: command-group elements inside the data set. Intake may refuse it, or the
    worker quarantine it; either way the photo sent after it arrives and nothing is lost."""
    service = start_service()
    bad = tiny_photo(0)
    bad.add_new(0x00000900, "US", 0)
    statuses = send(service.port, bad, tiny_photo(1))
    assert statuses[1] == 0
    wait_until(lambda: archived(service), 10, "the photo sent after it")
    data_dir = service.settings.data_dir
    if statuses[0] == 0:  # acknowledged: it must end in quarantine, not in the queue
        wait_until(lambda: events(data_dir, "instance_quarantined"), 15, "the instance held")
    else:
        assert 0xC000 <= statuses[0] <= 0xCFFF
    assert service.store is not None and service.store.counts().get("jobs.received", 0) == 0
    assert service.dead_threads() == []


def test_a_delivery_that_cannot_be_sent_is_quarantined_and_the_sender_goes_on(start_service, archive):
    """A two-valued SOP Instance UID (a backslash in it) in the de-identified copy made pynetdicom
    raise TypeError, which killed the sender thread; the process exited, restarted and died on the
    same delivery again."""
    arch = archive()
    service = start_service(
        destinations={"teaching": {"ae_title": "TEACHING", "host": "127.0.0.1", "port": arch.port}}
    )
    assert service.store is not None
    pause_workers(service)
    bad = tiny_photo(0)
    bad.SOPInstanceUID = "2.25.1234\\2.25.5678"
    job = spool(service, bad)
    claimed = service.store.claim_job()  # the test plays the worker that let it through
    assert claimed is not None and claimed.id == job
    outbox = service.layout.outbox / f"{job}-photos.dcm"
    write_durable(outbox, to_bytes(bad))
    output = NewOutput(
        route="photos",
        path=service.layout.rel(outbox),
        sop_class=str(bad.SOPClassUID),
        sop_uid=str(bad.SOPInstanceUID),
        transfer_syntax=str(bad.file_meta.TransferSyntaxUID),
        patient_pseudonym="ANON-TEST",
        destinations=("teaching",),
    )
    service.store.finish_routing(job, [output], [])
    service.senders["teaching"].wake.set()

    data_dir = service.settings.data_dir
    wait_until(lambda: events(data_dir, "instance_quarantined"), 10, "the delivery that cannot be sent")
    [held] = events(data_dir, "instance_quarantined")
    assert held["stage"] == "egress" and held["code"] == "send-failed" and "TypeError" in held["reason"]
    assert service.store.quarantined()[0].path.startswith("quarantine/")
    resume_workers(service)
    assert send(service.port, tiny_photo(3)) == [0]
    wait_until(lambda: arch.received, 10, "a good photo after the bad delivery")
    assert service.dead_threads() == []


@pytest.mark.parametrize(
    ("exc", "environment"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), True),
        (OSError(errno.EIO, "Input/output error"), True),
        (sqlite3.OperationalError("database or disk is full"), True),
        (OSError("image file is truncated"), False),  # Pillow on a broken JPEG: the instance's fault
        (FileNotFoundError(errno.ENOENT, "No such file"), False),
        (MemoryError(), False),  # one huge instance; retrying it forever would stop the queue
        (ValueError("Command Set elements"), False),
    ],
)
def test_only_the_environment_is_waited_out(exc, environment):
    assert is_environment(exc) is environment


def test_an_association_that_cannot_be_checked_is_refused_not_accepted(start_service, tmp_path):
    """pynetdicom goes on negotiating when a handler of the request raises: a check that failed
    (here the state store it reads the spool's size from is gone) let the caller in."""
    service = start_service()
    assert service.ingress is not None
    gone = SqliteStore(tmp_path / "gone.sqlite")
    gone.close()
    service.ingress.store = gone
    assoc = AE(ae_title="CLINIC").associate(
        "127.0.0.1", service.port, contexts=[build_context(Verification)], ae_title="DICOM_ANON"
    )
    assert assoc.is_rejected and assoc.acceptor.primitive.result == 0x02  # transient: try later
    [refused] = events(service.settings.data_dir, "association_rejected")
    assert refused["calling_ae"] == "CLINIC" and "could not be checked" in refused["reason"]


def test_a_job_whose_spool_file_a_power_cut_took_is_dropped_and_the_resend_forwarded(start_service, tmp_path):
    """Ingress answers only after one flush made the spool file, the job and the receipt durable
    together, so a job found at start without its whole spool file was never acknowledged. It
    was quarantined as spool-missing, and the PACS's re-send, taken for its duplicate, was lost."""
    port = free_port()
    first = Service(settings_for(tmp_path, port))
    first.start()
    pause_workers(first)
    photo = tiny_photo(0)
    assert send(port, photo) == [0]
    assert first.store is not None
    [(job_id, rel, size)] = first.store.received_spools()
    first.stop()
    first.layout.abs(rel).write_bytes(b"\0" * (size // 2))  # what a power cut may leave

    service = start_service()
    data_dir = service.settings.data_dir
    [dropped] = events(data_dir, "instance_unacknowledged")
    assert dropped["job"] == job_id
    assert send(service.port, photo) == [0]
    wait_until(lambda: archived(service), 10, "the re-sent photo")
    assert not events(data_dir, "instance_duplicate") and not events(data_dir, "instance_quarantined")
