"""Ingress: the Storage SCP the clinic PACS sends to.

pynetdicom runs the C-STORE handler in the association's own thread, so the handler
does only what the answer depends on: check the dataset parses strictly (``headers.strict``:
a lying length, a wrong VR or multiplicity, broken encapsulation or deep nesting is refused
here with 0xC000 and the rule it broke, before anything is acknowledged), write the bytes to
the spool, record the job (SQLite) and the receipt (audit trail), make all three durable with
one flush of the file system (``files.FileSystemFlush``, shared by concurrent associations),
then answer. De-identification happens later, from the queue; a slow model here
would time the sender out.

Who may send is decided when the association is requested: called AE title, calling
AE title together with source address, and the spool's high-water mark. Refusals are
audited as security events. How long a connection may take to say who it is, and how
many may wait meanwhile, is connections.py's business.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from pydicom.dataset import Dataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import (
    UID,
    AllTransferSyntaxes,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, AllStoragePresentationContexts, VerificationPresentationContexts, evt
from pynetdicom.association import Association
from pynetdicom.transport import ThreadedAssociationServer

from ..audit.trail import AuditTrail
from ..config import Settings
from ..dicomio import read_instance
from ..headers.errors import Refused
from ..headers.pseudonyms import SiteKey
from .connections import ConnectionGuard, printable
from .failures import record_or_log
from .files import Layout, write_durable, write_new
from .store import NewJob, StateStore

log = structlog.get_logger("dicom_anon.ingress")

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_SOP_CLASS_MISMATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000

_UNCOMPRESSED = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
]


def decodable_transfer_syntaxes() -> list[UID]:
    """Every transfer syntax whose pixel data pydicom can decode here, compressed ones first.

    pynetdicom accepts, per proposed context, the first of *our* syntaxes that the sender
    offered; listing compressed syntaxes first keeps what was sent when a sender offers
    both (a JPEG photo stays the camera's JPEG).
    """
    compressed = []
    for ts in AllTransferSyntaxes:
        if ts in _UNCOMPRESSED:
            continue
        try:
            if get_decoder(ts).is_available:
                compressed.append(ts)
        except NotImplementedError:
            continue
    return compressed + _UNCOMPRESSED


def server_tls_context(settings: Settings) -> ssl.SSLContext | None:
    tls = settings.ingress.tls
    if tls is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tls.certificate, tls.private_key)
    if tls.client_ca is not None:
        ctx.load_verify_locations(tls.client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_OPTIONAL
    return ctx


@dataclass(frozen=True)
class _Rejection:
    result: int
    source: int
    diagnostic: int
    reason: str


class _Server(ThreadedAssociationServer):
    """pynetdicom's server, with the TLS handshake moved off the accept loop into the connection's
    thread: a client that never finishes its handshake must not stall every other sender, and a
    failed handshake is a security event to audit. The connection's thread then stays with it
    for the guard (connections.py); it must not hold up shutdown, hence daemon threads."""

    daemon_threads = True
    # The listen backlog: with socketserver's 5, a burst of connections has the kernel drop SYNs,
    # and the clinic's connection waits out TCP's 1 s, 3 s... retransmissions behind the burst.
    request_queue_size = 128
    on_tls_failure: Callable[[tuple[str, int], Exception], None]
    handshake_timeout: float = 5.0
    guard: ConnectionGuard

    def get_request(self) -> tuple[Any, tuple[str, int]]:
        client, address = self.socket.accept()
        # pynetdicom writes a response in several small sends; without this, Nagle's algorithm
        # and the sender's delayed ACK add some 40 ms to every C-STORE.
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return client, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if self.ssl_context:
            try:
                request.settimeout(self.handshake_timeout)
                request.do_handshake()
                request.settimeout(None)
            except (OSError, ValueError) as exc:
                self.on_tls_failure(client_address, exc)
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)
        self.guard.watch(request)


class Ingress:
    """The Storage + Verification SCP. ``settings`` may be replaced on reload (allow-lists and
    limits apply to the next association); the listening address and TLS need a restart."""

    def __init__(
        self,
        settings: Settings,
        store: StateStore,
        layout: Layout,
        audit: AuditTrail,
        key: SiteKey,
        on_job: Callable[[], None],
        flush: Callable[[], None],
    ) -> None:
        self.settings = settings
        self.flush = flush
        self.store = store
        self.layout = layout
        self.audit = audit
        self.key = key
        self.on_job = on_job
        self._ae: AE | None = None
        self._server: _Server | None = None

    # --- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        ing = self.settings.ingress
        ae = AE(ae_title=ing.ae_title)
        syntaxes = decodable_transfer_syntaxes()
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, syntaxes)
        for cx in VerificationPresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        # The guard counts the slots, and only for callers that passed the checks; pynetdicom's own
        # count (every open connection, waiting ones too) is set where it cannot be reached first.
        ae.maximum_associations = 2 * (ing.max_associations + ing.max_waiting_connections) + 16
        ae.maximum_pdu_size = ing.max_pdu_bytes
        ae.acse_timeout = ing.timeouts.acse
        ae.dimse_timeout = ing.timeouts.dimse
        ae.network_timeout = ing.timeouts.network
        self.guard = ConnectionGuard(lambda: self.settings.ingress, self.audit)
        handlers = [
            *self.guard.handlers(),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_C_STORE, self._on_store),
        ]
        server = ae.make_server(
            (ing.host, ing.port),
            ssl_context=server_tls_context(self.settings),
            evt_handlers=handlers,
            server_class=_Server,
        )
        server.on_tls_failure = self._on_tls_failure
        server.handshake_timeout = ing.request_timeout_s
        server.guard = self.guard
        # ae.shutdown() stops the servers it lists; start_server(block=False) would add ours the same way,
        # but it cannot take our server class.
        ae._servers.append(server)
        threading.Thread(target=server.serve_forever, name="ingress-accept", daemon=True).start()
        self._ae, self._server = ae, server
        log.info("listening", address=ing.listen, ae_title=ing.ae_title, tls=ing.tls is not None)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def stop(self) -> None:
        if self._ae is not None:
            self._ae.shutdown()
            self._ae = None

    # --- association -------------------------------------------------------------------

    def _check(self, calling: str, called: str, address: str) -> _Rejection | None:
        ing = self.settings.ingress
        if called.strip() != ing.ae_title:
            return _Rejection(0x01, 0x01, 0x07, f"called AE title {called.strip()!r} is not ours")
        if not ing.allows(calling, address):
            return _Rejection(
                0x01, 0x01, 0x03, f"calling AE {calling.strip()!r} from {address} is not allowed"
            )
        spool = self.settings.spool
        held = self.store.spool_bytes()
        if held > spool.high_water_mb * 1024 * 1024:
            return _Rejection(0x02, 0x03, 0x01, f"spool above its high-water mark ({held // 2**20} MiB held)")
        free = self.layout.free_bytes()
        if free < spool.min_free_mb * 1024 * 1024:
            return _Rejection(0x02, 0x03, 0x01, f"disk nearly full ({free // 2**20} MiB free)")
        return None

    def _on_requested(self, event: evt.Event) -> None:
        assoc = event.assoc
        ing = self.settings.ingress
        self.guard.requested(assoc, ing.timeouts.acse)
        rq = assoc.requestor.primitive
        calling, called = str(rq.calling_ae_title), str(rq.called_ae_title)
        address = assoc.requestor.address
        try:
            rejection = self._check(calling, called, address)
            if rejection is None and not self.guard.admit(assoc):
                # Transient, local limit exceeded: the sender tries again later.
                rejection = _Rejection(
                    0x02, 0x03, 0x02, f"more than {ing.max_associations} associations at once"
                )
        except Exception as exc:
            # Fail closed: pynetdicom would go on and accept a request whose check raised (the state
            # store unreadable, say). Transient: the sender tries again later.
            rejection = _Rejection(
                0x02, 0x03, 0x01, f"the request could not be checked ({type(exc).__name__})"
            )
        try:
            if rejection is not None:
                self._reject(assoc, calling, called, address, rejection)
        finally:
            self.guard.decided(assoc)

    def _reject(
        self, assoc: Association, calling: str, called: str, address: str, rejection: _Rejection
    ) -> None:
        record_or_log(
            self.audit,
            "association_rejected",
            category="security",
            calling_ae=printable(calling.strip()),
            called_ae=printable(called.strip()),
            peer=address,
            reason=rejection.reason,
        )
        log.warning(
            "association rejected",
            calling_ae=printable(calling.strip()),
            peer=address,
            reason=rejection.reason,
        )
        assoc.acse.send_reject(rejection.result, rejection.source, rejection.diagnostic)
        assoc.kill()

    def _on_accepted(self, event: evt.Event) -> None:
        assoc = event.assoc
        rejected = sorted(
            {f"{cx.abstract_syntax}:{'/'.join(cx.transfer_syntax)}" for cx in assoc.rejected_contexts}
        )
        self.audit.record(
            "association_accepted",
            calling_ae=assoc.requestor.ae_title,
            called_ae=assoc.acceptor.ae_title,
            peer=assoc.requestor.address,
            tls=self.settings.ingress.tls is not None,
            contexts_accepted=len(assoc.accepted_contexts),
            contexts_rejected=rejected,
        )
        if rejected:
            log.warning("presentation contexts rejected", peer=assoc.requestor.address, contexts=rejected)

    def _on_tls_failure(self, client_address: tuple[str, int], exc: Exception) -> None:
        reason = f"TLS handshake failed ({type(exc).__name__}: {str(exc)[:120]})"
        record_or_log(
            self.audit, "association_rejected", category="security", peer=client_address[0], reason=reason
        )
        log.warning("association rejected", peer=client_address[0], reason=reason)

    # --- C-STORE -----------------------------------------------------------------------

    def _refuse(self, event: evt.Event, status: int, code: str, reason: str) -> Dataset:
        assoc = event.assoc
        record_or_log(
            self.audit,
            "instance_refused",
            calling_ae=assoc.requestor.ae_title,
            peer=assoc.requestor.address,
            status=f"0x{status:04X}",
            code=code,
            reason=reason[:300],
        )
        log.warning("instance refused", status=f"0x{status:04X}", code=code, peer=assoc.requestor.address)
        rsp = Dataset()
        rsp.Status = status
        rsp.ErrorComment = f"{code}: {reason}"[:64]
        return rsp

    def _on_store(self, event: evt.Event) -> Dataset | int:
        """Durable write, then the answer. Never runs the pipeline."""
        assoc = event.assoc
        try:
            data = event.encoded_dataset(include_meta=True)
            ds = read_instance(data, self.settings.ingress.max_instance_mb * 2**20)
        except Refused as refused:
            return self._refuse(event, STATUS_CANNOT_UNDERSTAND, refused.code, refused.reason)
        except Exception as exc:  # a dataset pynetdicom could not even hand over: same answer
            return self._refuse(event, STATUS_CANNOT_UNDERSTAND, "corrupt-dicom", type(exc).__name__)
        sop_uid = str(ds.get("SOPInstanceUID", "")).strip()
        if not sop_uid:
            return self._refuse(
                event, STATUS_CANNOT_UNDERSTAND, "missing-sop-instance", "no SOP Instance UID"
            )
        if str(ds.SOPClassUID) != str(event.request.AffectedSOPClassUID):
            return self._refuse(
                event,
                STATUS_SOP_CLASS_MISMATCH,
                "sop-class-mismatch",
                "the dataset's SOP Class UID differs from the one the request names",
            )
        try:
            path = self.layout.new_spool_path()
            if self.store.shared:
                # The job row is durable (and other nodes' workers see it) as soon as it commits,
                # before self.flush below: the file it names must be on disk first.
                write_durable(path, data)
            else:
                write_new(path, data)  # durable with the job and the receipt, by self.flush below
        except OSError as exc:
            return self._refuse(
                event, STATUS_OUT_OF_RESOURCES, "spool-write-failed", exc.strerror or str(exc)
            )
        sop_key = self.key.keyed_hash(sop_uid)
        job = NewJob(
            calling_ae=assoc.requestor.ae_title,
            peer=assoc.requestor.address,
            sop_class=str(ds.SOPClassUID),
            sop_key=sop_key,
            digest=hashlib.sha256(data).hexdigest(),
            transfer_syntax=str(event.context.transfer_syntax),
            size=len(data),
            spool_path=self.layout.rel(path),
        )
        try:
            job_id, new = self.store.add_job(job, durable=False)
        except Exception as exc:  # sqlite3 errors (disk full, I/O) and anything else: we cannot promise it
            path.unlink(missing_ok=True)
            return self._refuse(event, STATUS_OUT_OF_RESOURCES, "state-write-failed", type(exc).__name__)
        try:
            with self.audit.batch(sync=False):
                if new:
                    self.audit.record(
                        "instance_received",
                        job=job_id,
                        sop_class=job.sop_class,
                        sop_uid_hash=sop_key,
                        transfer_syntax=job.transfer_syntax,
                        bytes=job.size,
                        calling_ae=job.calling_ae,
                        peer=job.peer,
                    )
                else:
                    path.unlink(missing_ok=True)
                    self.audit.record(
                        "instance_duplicate",
                        job=job_id,
                        sop_uid_hash=sop_key,
                        calling_ae=job.calling_ae,
                        peer=job.peer,
                    )
            # One flush: the spool file, the job (or the earlier one a duplicate names) and the
            # receipt are on disk before the answer.
            self.flush()
        except OSError as exc:
            # The job is recorded, but a receipt not audited and on disk must not be acknowledged; a
            # re-send is recognised as the same instance and answered once the trail can be written.
            log.error("audit write failed", error=exc.strerror)
            rsp = Dataset()
            rsp.Status = STATUS_OUT_OF_RESOURCES
            rsp.ErrorComment = "audit trail cannot be written"
            return rsp
        if not new:
            return STATUS_SUCCESS
        log.debug("instance received", job=job_id, bytes=job.size, at=time.time())
        self.on_job()
        return STATUS_SUCCESS
