"""The audit trail: append-only JSON lines, each carrying its own hash and the previous record's.

Written with structlog (a processor chain that stamps time, sequence and hashes, then
a JSON renderer), one ``write`` per line on a file opened for appending. Several
processes may append (the service, and operators' ``quarantine``/``audit`` commands):
an exclusive ``flock`` around each append, and re-reading the tail when another
process has written since, keep one unbroken chain.

The service may rotate the file (``audit.rotate_mb``, ``audit.rotate_hours``): the full file is
renamed ``audit.jsonl.000001`` (then ``.000002``...) and the new one begins with an
``audit_rotated`` record that carries the chain on (its ``prev`` is the old file's last hash), so
``verify`` walks all files as one chain. Rotated files older than ``audit.keep_days`` are removed,
and that removal is itself a record (``audit_files_expired``, naming the files and the last hash
they held), which lets the chain start from there.

What goes in is the caller's business and never raw PHI: original identifiers as
keyed hashes (``SiteKey.keyed_hash``), pseudonyms as they are.
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
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


def rotated_files(path: Path) -> list[tuple[int, Path]]:
    """The rotated files of the trail at ``path``, oldest first, with their numbers."""
    pattern = re.compile(re.escape(path.name) + r"\.(\d{6,})")
    found = []
    if path.parent.is_dir():
        for entry in path.parent.iterdir():
            match = pattern.fullmatch(entry.name)
            if match:
                found.append((int(match.group(1)), entry))
    return sorted(found)


def trail_files(path: Path) -> list[Path]:
    """Every file of the trail in chain order: the rotated ones, then the live one."""
    return [f for _, f in rotated_files(path)] + ([path] if path.exists() else [])


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

    def __init__(
        self,
        path: Path,
        *,
        fsync: bool = True,
        head_every_s: float = 0.0,
        rotate_bytes: int = 0,
        rotate_s: float = 0.0,
        keep_s: float = 0.0,
        node: str | None = None,
        on_record: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        """``node``: the id of the machine writing, put in every record (several nodes' trails are
        read together, and each record says where it was written). ``on_record``: called with each
        event written through ``record`` and its fields (the service's metrics count them).
        ``head_every_s``: how often the head file is rewritten (0: after every step). The service
        writes it once a second: after a crash it may name a record a little before the trail's
        end, which still verifies; only cutting off the last second of records goes unnoticed.
        ``rotate_bytes``/``rotate_s``: start a new file once this one is that large or that old
        (0: never); ``keep_s``: remove rotated files whose last record is older (0: keep all)."""
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = path
        self._fsync = fsync
        self._head_every_s = head_every_s
        self._rotate_bytes = rotate_bytes
        self._rotate_s = rotate_s
        self._keep_s = keep_s
        self._started_at: tuple[int, float] | None = None  # (inode, time of its first record)
        self._lock = threading.RLock()
        self._depth = 0
        self._dirty = False
        self._pending = (0, GENESIS)
        # Group commit: one thread fsyncs at a time, outside the write lock, and its fsync makes
        # every record written before it durable; a thread whose records it covered does not fsync.
        self._sync_lock = threading.Lock()
        self._written = (0, 0, GENESIS)  # (bytes, seq, hash) after this process's last step
        self._synced_size = 0
        # Bytes of the files before this one (rotated, or replaced by another process's rotation):
        # sizes above count from the first file on, so a new, shorter file never looks synced.
        self._base = 0
        self._head_at = float("-inf")
        self._on_record = on_record
        _finish_rotation(path)
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
        if node is not None:
            self._logger = self._logger.bind(node=node)

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
    def batch(self, *, sync: bool = True) -> Iterator[None]:
        """Records of one step (a job routed and de-identified) written in order, durable when the
        step ends: each step's records are on disk before the next step begins. The fsync happens
        after the write lock is let go, so other threads go on writing meanwhile, and one fsync
        serves every step written before it (concurrent associations share it). ``sync=False``:
        the caller makes them durable itself, with its own writes of the step (ingress flushes
        the spool file, the job and the receipt at once)."""
        wrote = False
        with self._lock:
            outer = self._depth == 0
            if outer:
                self._lock_current_file()
            try:
                if outer:
                    self._catch_up()
                    if self._rotation_due():
                        self._rotate()
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                if outer and self._dirty:
                    self._written = (self._base + self._known_size, self._seq, self._prev)
                    self._dirty = False
                    wrote = True
            finally:
                if outer:
                    fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
        if wrote and sync:
            self._durable(self._written[0])

    def _lock_current_file(self) -> None:
        """flock the live file; if another process rotated it meanwhile, reopen and lock the new one
        (its rotation fsynced the old file, our records in it included)."""
        while True:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)
            try:
                current = os.stat(self.path).st_ino
            except FileNotFoundError:
                current = -1
            if current == os.fstat(self._file.fileno()).st_ino:
                return
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._switch_file()

    def _switch_file(self) -> None:
        """Follow another process's rotation to the new live file."""
        with self._sync_lock:
            self._base = max(self._written[0], self._synced_size, self._base + max(self._known_size, 0))
            self._synced_size = self._base
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        old, self._file = self._file, os.fdopen(fd, "r+b", buffering=0)
        old.close()
        self._known_size = -1

    def _rotation_due(self) -> bool:
        size = os.fstat(self._file.fileno()).st_size
        if size == 0:
            return False
        if self._rotate_bytes and size >= self._rotate_bytes:
            return True
        if self._rotate_s:
            inode = os.fstat(self._file.fileno()).st_ino
            if self._started_at is None or self._started_at[0] != inode:
                self._started_at = (inode, _first_record_time(self.path))
            return time.time() - self._started_at[1] >= self._rotate_s
        return False

    def _rotate(self) -> None:
        """Give the full file the next number and carry the chain on in a new one. Called with the
        file locked. The new file is made and locked under a temporary name, the old one linked to
        its number, its first record (``audit_rotated``) written, and only then renamed into place:
        at no moment is there no live file, or one whose chain does not go on from the last."""
        numbers = [n for n, _ in rotated_files(self.path)]
        target = self.path.with_name(f"{self.path.name}.{(max(numbers) + 1 if numbers else 1):06d}")
        os.fsync(self._file.fileno())
        temp = _rotating_path(self.path)
        fd = os.open(temp, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC, 0o600)
        new = os.fdopen(fd, "r+b", buffering=0)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.link(self.path, target)
        with self._sync_lock:
            self._base = max(self._written[0], self._synced_size, self._base + self._known_size)
            self._synced_size = self._base
        old, self._file = self._file, new
        self._known_size = 0
        self._logger.info("audit_rotated", previous_file=target.name)
        os.rename(temp, self.path)
        _sync_folder(self.path.parent)
        old.close()  # wakes writers waiting on the old file: they find the new one
        if self._keep_s:
            self._expire()

    def _expire(self) -> None:
        """Remove rotated files whose newest record is older than ``keep_s``, oldest first, and
        record which, with the last hash they held, so the chain still starts somewhere known."""
        gone: list[str] = []
        through: dict[str, Any] | None = None
        for _, file in rotated_files(self.path):
            with file.open("rb") as f:
                last = _last_record(f)
            if last is None or time.time() - _record_time(last) < self._keep_s:
                break
            file.unlink()
            gone.append(file.name)
            through = last
        if through is not None:
            self._logger.info(
                "audit_files_expired",
                files=gone,
                through_seq=through.get("seq"),
                through_hash=through.get("hash"),
            )
            _sync_folder(self.path.parent)

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
            if self._on_record is not None:
                self._on_record(event, fields)

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


def _rotating_path(path: Path) -> Path:
    return path.with_name(path.name + ".rotating")


def _finish_rotation(path: Path) -> None:
    """After a crash mid-rotation: if the old file already has its number, the new one (under its
    temporary name) takes its place; if not, the rotation never happened and the new one goes."""
    temp = _rotating_path(path)
    if not temp.exists():
        return
    rotated = rotated_files(path)
    if path.exists() and rotated and os.stat(path).st_ino == os.stat(rotated[-1][1]).st_ino:
        os.rename(temp, path)
    else:
        temp.unlink()


def _sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _record_time(record: dict[str, Any]) -> float:
    try:
        return datetime.fromisoformat(str(record.get("ts"))).timestamp()
    except ValueError:
        return time.time()


def _first_record_time(path: Path) -> float:
    """When the live file's first record was written (now, for an unreadable one)."""
    try:
        with path.open("rb") as f:
            return _record_time(json.loads(f.readline()))
    except (OSError, ValueError, AttributeError):
        return time.time()


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
    file: str | None = None  # named once the trail has more than one file

    def __str__(self) -> str:
        return f"{self.file + ' ' if self.file else ''}line {self.line}: {self.message}"


@dataclass(frozen=True)
class Verification:
    records: int
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(path: Path) -> Verification:
    """Walk the chain, across rotated files, and report every break, first one first.

    An edited line fails its own hash (or, if the editor recomputed it, the next line's
    ``prev``); a deleted line leaves a gap in ``seq``; reordered lines run ``seq`` backwards;
    records removed from the end leave the trail shorter than its head file says; a rotated file
    removed leaves a gap in the files' numbers, unless an ``audit_files_expired`` record says
    retention removed it and which hash it ended with.
    """
    files = rotated_files(path)
    live = [(None, path)] if path.exists() else []
    several = bool(files) or _starts_rotated(path)
    expired = _expiries([f for _, f in files] + [path])
    problems: list[Problem] = []
    walk = _Walk()
    for _, file in [*files, *live]:
        _walk_file(file, file.name if several else None, walk, expired, problems)
    head = head_path(path)
    if head.is_file():
        last_label = path.name if several else None
        try:
            mark = json.loads(head.read_text())
            if int(mark["seq"]) > walk.seq:
                problems.append(
                    Problem(
                        walk.line + 1,
                        f"the trail ends at record {walk.seq} but its head file records "
                        f"{mark['seq']}: records at the end were removed",
                        last_label,
                    )
                )
            elif int(mark["seq"]) == walk.seq and mark["hash"] != walk.hash:
                problems.append(
                    Problem(
                        walk.line,
                        "the last record differs from the one the head file records: edited",
                        last_label,
                    )
                )
        except (ValueError, KeyError, TypeError):
            problems.append(Problem(0, f"the head file {head} is damaged"))
    return Verification(walk.count, tuple(problems))


@dataclass
class _Walk:
    hash: str = GENESIS
    seq: int = 0
    count: int = 0
    line: int = 0


def _starts_rotated(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return b'"event":"audit_rotated"' in f.readline()
    except OSError:
        return False


def _expiries(files: list[Path]) -> dict[int, str]:
    """through_seq -> through_hash of every audit_files_expired record: where retention let the
    chain begin again."""
    found: dict[int, str] = {}
    for file in files:
        if not file.exists():
            continue
        with file.open("rb") as f:
            for raw in f:
                if b"audit_files_expired" not in raw:
                    continue
                try:
                    record = json.loads(raw)
                    found[int(record["through_seq"])] = str(record["through_hash"])
                except (ValueError, KeyError, TypeError):
                    continue
    return found


def _walk_file(
    file: Path, label: str | None, walk: _Walk, expired: dict[int, str], problems: list[Problem]
) -> None:
    walk.line = 0
    with file.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            walk.line = line_no
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
                if not isinstance(record, dict):
                    raise ValueError
            except ValueError:
                problems.append(
                    Problem(line_no, "not a JSON record (damaged, or a write cut short by a crash)", label)
                )
                continue
            seq = record.get("seq")
            if (
                walk.count == 0
                and isinstance(seq, int)
                and seq > 1
                and expired.get(seq - 1) == record.get("prev")
            ):
                # The first record after files that retention removed (and recorded removing).
                walk.seq, walk.hash = seq - 1, str(record.get("prev"))
            walk.count += 1
            before = record.get("previous_file")
            if (
                record.get("event") == "audit_rotated"
                and isinstance(before, str)
                and not (file.parent / before).exists()
                and not (isinstance(seq, int) and seq - 1 in expired)
            ):
                problems.append(
                    Problem(line_no, f"the file before this one, {before}, is missing: removed", label)
                )
            if record.get("hash") != record_hash(record):
                problems.append(
                    Problem(line_no, "the record does not match its own hash: this line was edited", label)
                )
            if not isinstance(seq, int):
                problems.append(Problem(line_no, "the record has no sequence number", label))
            elif seq > walk.seq + 1:
                missing = (
                    f"record {walk.seq + 1}" if seq == walk.seq + 2 else f"records {walk.seq + 1}-{seq - 1}"
                )
                problems.append(Problem(line_no, f"{missing} missing before this line: deleted", label))
            elif seq <= walk.seq:
                problems.append(
                    Problem(
                        line_no, f"record {seq} comes after record {walk.seq}: lines were reordered", label
                    )
                )
            elif record.get("prev") != walk.hash:
                problems.append(
                    Problem(
                        line_no,
                        "does not follow the line before it (previous-hash mismatch): the line "
                        "before was edited and re-hashed, or a line was replaced",
                        label,
                    )
                )
            walk.hash = str(record.get("hash"))
            walk.seq = seq if isinstance(seq, int) else walk.seq


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every parseable record in chain order, across rotated files (damaged lines are verify's
    business, skipped here)."""
    records = []
    for file in trail_files(path):
        with file.open("rb") as f:
            for raw in f:
                try:
                    record = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    records.append(record)
    return records
