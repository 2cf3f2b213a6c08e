"""Connections to the Storage SCP from TCP accept to their end: slots, time limits, and one audit
event for every connection that is refused or ends badly.

pynetdicom counts every open connection against ``maximum_associations`` from the moment it is
accepted, before the peer has said who it is, and waits ``acse_timeout`` (30 s) for that: ten
idle connections from anywhere locked the clinic out, and nobody heard of them. Here a
connection has ``ingress.request_timeout_s`` to send its A-ASSOCIATE-RQ; at most
``ingress.max_waiting_connections`` may wait at once (a new one pushes the longest-waiting one
out); only associations that passed the AE title and address checks take one of the
``ingress.max_associations`` slots. A connection that ends without an association request
(silence, a bare connect, protocol garbage, an undecodable request such as one with control
characters in its AE titles) is audited once with what is known of it: address, the first
bytes, the AE titles as printable escapes. So is an admitted association that ends in an abort.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from pynetdicom import evt
from pynetdicom.association import Association

from ..audit.trail import AuditTrail
from ..config import IngressSettings
from .failures import record_or_log

log = structlog.get_logger("dicom_anon.ingress")

_HEAD_BYTES = 80  # enough of the first PDU for its type, length and both AE titles
_ASSOCIATE_RQ = 0x01
_P_DATA_TF = 0x04
_PDU_TYPES = range(0x01, 0x08)  # PS3.8 9.3: A-ASSOCIATE-RQ to A-ABORT
_OTHER_PDU_LIMIT = 1 << 20  # association requests, releases, aborts; and the least P-DATA-TF limit


def printable(text: str | bytes) -> str:
    """An AE title as it can be shown and searched: printable ASCII as is, anything else escaped."""
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    return ascii(text)[1:-1]


def valid_ae_title(text: str) -> bool:
    """PS3.5's AE VR: printable ASCII (no control characters, no backslash), not only spaces."""
    return bool(text.strip()) and all(0x20 <= ord(c) <= 0x7E and c != "\\" for c in text)


def _describe_head(head: bytes) -> tuple[str, dict[str, str]]:
    """What the first bytes of a connection that never made an association request say about it."""
    if not head:
        return "closed without sending anything", {}
    if head[0] != _ASSOCIATE_RQ:
        guess = ""
        if head[:1] == b"\x16":
            guess = " (a TLS handshake: is the sender configured for TLS on a plain port?)"
        elif head[:3].isalpha():
            guess = " (text: another protocol, e.g. HTTP)"
        return f"not a DICOM association request (first bytes {head[:8].hex(' ')}{guess})", {}
    if len(head) < 42:
        return "association request cut short", {}
    called, calling = head[10:26].rstrip(b" \0"), head[26:42].rstrip(b" \0")
    titles = {"called_ae": printable(called), "calling_ae": printable(calling)}
    if not (valid_ae_title(called.decode("latin-1")) and valid_ae_title(calling.decode("latin-1"))):
        return "association request with an AE title holding control or non-ASCII characters", titles
    return "association request that could not be decoded", titles


@dataclass(eq=False)
class _Connection:
    assoc: Association
    address: str
    opened: float = field(default_factory=time.monotonic)
    head: bytes = b""
    requested: bool = False  # its A-ASSOCIATE-RQ arrived: no longer waiting
    decided: threading.Event = field(default_factory=threading.Event)  # ... and was accepted or refused
    dropped: str | None = None
    closed: bool = False  # the peer closed its side
    admitted: bool = False
    instance_bytes: int = 0  # of the instance being received, so far


class ConnectionGuard:
    """Bound to the SCP's events; ``watch`` runs in each connection's handler thread."""

    def __init__(self, settings: Callable[[], IngressSettings], audit: AuditTrail) -> None:
        self._settings = settings
        self.audit = audit
        self._lock = threading.Lock()
        self._by_socket: dict[Any, _Connection] = {}
        self._by_assoc: dict[Association, _Connection] = {}

    def handlers(self) -> list[tuple[Any, Callable[[evt.Event], None]]]:
        return [(evt.EVT_CONN_OPEN, self._on_open)]

    # --- events (pynetdicom's threads) ----------------------------------------------------

    def _on_open(self, event: evt.Event) -> None:
        """A new connection: give it the short request time limit, and make room if too many wait."""
        settings = self._settings()
        assoc = event.assoc
        conn = _Connection(assoc, str(event.address[0]))
        assoc.acse_timeout = settings.request_timeout_s  # also the DUL's ARTIM timer
        self._guard_recv(conn)
        with self._lock:
            waiting = [c for c in self._by_assoc.values() if not (c.requested or c.closed or c.dropped)]
            if len(waiting) >= settings.max_waiting_connections:
                oldest = min(waiting, key=lambda c: c.opened)
                oldest.dropped = (
                    f"dropped after {time.monotonic() - oldest.opened:.1f} s without an association request:"
                    f" {len(waiting)} connections were waiting"
                )
                self._shut(oldest)
            self._by_socket[assoc.dul.socket.socket] = conn
            self._by_assoc[assoc] = conn

    def _guard_recv(self, conn: _Connection) -> None:
        """Wrap the connection's own recv, which pynetdicom calls for each PDU's 6-byte header and
        then for its body: keep the first bytes the peer sends, and drop a connection whose PDU or
        instance is larger than we take.

        pynetdicom reports data (EVT_DATA_RECV) only once a whole PDU has arrived and its type is
        known, which garbage and a stalled sender never achieve. And it reads a PDU of whatever
        length the header states (up to 4 GiB) and keeps every fragment of an instance in memory
        until the last: one sender could take all of the service's memory. Counted here, a PDU
        is refused from its header, before its body is read, and an instance at its first
        fragment past ``max_instance_mb``.
        """
        sock = conn.assoc.dul.socket
        recv = sock.recv
        pending: list[int] = []  # the type of the PDU whose body comes next

        def guarded_recv(nr_bytes: int) -> bytearray:
            data = recv(nr_bytes)
            if len(conn.head) < _HEAD_BYTES:
                conn.head += bytes(data[: _HEAD_BYTES - len(conn.head)])
            conn.closed = len(data) < nr_bytes  # pynetdicom's recv returns short only at the end
            if pending:
                if pending.pop() == _P_DATA_TF:
                    self._count_fragments(conn, data)
            elif nr_bytes == 6 and len(data) == 6 and data[0] in _PDU_TYPES:  # pynetdicom reads no other
                pdu_type, length = data[0], int.from_bytes(data[2:6], "big")
                limit = self._pdu_limit(pdu_type)
                if length > limit:
                    self._drop(conn, f"a PDU of {length} bytes, more than the {limit} taken")
                pending.append(pdu_type)
            return data

        sock.recv = guarded_recv  # type: ignore[method-assign]

    def _pdu_limit(self, pdu_type: int) -> int:
        """A P-DATA-TF PDU may be as long as we announced (or as an instance, with no limit
        announced); association PDUs are small (a request with user identity, a few kB)."""
        settings = self._settings()
        if pdu_type != _P_DATA_TF:
            return _OTHER_PDU_LIMIT
        if settings.max_pdu_bytes:
            return max(settings.max_pdu_bytes, _OTHER_PDU_LIMIT)
        return settings.max_instance_mb * 2**20

    def _count_fragments(self, conn: _Connection, body: bytes | bytearray) -> None:
        """Add up the dataset fragments of the instance being received (PS3.8 9.3.5.1: each
        presentation data value is a 4-byte length, a context ID, a control byte whose bit 0 says
        command and bit 1 last fragment, then the fragment)."""
        pos = 0
        while pos + 6 <= len(body):
            length = int.from_bytes(body[pos : pos + 4], "big")
            control = body[pos + 5]
            if not control & 0x01:
                conn.instance_bytes = 0 if control & 0x02 else conn.instance_bytes + max(length - 2, 0)
            pos += 4 + max(length, 2)
        limit = self._settings().max_instance_mb
        if conn.instance_bytes > limit * 2**20:
            self._drop(conn, f"an instance of more than {limit} MiB (ingress.max_instance_mb)")

    def _drop(self, conn: _Connection, reason: str) -> None:
        if conn.dropped is None:
            conn.dropped = f"dropped: {reason}"
            log.warning("connection dropped", peer=conn.address, reason=reason)
        self._shut(conn)

    @staticmethod
    def _shut(conn: _Connection) -> None:
        sock = conn.assoc.dul.socket.socket if conn.assoc.dul.socket else None
        if sock is not None:
            with contextlib.suppress(OSError):  # already gone
                sock.shutdown(socket.SHUT_RDWR)

    # --- called from ingress's EVT_REQUESTED handler ----------------------------------------

    def requested(self, assoc: Association, acse_timeout: float) -> None:
        """The association request arrived: from now on the usual ACSE time limit applies."""
        assoc.acse_timeout = acse_timeout
        conn = self._by_assoc.get(assoc)
        if conn is not None:
            conn.requested = True

    def decided(self, assoc: Association) -> None:
        """Ingress has accepted (``admit``) or refused (and audited) the request."""
        conn = self._by_assoc.get(assoc)
        if conn is not None:
            conn.decided.set()

    def admit(self, assoc: Association) -> bool:
        """Take one of the ``max_associations`` slots for an association that passed every check."""
        limit = self._settings().max_associations
        with self._lock:
            held = [c for c in self._by_assoc.values() if c.admitted and c.assoc.is_alive()]
            if len(held) >= limit:
                return False
            conn = self._by_assoc.get(assoc)
            if conn is not None:
                conn.admitted = True
            return True

    # --- the connection's handler thread ----------------------------------------------------

    def watch(self, request: Any) -> None:
        """Wait until the connection has made its request (or ended), then until an admitted
        association ends; audit what went wrong once."""
        with self._lock:
            conn = self._by_socket.pop(request, None)
        if conn is None:
            return
        assoc = conn.assoc
        try:
            while assoc.is_alive() and not conn.closed and not conn.decided.wait(0.1):
                pass
            # A request and its sender's close can arrive together: give ingress a moment to decide.
            if not conn.decided.wait(0.5 if assoc.is_alive() else 0):
                self._audit_unrequested(conn)
                return
            if not conn.admitted:
                return  # refused at the request: ingress audited it
            assoc.join()
            if assoc.is_rejected:  # by pynetdicom's negotiation, after our checks let it through
                record_or_log(
                    self.audit,
                    "association_rejected",
                    category="security",
                    calling_ae=printable(assoc.requestor.ae_title),
                    peer=conn.address,
                    reason="refused in negotiation (no application or presentation context we accept)",
                )
            elif assoc.is_aborted:
                record_or_log(
                    self.audit,
                    "association_aborted",
                    category="security",
                    calling_ae=printable(assoc.requestor.ae_title),
                    peer=conn.address,
                    reason=conn.dropped or "aborted (by the peer, on a protocol error or a time limit)",
                )
                log.warning("association aborted", calling_ae=assoc.requestor.ae_title, peer=conn.address)
        finally:
            with self._lock:
                self._by_assoc.pop(assoc, None)

    def _audit_unrequested(self, conn: _Connection) -> None:
        if conn.dropped is not None:
            reason, titles = conn.dropped, {}
        elif not conn.head and not conn.closed:
            reason, titles = f"no association request within {self._settings().request_timeout_s:g} s", {}
        else:
            reason, titles = _describe_head(conn.head)
        record_or_log(
            self.audit,
            "association_rejected",
            category="security",
            peer=conn.address,
            reason=reason,
            **titles,
        )
        log.warning("connection refused", peer=conn.address, reason=reason, **titles)
