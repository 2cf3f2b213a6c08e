"""Egress: one sender thread per destination, so a destination that is down blocks only itself.

A DICOM destination gets one association, reused while there is work and released
after ``idle_release_s``. For each SOP class it is offered two presentation contexts:
the instance's own (compressed) transfer syntax, and uncompressed. The instance is
decompressed only when the destination accepts nothing but the uncompressed one.

Delivery is recorded only after the destination's response; a crash in between means
the instance is sent again after restart. Outputs carry deterministic (keyed) UIDs,
so an archive receiving it again stores the same instance, not a second one.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config, build_context, evt
from pynetdicom.association import Association
from pynetdicom.status import code_to_category

from ..audit.trail import AuditTrail
from ..config import Destination, EgressSettings
from .failures import describe_environment, describe_exception, is_environment
from .files import Layout, link_or_copy, replace_durable
from .store import Delivery, LeaseLost, NewQuarantine, StateStore

log = structlog.get_logger("dicom_anon.egress")

_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
# Sender-side statuses worth another try: out of resources (A7xx), resource limitation, processing failure.
_TRANSIENT = {0x0110, 0x0213}
_MAX_CLASSES = 60  # two contexts each, under the 128 a requestor may propose
# send_c_store(path) then streams the file's data set after its meta header instead of reading the
# file into a Dataset and encoding it again. Process-wide; ingress never sends C-STOREs.
_config.STORE_SEND_CHUNKED_DATASET = True


class TransientError(Exception):
    """Try again later: connection refused, association rejected, no answer, a busy archive."""


class PermanentError(Exception):
    """This destination will not take this instance; it goes to quarantine with ``code`` and the message."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def delivered(status: int) -> bool:
    """Success, and warnings (0xB0xx: coerced, elements discarded...) count as delivered."""
    return status == 0x0000 or 0xB000 <= status <= 0xBFFF


def transient(status: int) -> bool:
    return 0xA700 <= status <= 0xA7FF or status in _TRANSIENT


def remove_output(layout: Layout, store: StateStore, path: str | None) -> None:
    """A finished output's outbox file, then the row that names it: a kill in between leaves a row
    that ``StateStore.finished_outputs`` finds, never a file no row names."""
    if path is not None:
        layout.remove(path)
        store.forget_output(path)


def client_tls_context(dest: Destination) -> ssl.SSLContext | None:
    if dest.tls is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(dest.tls.ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if dest.tls.certificate is not None and dest.tls.private_key is not None:
        ctx.load_cert_chain(dest.tls.certificate, dest.tls.private_key)
    return ctx


def _no_delay(event: evt.Event) -> None:
    """pynetdicom sends a C-STORE's command and data set as separate small writes; with Nagle's
    algorithm on, each one waits for the archive's delayed ACK (about 40 ms per instance)."""
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def guard_reactor(assoc: Association) -> None:
    """Keep pynetdicom's reactor off the responses our C-STOREs wait for (pynetdicom 3.0.4).

    ``send_c_store`` pauses the reactor by clearing a checkpoint and spinning until the reactor says
    it is paused; but the reactor says so just *before* it waits at the checkpoint, so it can pass a
    checkpoint still set, be seen as paused, and then take the archive's response off the DIMSE queue
    ("Received unexpected C-STORE service message"): the send then waits out the whole DIMSE timeout.
    The reactor's only non-blocking read of that queue comes right after its pause check, so a read
    made while the checkpoint is cleared is one the reactor should not make: it gets nothing. The
    fix proposed upstream (docs/upstream/) re-checks the checkpoint in the reactor itself; drop this
    once a pynetdicom release has it.
    """
    read = assoc.dimse.get_msg

    def get_msg(block: bool = False) -> Any:
        if not block and not assoc._reactor_checkpoint.is_set():
            return None, None
        return read(block)

    assoc.dimse.get_msg = get_msg  # type: ignore[method-assign]


class DicomLink:
    """A reusable association to one DICOM destination."""

    def __init__(self, dest: Destination, calling_ae: str, settings: EgressSettings) -> None:
        self.dest = dest
        self.ae = AE(ae_title=dest.calling_ae_title or calling_ae)
        self.ae.acse_timeout = settings.timeouts.acse
        self.ae.dimse_timeout = settings.timeouts.dimse
        self.ae.network_timeout = settings.timeouts.network
        self.ae.maximum_pdu_size = dest.max_pdu_bytes
        self.tls = client_tls_context(dest)
        self.assoc: Association | None = None
        self.offered: set[tuple[str, str]] = set()
        self.last_used = 0.0

    def _contexts(self) -> list:
        contexts = []
        classes = sorted({sop for sop, _ in self.offered})
        for sop, ts in sorted(self.offered):
            if ts not in _UNCOMPRESSED:
                contexts.append(build_context(sop, [ts]))
        for sop in classes:
            contexts.append(build_context(sop, list(_UNCOMPRESSED)))
        return contexts

    def _associate(self) -> Association:
        kwargs = {}
        if self.tls is not None:
            server_name = self.dest.tls.server_name if self.dest.tls else None
            kwargs["tls_args"] = (self.tls, server_name or self.dest.host)
        assoc = self.ae.associate(
            self.dest.host,
            self.dest.port,
            contexts=self._contexts(),
            ae_title=self.dest.ae_title,
            evt_handlers=[(evt.EVT_CONN_OPEN, _no_delay)],
            **kwargs,
        )
        if assoc.is_established:
            guard_reactor(assoc)
            return assoc
        if assoc.is_rejected:
            p = assoc.acceptor.primitive
            raise TransientError(
                f"association rejected (result {p.result}, source {p.result_source}, reason {p.diagnostic})"
            )
        raise TransientError(f"cannot reach {self.dest.host}:{self.dest.port} (refused or no answer)")

    def send(self, path: Path, sop_class: str, ts: str, sop_uid: str) -> int:
        """C-STORE one file; returns the status. Raises TransientError or PermanentError."""
        key = (sop_class, ts)
        if self.assoc is None or not self.assoc.is_established or key not in self.offered:
            self.close()
            if len({s for s, _ in self.offered | {key}}) > _MAX_CLASSES:
                self.offered = set()
            self.offered.add(key)
            self.assoc = self._associate()
        accepted = [cx for cx in self.assoc.accepted_contexts if cx.abstract_syntax == sop_class]
        as_is = any(cx.transfer_syntax[0] == ts for cx in accepted)
        dataset: Dataset | Path
        if as_is:
            dataset = path  # sent as it lies on disk, past the last gate: not decoded, not re-encoded
        elif any(cx.transfer_syntax[0] in _UNCOMPRESSED for cx in accepted):
            dataset = dcmread(path)
            try:
                dataset.decompress()
            except Exception as exc:  # a decoder failure is about this instance, not the destination
                raise PermanentError(
                    "decompress-failed", f"cannot decompress for this destination ({exc})"
                ) from None
        else:
            raise PermanentError(
                "not-accepted",
                f"{self.dest.ae_title} accepts neither {UID(ts).name} nor uncompressed"
                f" for SOP class {sop_class}",
            )
        try:
            rsp = self.assoc.send_c_store(dataset)
        except RuntimeError:  # the association ended under us (peer abort, network timeout)
            self.abort()
            raise TransientError("the association ended before the C-STORE could be sent") from None
        self.last_used = time.monotonic()
        if "Status" not in rsp:
            self.abort()
            raise TransientError("no response to C-STORE (connection lost or DIMSE timeout)")
        return int(rsp.Status)

    def idle_for(self) -> float:
        return time.monotonic() - self.last_used

    def close(self) -> None:
        if self.assoc is not None and self.assoc.is_established:
            self.assoc.release()
        self.assoc = None

    def abort(self) -> None:
        if self.assoc is not None and self.assoc.is_established:
            self.assoc.abort()
        self.assoc = None


class FolderLink:
    """A local folder as destination: the demo's archive, and a drop box for sites without a PACS."""

    def __init__(self, dest: Destination) -> None:
        assert dest.folder is not None
        self.folder = dest.folder

    def send(self, path: Path, sop_class: str, ts: str, sop_uid: str) -> int:
        """Write ``<new SOP Instance UID>.dcm``: the same instance again replaces itself, never doubles."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            replace_durable(self.folder / f"{sop_uid}.dcm", path.read_bytes())
        except OSError as exc:
            raise TransientError(f"cannot write to {self.folder} ({exc.strerror})") from None
        return 0x0000

    def idle_for(self) -> float:
        return 0.0

    def close(self) -> None:
        """Nothing is held open: each file is made durable as it is written."""

    abort = close


@dataclass
class _Backoff:
    failures: int = 0
    until: float = 0.0


class Sender(threading.Thread):
    """Works through one destination's pending deliveries, oldest first.

    No failure ends the thread: whatever goes wrong sending one delivery quarantines that
    delivery, and a failure around it (the state store or the audit trail cannot be written,
    the outbox cannot be read) is waited out with the destination's backoff, the delivery still
    pending. Sending it again later is safe: it carries the same keyed UIDs.
    """

    def __init__(
        self,
        name: str,
        dest: Destination,
        calling_ae: str,
        settings: EgressSettings,
        store: StateStore,
        layout: Layout,
        audit: AuditTrail,
        on_job_done: Callable[[int, str], None],
        flush: Callable[[], None],
    ) -> None:
        super().__init__(name=f"egress-{name}", daemon=True)
        self.dest_name = name
        self.dest = dest
        self.settings = settings
        self.store = store
        self.layout = layout
        self.audit = audit
        self.on_job_done = on_job_done
        self.flush = flush
        self.link: DicomLink | FolderLink = (
            FolderLink(dest) if dest.is_folder else DicomLink(dest, calling_ae, settings)
        )
        self.wake = threading.Event()
        self._stop_event = threading.Event()
        self._backoff = _Backoff()

    def stop(self) -> None:
        self._stop_event.set()
        self.wake.set()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self._step()
            except Exception as exc:  # the environment, or a fault of ours: back off, the delivery waits
                self._hold_back(exc)
        self._close_link()

    def _step(self) -> None:
        now = time.time()
        if now < self._backoff.until:
            self._sleep(self._backoff.until - now)
            return
        batch = self.store.due_deliveries(self.dest_name, now)
        if not batch:
            if self.link.idle_for() > self.settings.idle_release_s:
                self.link.close()
            due = self.store.next_due(self.dest_name)
            self._sleep(1.0 if due is None else min(1.0, max(0.01, due - now)))
            return
        # The batch was claimed for lease_s: past half of it (a slow archive), the rest is claimed
        # again rather than sent late, when another node may already have taken it and sent it too.
        claim_ends = now + self.store.lease_s / 2
        for delivery in batch:
            if self._stop_event.is_set() or time.time() < self._backoff.until or time.time() > claim_ends:
                break
            try:
                self._deliver(delivery)
            except LeaseLost as exc:  # another node's sender closed it after this node's lease ran out
                log.warning("delivery closed by another node", destination=self.dest_name, error=str(exc))

    def _hold_back(self, exc: Exception) -> None:
        retry = self.settings.retry
        self._backoff.failures += 1
        delay = min(retry.max_delay_s, retry.first_delay_s * 2 ** (self._backoff.failures - 1))
        self._backoff.until = time.time() + delay
        error = describe_environment(exc) if is_environment(exc) else describe_exception(exc)
        log.error(
            "sender cannot go on for now; will try again",
            destination=self.dest_name,
            error=error,
            retry_in_s=delay,
        )
        self._close_link(abort=True)

    def _close_link(self, abort: bool = False) -> None:
        """Let go of the association; one that breaks while we do is gone anyway."""
        try:
            if abort:
                self.link.abort()
            else:
                self.link.close()
        except Exception as exc:
            log.warning("association closed uncleanly", destination=self.dest_name, error=type(exc).__name__)

    def _sleep(self, seconds: float) -> None:
        self.wake.wait(seconds)
        self.wake.clear()

    def _deliver(self, d: Delivery) -> None:
        retry = self.settings.retry
        path = self.layout.abs(d.path)
        if time.time() - d.created_at > retry.give_up_after_h * 3600:
            self._quarantine(
                d,
                "destination-unreachable",
                f"not delivered to {self.dest_name} within {retry.give_up_after_h:g} h",
            )
            return
        try:
            status = self.link.send(path, d.sop_class, d.transfer_syntax, d.sop_uid)
        except TransientError as exc:
            self._retry(d, str(exc), None)
            return
        except PermanentError as exc:
            self._quarantine(d, exc.code, str(exc))
            return
        except Exception as exc:
            if is_environment(exc):
                raise
            # This instance: a missing or unreadable outbox file, a dataset pynetdicom cannot encode
            # (a two-valued SOP Instance UID). Messages describe the de-identified copy, not the original.
            self._close_link(abort=True)
            self._quarantine(d, "send-failed", f"{type(exc).__name__}: {str(exc)[:200]}")
            return
        if delivered(status):
            with self.audit.batch(sync=False):
                self.audit.record(
                    "instance_forwarded",
                    job=d.job_id,
                    route=d.route,
                    destination=self.dest_name,
                    status=f"0x{status:04X}",
                    new_sop_uid=d.sop_uid,
                    patient=d.patient_pseudonym,
                    attempt=d.attempts + 1,
                )
            completion = self.store.mark_delivered(d.id, status, durable=False)
            # One flush for the record and the row, before the files they free are removed.
            self.flush()
            self._backoff = _Backoff()
            remove_output(self.layout, self.store, completion.output_path)
            if completion.spool_path is not None:
                self.on_job_done(completion.job_id, completion.spool_path)
            return
        meaning = code_to_category(status)
        if transient(status):
            self._retry(d, f"destination answered 0x{status:04X} ({meaning})", status)
        else:
            self._quarantine(
                d, f"refused-0x{status:04X}", f"{self.dest_name} answered 0x{status:04X} ({meaning})"
            )

    def _retry(self, d: Delivery, error: str, status: int | None) -> None:
        retry = self.settings.retry
        self._backoff.failures += 1
        delay = min(retry.max_delay_s, retry.first_delay_s * 2 ** (self._backoff.failures - 1))
        self._backoff.until = time.time() + delay
        attempts = self.store.retry_at(d.id, self._backoff.until, error, status)
        self.audit.record(
            "delivery_retry",
            job=d.job_id,
            route=d.route,
            destination=self.dest_name,
            attempt=attempts,
            error=error,
            retry_in_s=round(delay, 3),
        )
        log.warning("delivery failed, will retry", destination=self.dest_name, error=error, retry_in_s=delay)

    def _quarantine(self, d: Delivery, code: str, reason: str) -> None:
        folder = self.layout.quarantine / uuid.uuid4().hex
        src = self.layout.abs(d.path)
        if src.exists():
            link_or_copy(src, folder / "instance.dcm")
        else:
            folder.mkdir(parents=True, exist_ok=True)
        q = NewQuarantine("egress", code, reason, self.layout.rel(folder), d.route, self.dest_name)
        qid, completion = self.store.quarantine_delivery(d.id, q)
        self.audit.record(
            "instance_quarantined",
            job=d.job_id,
            route=d.route,
            destination=self.dest_name,
            stage="egress",
            code=code,
            reason=reason,
            quarantine=qid,
            new_sop_uid=d.sop_uid,
            patient=d.patient_pseudonym,
        )
        log.warning("delivery quarantined", destination=self.dest_name, code=code, quarantine=qid)
        # After the record: the file's row is a store write too, and the record must not wait on it.
        remove_output(self.layout, self.store, completion.output_path)
        if completion.spool_path is not None:
            self.on_job_done(completion.job_id, completion.spool_path)
