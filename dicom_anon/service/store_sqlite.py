"""The state store in SQLite (WAL) in the data dir: the embedded default, for one machine.

One connection, one lock: SQLite has one writer at a time anyway, and ``BEGIN IMMEDIATE`` takes
the write lock up front, so a claim cannot race another. Every durable commit is a full fsync
(``synchronous=FULL``): an acknowledged instance must survive power loss, not only a crash of
this process. The file is created and migrated when it is opened.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

from .store_sql import SqlStore, Transaction

# One patient's photos pass the face stage one at a time (see SqlStore.patient_lock); one
# process uses this file, so locks in memory do. Striped by pseudonym, so different patients
# still run side by side.
_PATIENT_LOCKS = tuple(threading.Lock() for _ in range(64))


class SqliteStore(SqlStore):
    """SQLite state behind the transactions the service needs. Thread-safe."""

    shared = False
    types: ClassVar[dict[str, str]] = {
        "id": "INTEGER PRIMARY KEY",
        "real": "REAL",
        "blob": "BLOB",
        "int8": "INTEGER",
    }

    def __init__(self, path: Path, *, node: str = "local", lease_s: float = 300.0) -> None:
        super().__init__(node=node, lease_s=lease_s)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self.opened_version, _ = self.upgrade()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[Transaction]:
        """BEGIN IMMEDIATE ... COMMIT. ``durable=False`` is SQLite's synchronous=NORMAL in WAL mode
        for this commit: it survives a crash of the process, and the next durable commit (or the
        caller's flush of the data dir) makes it durable too (the WAL is flushed in order)."""
        with self._lock:
            if not durable:
                self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            finally:
                if not durable:
                    self._db.execute("PRAGMA synchronous=FULL")

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def _lock_schema(self, db: Transaction) -> None:
        """``BEGIN IMMEDIATE`` already holds the only write lock."""

    def _columns(self, db: Transaction, table: str) -> set[str]:
        return {r["name"] for r in db.execute(f"PRAGMA table_info({table})").fetchall()}

    @contextmanager
    def patient_lock(self, pseudonym: str) -> Iterator[None]:
        with _PATIENT_LOCKS[hash(pseudonym) % len(_PATIENT_LOCKS)]:
            yield
