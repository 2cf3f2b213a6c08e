"""The audit trail: append-only JSON lines, each carrying its own hash and the previous record's.

Written with structlog (a processor chain that stamps time, sequence and hashes, then
a JSON renderer), one ``write`` per line on a file opened for appending. Several
processes may append (the service, and operators' ``quarantine``/``audit`` commands):
an exclusive ``flock`` around each append, and re-reading the tail when another
process has written since, keep one unbroken chain.

What goes in is the caller's business and never raw PHI: original identifiers as
keyed hashes (``SiteKey.keyed_hash``), pseudonyms as they are.
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

GENESIS = "0" * 64


def canonical(record: dict[str, Any], **_: Any) -> str:
    """The one serialisation that is hashed and written: sorted keys, no spaces, UTF-8 kept."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def record_hash(record: dict[str, Any]) -> str:
    """SHA-256 over the record without its own ``hash`` field."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(canonical(body).encode()).hexdigest()


def head_path(path: Path) -> Path:
    """The side file holding the last (seq, hash): lets ``verify`` notice records cut off the end."""
    return path.with_name(path.name + ".head")


def _last_record(f: Any) -> dict[str, Any] | None:
    """The last complete, parseable record of an open file (None for an empty trail)."""
    size = os.fstat(f.fileno()).st_size
    if size == 0:
        return None
    chunk = 1 << 16
    while True:
        start = max(0, size - chunk)
        f.seek(start)
        lines = f.read(size - start).split(b"\n")
        candidates = lines[1:] if start > 0 else lines
        for line in reversed(candidates):
            if line.strip():
                try:
                    return json.loads(line)
                except ValueError:
                    continue
        if start == 0:
            return None
        chunk *= 4


class _LineWriter:
    """The structlog 'logger' at the end of the chain: appends one rendered line."""

    def __init__(self, trail: AuditTrail) -> None:
        self._trail = trail

    def msg(self, line: str) -> None:
        self._trail._append(line)

    info = msg


class AuditTrail:
    """Append events to the trail; thread- and process-safe."""

    def __init__(self, path: Path, *, fsync: bool = True, head_every_s: float = 0.0) -> None:
        """``head_every_s``: how often the head file is rewritten (0: after every step). The service
        writes it once a second: after a crash it may name a record a little before the trail's
        end, which still verifies; only cutting off the last second of records goes unnoticed."""
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = path
        self._fsync = fsync
        self._head_every_s = head_every_s
        self._lock = threading.RLock()
        self._depth = 0
        self._dirty = False
        self._pending = (0, GENESIS)
        # Group commit: one thread fsyncs at a time, outside the write lock, and its fsync makes
        # every record written before it durable; a thread whose records it covered does not fsync.
        self._sync_lock = threading.Lock()
        self._written = (0, 0, GENESIS)  # (file size, seq, hash) after this process's last step
        self._synced_size = 0
        self._head_at = float("-inf")
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        self._file = os.fdopen(fd, "r+b", buffering=0)
        self._known_size = -1
        self._seq = 0
        self._prev = GENESIS
        self._logger = structlog.wrap_logger(
            _LineWriter(self),
            processors=[
                structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
                self._chain,
                structlog.processors.JSONRenderer(serializer=canonical),
            ],
        )

    def close(self) -> None:
        """Name the last record in the head file, then close. Every record is already durable; a
        head that cannot be written now (a full disk) lags behind the trail, which still verifies."""
        with self._lock, self._sync_lock:
            try:
                if self._written[0] > self._synced_size or self._head_every_s:
                    self._sync_and_mark(force_head=True)
            except OSError:
                pass
            finally:
                self._file.close()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Records of one step (a job routed and de-identified) written in order, durable when the
        step ends: each step's records are on disk before the next step begins. The fsync happens
        after the write lock is let go, so other threads go on writing meanwhile, and one fsync
        serves every step written before it (concurrent associations share it)."""
        wrote = False
        with self._lock:
            outer = self._depth == 0
            if outer:
                fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)
            try:
                if outer:
                    self._catch_up()
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                if outer and self._dirty:
                    self._written = (self._known_size, self._seq, self._prev)
                    self._dirty = False
                    wrote = True
            finally:
                if outer:
                    fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
        if wrote:
            self._durable(self._written[0])

    def _durable(self, size: int) -> None:
        """Return once the trail is durable up to ``size`` bytes."""
        with self._sync_lock:
            if self._synced_size >= size:
                return  # another thread's fsync, begun after our write, covered it
            self._sync_and_mark()

    def _sync_and_mark(self, *, force_head: bool = False) -> None:
        """fsync everything written so far, then (when due) name its last record in the head file."""
        size, seq, last = self._written
        if self._fsync:
            os.fsync(self._file.fileno())
        self._synced_size = max(self._synced_size, size)
        now = time.monotonic()
        if seq and (force_head or now - self._head_at >= self._head_every_s):
            self._write_head(seq, last)
            self._head_at = now

    def record(self, event: str, **fields: Any) -> None:
        """Append one event. Values must be JSON-friendly and free of PHI."""
        with self.batch():
            self._logger.info(event, **fields)

    def _catch_up(self) -> None:
        """Continue the chain from the file's last record if another process appended since."""
        size = os.fstat(self._file.fileno()).st_size
        if size == self._known_size:
            return
        last = _last_record(self._file)
        self._seq = int(last.get("seq", 0)) if last else 0
        self._prev = str(last.get("hash", GENESIS)) if last else GENESIS
        if size and not self._ends_with_newline(size):
            # A write cut short by a crash: end it so the next record is its own line.
            self._file.write(b"\n")
        self._known_size = os.fstat(self._file.fileno()).st_size

    def _ends_with_newline(self, size: int) -> bool:
        self._file.seek(size - 1)
        return self._file.read(1) == b"\n"

    def _chain(self, _logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        event_dict["seq"] = self._seq + 1
        event_dict["prev"] = self._prev
        event_dict["hash"] = record_hash(event_dict)
        self._pending = (event_dict["seq"], event_dict["hash"])
        return event_dict

    def _append(self, line: str) -> None:
        """Write the whole line or nothing: on a full disk a write can stop part-way, and a line cut
        short would break the chain for every record after it."""
        fd = self._file.fileno()
        start = os.fstat(fd).st_size
        view = memoryview(line.encode() + b"\n")
        try:
            while view:
                view = view[self._file.write(view) :]
        except OSError:
            os.ftruncate(fd, start)
            raise
        self._seq, self._prev = self._pending
        self._known_size = os.fstat(self._file.fileno()).st_size
        self._dirty = True

    def _write_head(self, seq: int, last: str) -> None:
        """Written outside the trail's lock: each writer (thread or process) uses its own temp file."""
        head = head_path(self.path)
        tmp = head.with_name(f"{head.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps({"seq": seq, "hash": last}))
        os.replace(tmp, head)


def operator() -> str:
    """Who is acting, for operator events: the login name (or what LOGNAME/USER say)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


# --- reading and verifying ------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass(frozen=True)
class Verification:
    records: int
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(path: Path) -> Verification:
    """Walk the chain and report every break, first one first.

    An edited line fails its own hash (or, if the editor recomputed it, the next line's
    ``prev``); a deleted line leaves a gap in ``seq``; reordered lines run ``seq`` backwards;
    records removed from the end leave the trail shorter than its head file says.
    """
    problems: list[Problem] = []
    prev_hash = GENESIS
    prev_seq = 0
    count = 0
    line_no = 0
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
                if not isinstance(record, dict):
                    raise ValueError
            except ValueError:
                problems.append(
                    Problem(line_no, "not a JSON record (damaged, or a write cut short by a crash)")
                )
                continue
            count += 1
            seq = record.get("seq")
            if record.get("hash") != record_hash(record):
                problems.append(
                    Problem(line_no, "the record does not match its own hash: this line was edited")
                )
            if not isinstance(seq, int):
                problems.append(Problem(line_no, "the record has no sequence number"))
            elif seq > prev_seq + 1:
                missing = (
                    f"record {prev_seq + 1}" if seq == prev_seq + 2 else f"records {prev_seq + 1}-{seq - 1}"
                )
                problems.append(Problem(line_no, f"{missing} missing before this line: deleted"))
            elif seq <= prev_seq:
                problems.append(
                    Problem(line_no, f"record {seq} comes after record {prev_seq}: lines were reordered")
                )
            elif record.get("prev") != prev_hash:
                problems.append(
                    Problem(
                        line_no,
                        "does not follow the line before it (previous-hash mismatch): the line "
                        "before was edited and re-hashed, or a line was replaced",
                    )
                )
            prev_hash = str(record.get("hash"))
            prev_seq = seq if isinstance(seq, int) else prev_seq
    head = head_path(path)
    if head.is_file():
        try:
            mark = json.loads(head.read_text())
            if int(mark["seq"]) > prev_seq:
                problems.append(
                    Problem(
                        line_no + 1,
                        f"the trail ends at record {prev_seq} but its head file records "
                        f"{mark['seq']}: records at the end were removed",
                    )
                )
            elif int(mark["seq"]) == prev_seq and mark["hash"] != prev_hash:
                problems.append(
                    Problem(line_no, "the last record differs from the one the head file records: edited")
                )
        except (ValueError, KeyError, TypeError):
            problems.append(Problem(0, f"the head file {head} is damaged"))
    return Verification(count, tuple(problems))


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every parseable record in file order (damaged lines are verify's business, skipped here)."""
    records = []
    if not path.exists():
        return records
    with path.open("rb") as f:
        for raw in f:
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records
