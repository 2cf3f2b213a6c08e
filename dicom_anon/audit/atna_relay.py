"""The ATNA relay: reads the audit trail as it grows, queues its DICOM audit messages on disk, and
sends them in order to the hospital's Audit Record Repository, retrying with backoff.

It follows the trail file rather than hooking into the writer, for three reasons: every process
that writes the trail (the service, operators' ``audit``/``quarantine`` commands, the console) is
covered by the one relay in the service; the service never waits on it (a slow repository or a
slow queue cannot hold up a C-STORE); and nothing is lost between "written" and "queued": how far
the trail was read is stored with the queue in one transaction, so after a crash the relay reads
on from there.

Nothing is dropped. When the queue reaches ``queue_mb`` the relay stops reading the trail (a
logged alarm, repeated every few minutes) and reads on once the repository took some. Over TLS a
message leaves the queue only after the connection was still open ``SETTLE_S`` after it was sent:
TCP accepts bytes that a repository stopped meanwhile never reads, and those are sent again on the
next connection. So a repository may see a message twice after an outage, never miss one.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from ..config import AtnaSettings, Settings
from . import atna
from .syslog import TlsTransport, UdpTransport, frame, hostname, tls_context
from .trail import _last_record, rotated_files

log = structlog.get_logger("dicom_anon.atna")

SETTLE_S = 2.0
ALARM_EVERY_S = 300.0
READ_CHUNK = 1 << 20
STUDIES_KEPT_S = 30 * 86400

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    trail_seq INTEGER NOT NULL,
    event TEXT NOT NULL,
    frame BLOB NOT NULL,
    queued_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS studies (
    sop_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    sop_class TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    return db


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def site_for(settings: Settings) -> atna.Site:
    """Who the messages say reports them, and what the trail's destination names stand for."""
    config = settings.audit.atna
    assert config is not None
    ae = settings.ingress.ae_title
    host = hostname()
    return atna.Site(
        source_id=config.source_id or f"{ae}@{host}",
        ae_title=ae,
        host=host,
        trail_uri=settings.audit_path.resolve().as_uri(),
        site_id=config.site_id,
        destinations={
            name: (str(d.ae_title), str(d.host), int(d.port or 0))
            for name, d in settings.destinations.items()
            if not d.is_folder
        },
        exports=frozenset(config.export_destinations),
    )


class Relay(threading.Thread):
    """One per service: trail -> queue on disk -> repository."""

    def __init__(self, settings: Settings, *, poll_s: float = 0.25) -> None:
        super().__init__(name="atna-relay", daemon=True)
        config = settings.audit.atna
        assert config is not None
        self.config: AtnaSettings = config
        self.site = site_for(settings)
        self.trail_path = settings.audit_path
        self.poll_s = poll_s
        self.host = hostname()
        self.limit = config.queue_mb * 2**20
        settings.atna_outbox_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.db = _connect(settings.atna_outbox_path)
        self.db.executescript(_SCHEMA)
        self.state = dict(self.db.execute("SELECT key, value FROM state").fetchall())
        if "trail_offset" not in self.state:
            self._start_at_trail_end()
        self.bytes = int(self.db.execute("SELECT COALESCE(SUM(LENGTH(frame)), 0) FROM outbox").fetchone()[0])
        self.context: ssl.SSLContext | None = None
        if config.transport == "tls" and config.ca is not None:
            try:
                self.context = tls_context(config.ca, config.cert, config.key)
            except OSError as exc:  # ssl.SSLError too: a file that is not PEM, a key not the cert's
                raise OSError(errno.EINVAL, f"audit.atna: cannot use ca/cert/key ({exc})") from None
        self.transport: TlsTransport | UdpTransport | None = None
        self.unconfirmed: list[tuple[int, float]] = []  # (outbox id, when sent), in order
        self.next_id = 0  # send outbox rows with a larger id
        self.failures = 0
        self.retry_at = 0.0
        self.alarm_at = float("-inf")
        self.pruned_at = float("-inf")
        self._stop_by: float | None = None
        self._wake = threading.Event()

    # --- life cycle ------------------------------------------------------------------------

    def _start_at_trail_end(self) -> None:
        """A site that turns ATNA on gets the events from now on, not years of history at once."""
        offset, seq, inode = 0, 0, 0
        if self.trail_path.exists():
            with self.trail_path.open("rb") as f:
                last = _last_record(f)
                offset, inode = os.fstat(f.fileno()).st_size, os.fstat(f.fileno()).st_ino
            seq = int(last.get("seq", 0)) if last else 0
        with _transaction(self.db):
            self._set_state(trail_offset=offset, trail_seq=seq, trail_inode=inode)

    def stop(self, drain_s: float = SETTLE_S + 3.0) -> None:
        """Stop after sending what is queued (for at most ``drain_s``); what is left stays queued."""
        self._stop_by = time.monotonic() + drain_s
        self._wake.set()
        if self.is_alive():
            self.join(timeout=drain_s + 15)
        self._disconnect()
        self.db.close()

    def wake(self) -> None:
        self._wake.set()

    def run(self) -> None:
        while True:
            try:
                self._translate()
                self._prune()
                busy = self._deliver()
            except Exception as exc:  # the service goes on; the queue and the trail keep everything
                log.error("ATNA relay step failed; retrying", error=f"{type(exc).__name__}: {exc}")
                busy = False
                self._failed(f"{type(exc).__name__}: {exc}")
            if self._stop_by is not None and (time.monotonic() >= self._stop_by or self._drained()):
                return
            if not busy:
                self._wake.wait(self._pause())
                self._wake.clear()

    def _drained(self) -> bool:
        self._translate()
        return not self.unconfirmed and self._count() == 0

    def _pause(self) -> float:
        pause = self.poll_s
        now = time.monotonic()
        if self.retry_at > now:
            pause = min(max(self.retry_at - now, 0.01), 1.0)
        if self.unconfirmed:
            pause = min(pause, max(self.unconfirmed[0][1] + SETTLE_S - now, 0.01))
        return pause

    # --- trail -> queue --------------------------------------------------------------------

    def _translate(self) -> None:
        if self.bytes >= self.limit:
            self._queue_full()
            return
        if self.state.get("full_since"):
            log.warning("ATNA queue has room again; reading the trail on")
            with _transaction(self.db):
                self._set_state(full_since="")
        source = self._source()
        if source is None:
            return
        offset = int(self.state["trail_offset"])
        with source.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < offset:
                offset = 0  # the trail was replaced; records already relayed are skipped by seq
            f.seek(offset)
            data = f.read(min(size - offset, READ_CHUNK))
        end = data.rfind(b"\n")
        if end < 0:
            if source != self.trail_path:  # the rotated file is read to its end: on to the live one
                with _transaction(self.db):
                    self._set_state(trail_inode=self.trail_path.stat().st_ino, trail_offset=0)
                self.wake()
            return  # or a record still being written
        seq = int(self.state["trail_seq"])
        rows = []
        now = time.time()
        consumed = 0
        with _transaction(self.db):
            for line in data[: end + 1].splitlines(keepends=True):
                if self.bytes >= self.limit:
                    break  # the rest waits in the trail
                consumed += len(line)
                record = self._parse(line)
                if record is None or record["seq"] <= seq:
                    continue
                seq = record["seq"]
                for message in self._messages(record):
                    framed = frame(message, timestamp=str(record.get("ts", "")), host=self.host)
                    rows.append((seq, record["event"], framed, now))
                    self.bytes += len(framed)
            self.db.executemany(
                "INSERT INTO outbox (trail_seq, event, frame, queued_at) VALUES (?, ?, ?, ?)", rows
            )
            self._set_state(trail_offset=offset + consumed, trail_seq=seq)

    def _source(self) -> Path | None:
        """The file to read on in: the live trail, or, once it was rotated, the rest of the file
        being read when that happened (found by its inode among the rotated files)."""
        try:
            live = self.trail_path.stat().st_ino
        except FileNotFoundError:
            return None
        reading = int(self.state.get("trail_inode") or 0)
        if reading in (0, live):
            if not reading:
                with _transaction(self.db):
                    self._set_state(trail_inode=live)
            return self.trail_path
        for _, file in reversed(rotated_files(self.trail_path)):
            if file.stat().st_ino == reading:
                return file
        log.error("the trail file being read is gone (removed by retention?); reading the live one on")
        with _transaction(self.db):
            self._set_state(trail_inode=live, trail_offset=0)
        return self.trail_path

    @staticmethod
    def _parse(line: bytes) -> dict[str, Any] | None:
        try:
            record = json.loads(line)
        except ValueError:
            return None  # a damaged line: `audit verify` names it; nothing to relay
        if not isinstance(record, dict) or not isinstance(record.get("seq"), int):
            return None
        return record

    def _messages(self, record: dict[str, Any]) -> list[bytes]:
        if record.get("event") == "instance_deidentified" and record.get("new_study_uid"):
            self.db.execute(
                "INSERT OR REPLACE INTO studies VALUES (?, ?, ?, ?)",
                (
                    record.get("new_sop_uid"),
                    record["new_study_uid"],
                    record.get("sop_class", ""),
                    time.time(),
                ),
            )
        try:
            return atna.messages(record, self.site, self._study)
        except Exception as exc:  # a record this code cannot render must not stop the others
            log.error(
                "audit record not rendered as an ATNA message (it stays in the trail)",
                seq=record.get("seq"),
                audit_event=record.get("event"),
                error=f"{type(exc).__name__}: {exc}",
            )
            return []

    def _study(self, sop_uid: str) -> tuple[str, str] | None:
        row = self.db.execute(
            "SELECT study_uid, sop_class FROM studies WHERE sop_uid = ?", (sop_uid,)
        ).fetchone()
        return (row[0], row[1]) if row else None

    def _prune(self) -> None:
        now = time.monotonic()
        if now - self.pruned_at >= 3600:
            self.pruned_at = now
            self.db.execute("DELETE FROM studies WHERE at < ?", (time.time() - STUDIES_KEPT_S,))

    def _queue_full(self) -> None:
        now = time.monotonic()
        if not self.state.get("full_since"):
            with _transaction(self.db):
                self._set_state(full_since=str(time.time()))
        if now - self.alarm_at >= ALARM_EVERY_S:
            self.alarm_at = now
            log.error(
                "ATNA queue full: the repository is not taking messages; new audit events wait in the "
                "trail and are queued once it takes some (nothing is dropped)",
                queue_mb=self.config.queue_mb,
                repository=f"{self.config.host}:{self.config.port}",
                last_error=self.state.get("last_error"),
            )

    # --- queue -> repository ---------------------------------------------------------------

    def _deliver(self) -> bool:
        """Confirm what has settled, then send what is queued. True when there may be more to do now."""
        now = time.monotonic()
        if now < self.retry_at:
            return False
        if self.transport is not None and not self.transport.alive():
            log.warning("ATNA repository closed the connection; resending what it may not have read")
            self._disconnect()
        self._confirm(now)
        rows = self.db.execute(
            "SELECT id, frame FROM outbox WHERE id > ? ORDER BY id LIMIT 200", (self.next_id,)
        ).fetchall()
        if not rows:
            return False
        if self.transport is None and not self._reconnect():
            return False
        assert self.transport is not None
        for row_id, framed in rows:
            try:
                self.transport.send(bytes(framed))
            except ValueError as exc:  # too large for a UDP datagram: it stays in the trail only
                log.error("ATNA message cannot be sent over UDP; it stays in the trail", error=str(exc))
                self.unconfirmed.append((row_id, float("-inf")))
            except OSError as exc:
                self._failed(f"sending to {self.config.host}:{self.config.port}: {exc}")
                return False
            else:
                self.unconfirmed.append(
                    (row_id, time.monotonic() if self.transport.settles else float("-inf"))
                )
            self.next_id = row_id
        self._confirm(time.monotonic())
        return len(rows) == 200

    def _reconnect(self) -> bool:
        try:
            if self.config.transport == "udp":
                self.transport = UdpTransport(self.config.host, self.config.port)
            else:
                assert self.context is not None
                self.transport = TlsTransport(self.config.host, self.config.port, self.context)
        except (OSError, ValueError) as exc:
            self._failed(f"connecting to {self.config.host}:{self.config.port}: {exc}")
            return False
        log.info("ATNA repository connected", repository=f"{self.config.host}:{self.config.port}")
        return True

    def _confirm(self, now: float) -> None:
        settled = [row_id for row_id, sent in self.unconfirmed if sent <= now - SETTLE_S]
        if not settled:
            return
        self.unconfirmed = self.unconfirmed[len(settled) :]
        with _transaction(self.db):
            sizes = self.db.execute(
                "SELECT COALESCE(SUM(LENGTH(frame)), 0) FROM outbox WHERE id <= ?", (settled[-1],)
            ).fetchone()[0]
            self.db.execute("DELETE FROM outbox WHERE id <= ?", (settled[-1],))
            sent = int(self.state.get("sent", "0")) + len(settled)
            self._set_state(sent=sent, last_sent_at=time.time(), last_error="")
        self.bytes -= int(sizes)
        if self.failures:
            log.info("ATNA repository takes messages again", after_failures=self.failures)
        self.failures = 0

    def _failed(self, error: str) -> None:
        """Back off (1 s, doubling, up to retry_max_s) and resend from the oldest unconfirmed."""
        self._disconnect()
        self.failures += 1
        delay = min(self.config.retry_max_s, 2 ** (self.failures - 1))
        self.retry_at = time.monotonic() + delay
        if error != self.state.get("last_error"):
            log.warning("ATNA repository unreachable; messages stay queued", error=error, retry_in_s=delay)
        with _transaction(self.db):
            self._set_state(last_error=error, last_error_at=time.time())

    def _disconnect(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        self.unconfirmed = []
        self.next_id = 0

    def _count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def _set_state(self, **values: Any) -> None:
        for key, value in values.items():
            self.state[key] = str(value)
            self.db.execute("INSERT OR REPLACE INTO state VALUES (?, ?)", (key, str(value)))


# --- status, for `dicom-anon audit atna status` ------------------------------------------------


@dataclass(frozen=True)
class Status:
    backlog: int
    backlog_bytes: int
    oldest_queued_at: float | None
    trail_bytes_unread: int
    sent: int
    last_sent_at: float | None
    last_error: str | None
    last_error_at: float | None
    full_since: float | None


def read_status(settings: Settings) -> Status | None:
    """What the relay's queue says (None when the service never ran with ATNA)."""
    path = settings.atna_outbox_path
    if not path.exists():
        return None
    with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=10)) as db:
        count, size, oldest = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(frame)), 0), MIN(queued_at) FROM outbox"
        ).fetchone()
        state = dict(db.execute("SELECT key, value FROM state").fetchall())
    try:
        unread = max(0, settings.audit_path.stat().st_size - int(state.get("trail_offset", 0)))
    except FileNotFoundError:
        unread = 0

    def when(key: str) -> float | None:
        return float(state[key]) if state.get(key) else None

    return Status(
        backlog=int(count),
        backlog_bytes=int(size),
        oldest_queued_at=oldest,
        trail_bytes_unread=unread,
        sent=int(state.get("sent", 0)),
        last_sent_at=when("last_sent_at"),
        last_error=state.get("last_error") or None,
        last_error_at=when("last_error_at"),
        full_since=when("full_since"),
    )
