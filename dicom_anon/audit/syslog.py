"""Syslog for audit messages: RFC 5424 framing, sent over TLS (RFC 5425) or UDP (RFC 5426).

Hand-written, some hundred lines, rather than taken from a library: the syslog packages on PyPI
are logging handlers that own their socket, send from the caller's thread and swallow errors;
the ATNA relay must know whether a message got out so that it stays queued until it did, and
must notice a repository that went away before it writes into a dead connection.
"""

from __future__ import annotations

import contextlib
import re
import select
import socket
import ssl
from datetime import UTC, datetime
from pathlib import Path

# IHE ITI-20: facility 10 (security/authorization), severity 5 (notice).
PRI = 10 * 8 + 5
MSGID = "IHE+RFC-3881"
APP_NAME = "dicom-anon"
BOM = b"\xef\xbb\xbf"
# RFC 5426 3.2: a datagram must fit in one UDP packet; IPv4's limit.
MAX_UDP = 65507
_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?(Z|[+-]\d\d:\d\d)")


def hostname() -> str:
    """This machine's name as RFC 5424's HOSTNAME allows it (printable ASCII, no spaces)."""
    name = re.sub(r"[^\x21-\x7e]", "", socket.getfqdn())[:255]
    return name or "-"


def frame(message: bytes, *, timestamp: str, host: str, procid: str = "-") -> bytes:
    """One RFC 5424 syslog message: header, no structured data, and the audit message as UTF-8
    MSG (which RFC 5424 6.4 marks with a byte order mark). ``timestamp`` is when the event
    happened (the trail's time, in UTC), not when it was sent: a message sent after an outage
    still says when its event took place."""
    stamp = timestamp.replace("+00:00", "Z")
    if not _TIMESTAMP.fullmatch(stamp):
        stamp = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    header = f"<{PRI}>1 {stamp} {host} {APP_NAME} {procid} {MSGID} - "
    return header.encode("ascii") + BOM + message


def tls_context(ca: Path, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    """Client side of ATNA's node authentication: the repository's certificate checked against
    ``ca`` (and its name), ours presented when the site gives one (most repositories ask)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        context.load_cert_chain(str(cert), str(key) if key is not None else None)
    return context


class TlsTransport:
    """RFC 5425: syslog over TLS, each message prefixed by its length in octets."""

    settles = True  # TCP accepts bytes a dead peer never reads: the relay waits before forgetting them

    def __init__(self, host: str, port: int, context: ssl.SSLContext, timeout_s: float = 10.0) -> None:
        raw = socket.create_connection((host, port), timeout=timeout_s)
        try:
            self._sock = context.wrap_socket(raw, server_hostname=host)
        except BaseException:
            raw.close()
            raise

    def send(self, framed: bytes) -> None:
        self._sock.sendall(f"{len(framed)} ".encode("ascii") + framed)

    def alive(self) -> bool:
        """False once the repository closed or reset the connection. A syslog receiver never
        writes, so anything readable is its close (or a TLS session ticket, which is no news)."""
        try:
            readable, _, _ = select.select([self._sock], [], [], 0)
            if not readable:
                return True
            self._sock.setblocking(False)
            try:
                return self._sock.recv(1024) != b""
            finally:
                self._sock.setblocking(True)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return True
        except (OSError, ValueError):
            return False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()


class UdpTransport:
    """RFC 5426: one message per datagram. Nothing confirms receipt; a site that asks for UDP
    accepts that a repository that is down loses what is sent meanwhile."""

    settles = False

    def __init__(self, host: str, port: int) -> None:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        self._sock = socket.socket(info[0], socket.SOCK_DGRAM)
        self._address = info[4]

    def send(self, framed: bytes) -> None:
        if len(framed) > MAX_UDP:
            raise ValueError(f"a {len(framed)}-byte message does not fit in one UDP datagram")
        self._sock.sendto(framed, self._address)

    def alive(self) -> bool:
        return True

    def close(self) -> None:
        self._sock.close()
