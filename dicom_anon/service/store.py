"""The durable queue and state store: jobs, outputs, deliveries and quarantine rows in SQLite (WAL).

Every state change is one short transaction (claim a job, finish routing, mark
delivered, retry at, quarantine, release), written in plain SQL that PostgreSQL also
speaks, so a shared multi-node store is a port of this class, not a rewrite. The
only SQLite-specific parts are the pragmas and ``BEGIN IMMEDIATE``; on PostgreSQL
``claim_job`` becomes ``... FOR UPDATE SKIP LOCKED``.

Paths are stored relative to the data dir so a restored backup works at a new place.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SCHEMA_VERSION = "3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    received_at REAL NOT NULL,
    calling_ae TEXT NOT NULL,
    peer TEXT NOT NULL,
    sop_class TEXT NOT NULL,
    sop_key TEXT NOT NULL,
    digest TEXT NOT NULL,
    transfer_syntax TEXT NOT NULL,
    size INTEGER NOT NULL,
    spool_path TEXT,
    state TEXT NOT NULL,
    route_only TEXT,
    claimed_at REAL,
    done_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    error TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_same_instance ON jobs (sop_key, digest);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, id);
CREATE TABLE IF NOT EXISTS outputs (
    id INTEGER PRIMARY KEY,
    job_id INTEGER NOT NULL REFERENCES jobs (id),
    route TEXT NOT NULL,
    path TEXT,
    sop_class TEXT NOT NULL,
    sop_uid TEXT NOT NULL,
    transfer_syntax TEXT NOT NULL,
    patient_pseudonym TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS outputs_by_job ON outputs (job_id);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    output_id INTEGER NOT NULL REFERENCES outputs (id),
    destination TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    next_attempt_at REAL NOT NULL,
    delivered_at REAL,
    status INTEGER,
    error TEXT
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (destination, state, next_attempt_at, id);
CREATE INDEX IF NOT EXISTS deliveries_by_output ON deliveries (output_id);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY,
    job_id INTEGER NOT NULL REFERENCES jobs (id),
    delivery_id INTEGER REFERENCES deliveries (id),
    route TEXT,
    destination TEXT,
    stage TEXT NOT NULL,
    code TEXT NOT NULL,
    reason TEXT NOT NULL,
    path TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    resolved_at REAL,
    resolved_by TEXT
);
CREATE INDEX IF NOT EXISTS quarantine_by_state ON quarantine (state, id);
CREATE TABLE IF NOT EXISTS identities (
    patient_pseudonym TEXT PRIMARY KEY,
    surrogate TEXT NOT NULL,
    chosen_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS generated_identities (
    patient_pseudonym TEXT PRIMARY KEY,
    latent_index INTEGER NOT NULL,
    steer TEXT NOT NULL DEFAULT '',
    embedding BLOB NOT NULL,
    chosen_at REAL NOT NULL
);
"""

# Job states. A job is 'done' when none of its deliveries is pending; quarantined parts hold
# their own copy of the file, so they do not keep the job (or its spool file) open.
RECEIVED, PROCESSING, ROUTED, DONE = "received", "processing", "routed", "done"
PENDING, DELIVERED, QUARANTINED = "pending", "delivered", "quarantined"
HELD, RELEASED, DELETED = "held", "released", "deleted"
# The quarantine code of a de-identified copy a route holds until a person releases it.
AWAITING_REVIEW = "awaiting-review"


class BusyError(Exception):
    """The row is in use by the running service right now; the operator tries again."""


@dataclass(frozen=True)
class NewJob:
    """What ingress knows about an instance once its bytes are on disk."""

    calling_ae: str
    peer: str
    sop_class: str
    sop_key: str
    digest: str
    transfer_syntax: str
    size: int
    spool_path: str


@dataclass(frozen=True)
class Job:
    id: int
    received_at: float
    calling_ae: str
    peer: str
    sop_class: str
    sop_key: str
    transfer_syntax: str
    spool_path: str | None
    route_only: str | None
    attempts: int = 0  # earlier tries that failed for this instance's own reasons


@dataclass(frozen=True)
class NewQuarantine:
    stage: str
    code: str
    reason: str
    path: str
    route: str | None = None
    destination: str | None = None


@dataclass(frozen=True)
class NewOutput:
    """A de-identified instance in the outbox and the destinations it must reach; or, for a route
    that holds its copies for review, no outbox file (``path`` None) and one quarantine item per
    destination (``held``), each holding its own copy."""

    route: str
    path: str | None
    sop_class: str
    sop_uid: str
    transfer_syntax: str
    patient_pseudonym: str
    destinations: tuple[str, ...]
    held: tuple[NewQuarantine, ...] = ()


@dataclass(frozen=True)
class Delivery:
    id: int
    job_id: int
    output_id: int
    destination: str
    route: str
    path: str
    sop_class: str
    sop_uid: str
    transfer_syntax: str
    patient_pseudonym: str
    attempts: int
    created_at: float


@dataclass(frozen=True)
class Completion:
    """Files nobody needs any more after a delivery ended; the caller removes them."""

    output_path: str | None
    spool_path: str | None
    job_id: int
    job_done: bool


@dataclass(frozen=True)
class QuarantineRow:
    id: int
    job_id: int
    delivery_id: int | None
    route: str | None
    destination: str | None
    stage: str
    code: str
    reason: str
    path: str
    state: str
    created_at: float
    resolved_at: float | None
    resolved_by: str | None


class StateStore:
    """SQLite state behind the transactions the service needs. Thread-safe: one connection, one lock.

    One connection is enough because SQLite has one writer at a time anyway, and every
    write here commits with a full fsync (``synchronous=FULL``): an acknowledged
    instance must survive power loss, not only a crash of this process.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        self._migrate()
        self.set_meta_default("schema_version", SCHEMA_VERSION)

    def _migrate(self) -> None:
        """Schema 1 -> 2: jobs count their failed tries and wait out a backoff (poison jobs).
        2 -> 3: a generated person is its latent index and its steering code."""
        added = {
            "jobs": {
                "attempts": "INTEGER NOT NULL DEFAULT 0",
                "next_attempt_at": "REAL NOT NULL DEFAULT 0",
                "error": "TEXT",
            },
            "generated_identities": {"steer": "TEXT NOT NULL DEFAULT ''"},
        }
        missing = []
        for table, wanted in added.items():
            columns = {r["name"] for r in self._db.execute(f"PRAGMA table_info({table})")}
            missing += [
                f"ALTER TABLE {table} ADD COLUMN {n} {kind}" for n, kind in wanted.items() if n not in columns
            ]
        if missing:
            with self.transaction() as db:
                for sql in missing:
                    db.execute(sql)
                db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION,))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT: take the write lock up front so a claim cannot race another.

        ``durable=False`` skips the fsync of this commit (SQLite's synchronous=NORMAL in WAL
        mode): it survives a crash of the process, and the next durable commit makes it durable
        too (the WAL is flushed in order). Used only where losing the change to a power cut is
        harmless: the state it leads to is reached again from the durable state before it.
        """
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

    def _read(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # --- meta ----------------------------------------------------------------------------

    def set_meta_default(self, key: str, value: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # --- ingress -------------------------------------------------------------------------

    def add_job(self, job: NewJob, *, durable: bool = True) -> tuple[int, bool]:
        """Record a received instance. Returns (job id, True), or (the earlier job's id, False)
        when the same bytes of the same SOP instance were already accepted: a PACS that re-sends
        after a lost response must not get the instance forwarded twice. ``durable=False``: the
        caller's own flush makes it durable together with the spool file and the receipt."""
        with self.transaction(durable=durable) as db:
            row = db.execute(
                "SELECT id FROM jobs WHERE sop_key = ? AND digest = ?", (job.sop_key, job.digest)
            ).fetchone()
            if row is not None:
                return row["id"], False
            cur = db.execute(
                "INSERT INTO jobs (received_at, calling_ae, peer, sop_class, sop_key, digest,"
                " transfer_syntax,"
                " size, spool_path, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    time.time(),
                    job.calling_ae,
                    job.peer,
                    job.sop_class,
                    job.sop_key,
                    job.digest,
                    job.transfer_syntax,
                    job.size,
                    job.spool_path,
                    RECEIVED,
                ),
            )
            return int(cur.lastrowid or 0), True

    def spool_bytes(self) -> int:
        """Bytes of received originals still on disk: what the high-water mark is compared to."""
        rows = self._read("SELECT COALESCE(SUM(size), 0) AS n FROM jobs WHERE spool_path IS NOT NULL")
        return int(rows[0]["n"])

    def spool_paths(self) -> set[str]:
        return {
            r["spool_path"] for r in self._read("SELECT spool_path FROM jobs WHERE spool_path IS NOT NULL")
        }

    def quarantine_paths(self) -> set[str]:
        return {r["path"] for r in self._read("SELECT path FROM quarantine WHERE state = ?", (HELD,))}

    def output_paths(self) -> set[str]:
        return {r["path"] for r in self._read("SELECT path FROM outputs WHERE path IS NOT NULL")}

    # --- worker --------------------------------------------------------------------------

    def recover(self) -> int:
        """After a crash, jobs that were being processed go back to the queue (outputs are
        deterministic, so doing one again writes the same files and the same UIDs)."""
        with self.transaction() as db:
            return db.execute(
                "UPDATE jobs SET state = ?, claimed_at = NULL WHERE state = ?", (RECEIVED, PROCESSING)
            ).rowcount

    def received_spools(self) -> list[tuple[int, str, int]]:
        """(job id, spool path, size) of every job received and not yet taken up (nothing refers to
        it, as to one released from quarantine): what start checks for a spool file a power cut did
        not let reach the disk."""
        rows = self._read(
            "SELECT id, spool_path, size FROM jobs WHERE state = ? AND spool_path IS NOT NULL"
            " AND id NOT IN (SELECT job_id FROM quarantine) AND id NOT IN (SELECT job_id FROM outputs)",
            (RECEIVED,),
        )
        return [(r["id"], r["spool_path"], r["size"]) for r in rows]

    def drop_jobs(self, job_ids: list[int]) -> None:
        """Forget jobs that were never acknowledged (their spool file did not survive a power cut):
        the sender had no answer and sends the instance again, which must not be taken for a
        duplicate of a job with nothing left to forward."""
        with self.transaction() as db:
            db.executemany("DELETE FROM jobs WHERE id = ? AND state = ?", [(i, RECEIVED) for i in job_ids])

    def claim_job(self) -> Job | None:
        """The oldest received job whose time has come (a job that failed waits out its backoff while
        the ones behind it go ahead), now marked processing; None when none is due.
        (Not fsynced: a claim lost to a power cut only means the job is claimed again.)"""
        with self.transaction(durable=False) as db:
            row = db.execute(
                "SELECT * FROM jobs WHERE state = ? AND next_attempt_at <= ? ORDER BY id LIMIT 1",
                (RECEIVED, time.time()),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET state = ?, claimed_at = ? WHERE id = ?", (PROCESSING, time.time(), row["id"])
            )
            return Job(
                row["id"],
                row["received_at"],
                row["calling_ae"],
                row["peer"],
                row["sop_class"],
                row["sop_key"],
                row["transfer_syntax"],
                row["spool_path"],
                row["route_only"],
                row["attempts"],
            )

    def retry_job(self, job_id: int, when: float, error: str) -> None:
        """Processing failed for the instance's own reasons: count the try, and put the job back
        in line from ``when`` on, so that the jobs behind it are not held up meanwhile."""
        with self.transaction(durable=False) as db:
            db.execute(
                "UPDATE jobs SET state = ?, claimed_at = NULL, attempts = attempts + 1, next_attempt_at = ?,"
                " error = ? WHERE id = ? AND state = ?",
                (RECEIVED, when, error, job_id, PROCESSING),
            )

    def job_spool_path(self, job_id: int) -> str | None:
        rows = self._read("SELECT spool_path FROM jobs WHERE id = ?", (job_id,))
        return rows[0]["spool_path"] if rows else None

    def finish_routing(
        self, job_id: int, outputs: list[NewOutput], quarantines: list[NewQuarantine]
    ) -> tuple[list[int], list[int], bool]:
        """Record everything one job produced in one transaction: outbox files with their
        deliveries, and quarantine rows. Returns (delivery ids, quarantine ids, job done); the
        quarantine ids are those of ``quarantines`` followed by each output's ``held`` items.

        Not fsynced: lost to a power cut, the job is still 'processing' and is done again after
        recovery, with the same keyed UIDs; the next durable commit (a receipt, a delivery)
        makes it durable anyway."""
        now = time.time()
        delivery_ids: list[int] = []
        quarantine_ids: list[int] = []
        held_ids: list[int] = []
        with self.transaction(durable=False) as db:
            for out in outputs:
                cur = db.execute(
                    "INSERT INTO outputs (job_id, route, path, sop_class, sop_uid, transfer_syntax,"
                    " patient_pseudonym) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        job_id,
                        out.route,
                        out.path,
                        out.sop_class,
                        out.sop_uid,
                        out.transfer_syntax,
                        out.patient_pseudonym,
                    ),
                )
                held = {q.destination: q for q in out.held}
                for dest in out.destinations:
                    d = db.execute(
                        "INSERT INTO deliveries (output_id, destination, state, created_at, next_attempt_at,"
                        " error) VALUES (?, ?, ?, ?, ?, ?)",
                        (
                            cur.lastrowid,
                            dest,
                            QUARANTINED if dest in held else PENDING,
                            now,
                            now,
                            held[dest].reason if dest in held else None,
                        ),
                    )
                    delivery_ids.append(int(d.lastrowid or 0))
                    if dest in held:
                        held_ids.append(self._insert_quarantine(db, job_id, d.lastrowid, held[dest], now))
            for q in quarantines:
                quarantine_ids.append(self._insert_quarantine(db, job_id, None, q, now))
            quarantine_ids += held_ids
            pending = db.execute(
                "SELECT COUNT(*) AS n FROM deliveries d JOIN outputs o ON o.id = d.output_id"
                " WHERE o.job_id = ? AND d.state = ?",
                (job_id, PENDING),
            ).fetchone()["n"]
            done = not pending
            db.execute(
                "UPDATE jobs SET state = ?, route_only = NULL, done_at = ? WHERE id = ?",
                (DONE if done else ROUTED, now if done else None, job_id),
            )
        return delivery_ids, quarantine_ids, done

    @staticmethod
    def _insert_quarantine(
        db: sqlite3.Connection, job_id: int, delivery_id: int | None, q: NewQuarantine, now: float
    ) -> int:
        cur = db.execute(
            "INSERT INTO quarantine (job_id, delivery_id, route, destination, stage, code, reason, path,"
            " state,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (job_id, delivery_id, q.route, q.destination, q.stage, q.code, q.reason, q.path, HELD, now),
        )
        return int(cur.lastrowid or 0)

    def forget_spool(self, job_id: int) -> None:
        """The original was removed by retention; the row stays for dedup and the record."""
        with self.transaction(durable=False) as db:
            db.execute("UPDATE jobs SET spool_path = NULL WHERE id = ?", (job_id,))

    def expired_spool(self, before: float) -> list[tuple[int, str]]:
        """Done jobs received before ``before`` whose original is still kept (spool keep_days)."""
        rows = self._read(
            "SELECT id, spool_path FROM jobs WHERE state = ? AND spool_path IS NOT NULL AND received_at < ?",
            (DONE, before),
        )
        return [(r["id"], r["spool_path"]) for r in rows]

    # --- egress --------------------------------------------------------------------------

    def due_deliveries(self, destination: str, now: float, limit: int = 32) -> list[Delivery]:
        """Pending deliveries to one destination whose retry time has come, oldest first."""
        rows = self._read(
            "SELECT d.id, o.job_id, d.output_id, d.destination, o.route, o.path, o.sop_class, o.sop_uid,"
            " o.transfer_syntax, o.patient_pseudonym, d.attempts, d.created_at"
            " FROM deliveries d JOIN outputs o ON o.id = d.output_id"
            " WHERE d.destination = ? AND d.state = ? AND d.next_attempt_at <= ? ORDER BY d.id LIMIT ?",
            (destination, PENDING, now, limit),
        )
        return [Delivery(*tuple(r)) for r in rows]

    def next_due(self, destination: str) -> float | None:
        """When the next pending delivery to ``destination`` may be tried (None: nothing pending)."""
        rows = self._read(
            "SELECT MIN(next_attempt_at) AS t FROM deliveries WHERE destination = ? AND state = ?",
            (destination, PENDING),
        )
        return rows[0]["t"]

    def pending_destinations(self) -> set[str]:
        return {
            r["destination"]
            for r in self._read("SELECT DISTINCT destination FROM deliveries WHERE state = ?", (PENDING,))
        }

    def retry_at(self, delivery_id: int, when: float, error: str, status: int | None = None) -> int:
        """A delivery failed for now: count the attempt, try again at ``when``. Returns attempts.
        (Not fsynced: a lost retry time only means an earlier retry.)"""
        with self.transaction(durable=False) as db:
            db.execute(
                "UPDATE deliveries SET attempts = attempts + 1, next_attempt_at = ?, error = ?, status = ?"
                " WHERE id = ? AND state = ?",
                (when, error, status, delivery_id, PENDING),
            )
            row = db.execute("SELECT attempts FROM deliveries WHERE id = ?", (delivery_id,)).fetchone()
            return int(row["attempts"])

    def mark_delivered(self, delivery_id: int, status: int, *, durable: bool = True) -> Completion:
        """The destination answered success or a warning; close the delivery and whatever it completes.
        ``durable=False``: the caller's own flush makes it durable with the audit record."""
        now = time.time()
        with self.transaction(durable=durable) as db:
            db.execute(
                "UPDATE deliveries SET state = ?, status = ?, delivered_at = ?, attempts = attempts + 1,"
                " error = NULL WHERE id = ?",
                (DELIVERED, status, now, delivery_id),
            )
            return self._complete(db, delivery_id, now)

    def quarantine_delivery(self, delivery_id: int, q: NewQuarantine) -> tuple[int, Completion]:
        """A permanent refusal: the delivery ends in quarantine (its file copied there by the caller)."""
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "UPDATE deliveries SET state = ?, error = ? WHERE id = ?",
                (QUARANTINED, q.reason, delivery_id),
            )
            job_id = db.execute(
                "SELECT o.job_id FROM deliveries d JOIN outputs o ON o.id = d.output_id WHERE d.id = ?",
                (delivery_id,),
            ).fetchone()["job_id"]
            qid = self._insert_quarantine(db, job_id, delivery_id, q, now)
            return qid, self._complete(db, delivery_id, now)

    def _complete(self, db: sqlite3.Connection, delivery_id: int, now: float) -> Completion:
        row = db.execute(
            "SELECT o.id AS output_id, o.path, o.job_id"
            " FROM deliveries d JOIN outputs o ON o.id = d.output_id"
            " WHERE d.id = ?",
            (delivery_id,),
        ).fetchone()
        output_open = db.execute(
            "SELECT COUNT(*) AS n FROM deliveries WHERE output_id = ? AND state = ?",
            (row["output_id"], PENDING),
        ).fetchone()["n"]
        job_open = db.execute(
            "SELECT COUNT(*) AS n FROM deliveries d JOIN outputs o ON o.id = d.output_id"
            " WHERE o.job_id = ? AND d.state = ?",
            (row["job_id"], PENDING),
        ).fetchone()["n"]
        output_path = None
        if not output_open and row["path"] is not None:
            output_path = row["path"]
            db.execute("UPDATE outputs SET path = NULL WHERE id = ?", (row["output_id"],))
        spool_path = None
        if not job_open:
            job = db.execute("SELECT state, spool_path FROM jobs WHERE id = ?", (row["job_id"],)).fetchone()
            if job["state"] == ROUTED:
                db.execute("UPDATE jobs SET state = ?, done_at = ? WHERE id = ?", (DONE, now, row["job_id"]))
                spool_path = job["spool_path"]
        return Completion(output_path, spool_path, row["job_id"], not job_open)

    # --- quarantine ----------------------------------------------------------------------

    def quarantined(self, state: str | None = HELD) -> list[QuarantineRow]:
        if state is None:
            rows = self._read("SELECT * FROM quarantine ORDER BY id")
        else:
            rows = self._read("SELECT * FROM quarantine WHERE state = ? ORDER BY id", (state,))
        return [QuarantineRow(**dict(r)) for r in rows]

    def quarantine_row(self, qid: int) -> QuarantineRow | None:
        rows = self._read("SELECT * FROM quarantine WHERE id = ?", (qid,))
        return QuarantineRow(**dict(rows[0])) if rows else None

    def release(self, qid: int, by: str, restored_path: str) -> None:
        """Put a held item back on the path it left: its delivery retried from the start, or its job
        processed again (only the route that quarantined it) under the rules in force now."""
        now = time.time()
        with self.transaction() as db:
            q = db.execute("SELECT * FROM quarantine WHERE id = ? AND state = ?", (qid, HELD)).fetchone()
            if q is None:
                raise KeyError(qid)
            job_state = db.execute("SELECT state FROM jobs WHERE id = ?", (q["job_id"],)).fetchone()["state"]
            if job_state not in (ROUTED, DONE):
                raise BusyError(f"job {q['job_id']} is {job_state}; release it once that has finished")
            db.execute(
                "UPDATE quarantine SET state = ?, resolved_at = ?, resolved_by = ? WHERE id = ?",
                (RELEASED, now, by, qid),
            )
            if q["delivery_id"] is not None:
                db.execute(
                    "UPDATE deliveries SET state = ?, attempts = 0, next_attempt_at = ?, created_at = ?,"
                    " error = NULL"
                    " WHERE id = ?",
                    (PENDING, now, now, q["delivery_id"]),
                )
                db.execute(
                    "UPDATE outputs SET path = ? WHERE id = (SELECT output_id FROM deliveries WHERE id = ?)",
                    (restored_path, q["delivery_id"]),
                )
                db.execute("UPDATE jobs SET state = ?, done_at = NULL WHERE id = ?", (ROUTED, q["job_id"]))
            else:
                db.execute(
                    "UPDATE jobs SET state = ?, route_only = ?, spool_path = ?, done_at = NULL, attempts = 0,"
                    " next_attempt_at = 0, error = NULL WHERE id = ?",
                    (RECEIVED, q["route"], restored_path, q["job_id"]),
                )

    def delivered_copy(self, delivery_id: int) -> tuple[str, str] | None:
        """(new SOP Instance UID, patient pseudonym) of the de-identified copy a delivery carries."""
        rows = self._read(
            "SELECT o.sop_uid, o.patient_pseudonym FROM deliveries d JOIN outputs o ON o.id = d.output_id"
            " WHERE d.id = ?",
            (delivery_id,),
        )
        return (rows[0]["sop_uid"], rows[0]["patient_pseudonym"]) if rows else None

    def delete_quarantined(self, qid: int, by: str) -> None:
        with self.transaction() as db:
            changed = db.execute(
                "UPDATE quarantine SET state = ?, resolved_at = ?, resolved_by = ?"
                " WHERE id = ? AND state = ?",
                (DELETED, time.time(), by, qid, HELD),
            ).rowcount
            if not changed:
                raise KeyError(qid)

    # --- the face pipeline's identity memory ---------------------------------------------

    def surrogate_for(self, pseudonym: str) -> str | None:
        """The surrogate person this patient's first replaced photo was given, if any."""
        rows = self._read("SELECT surrogate FROM identities WHERE patient_pseudonym = ?", (pseudonym,))
        return rows[0]["surrogate"] if rows else None

    def remember_surrogate(self, pseudonym: str, surrogate: str) -> None:
        """Keep the first choice: a later photo that had to use another person does not move it."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO identities (patient_pseudonym, surrogate, chosen_at) VALUES (?, ?, ?)"
                " ON CONFLICT (patient_pseudonym) DO NOTHING",
                (pseudonym, surrogate, time.time()),
            )

    def generated_for(self, pseudonym: str) -> tuple[int, str] | None:
        """The index, in this patient's keyed latent stream, of the generated person they were
        given, and the steering code it was rendered with."""
        rows = self._read(
            "SELECT latent_index, steer FROM generated_identities WHERE patient_pseudonym = ?", (pseudonym,)
        )
        return (rows[0]["latent_index"], rows[0]["steer"]) if rows else None

    def remember_generated(self, pseudonym: str, index: int, steer: str, embedding: np.ndarray) -> None:
        """Keep the first generated person and its SFace embedding (what keeping later patients'
        people apart from it needs; the face itself is regenerated from the index and steering)."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO generated_identities"
                " (patient_pseudonym, latent_index, steer, embedding, chosen_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (patient_pseudonym) DO NOTHING",
                (pseudonym, int(index), steer, np.asarray(embedding, "<f4").tobytes(), time.time()),
            )

    def generated_embeddings(self, excluding: str) -> np.ndarray:
        """(n, 128) SFace embeddings of the generated people of every patient but ``excluding``."""
        rows = self._read(
            "SELECT embedding FROM generated_identities WHERE patient_pseudonym != ?", (excluding,)
        )
        if not rows:
            return np.zeros((0, 128), np.float32)
        return np.stack([np.frombuffer(r["embedding"], "<f4") for r in rows])

    # --- reporting -----------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Queue figures for status output and tests."""
        result: dict[str, int] = {}
        for table, prefix in (("jobs", "jobs"), ("deliveries", "deliveries"), ("quarantine", "quarantine")):
            for r in self._read(f"SELECT state, COUNT(*) AS n FROM {table} GROUP BY state"):
                result[f"{prefix}.{r['state']}"] = r["n"]
        return result

    def backlog(self) -> dict[str, dict[str, float]]:
        """Per destination, what waits to be sent: ``pending``, of which ``retrying`` (failed at least
        once), the ``oldest`` one's creation time and when the ``next`` try is due; for the console's
        Status page, where a destination that is down shows as a growing retry backlog."""
        rows = self._read(
            "SELECT destination, COUNT(*) AS pending, SUM(attempts > 0) AS retrying,"
            " MIN(created_at) AS oldest, MIN(next_attempt_at) AS next FROM deliveries"
            " WHERE state = ? GROUP BY destination",
            (PENDING,),
        )
        return {r["destination"]: {k: r[k] for k in ("pending", "retrying", "oldest", "next")} for r in rows}

    def latencies(self) -> list[float]:
        """Seconds from receipt to delivery, per delivered instance (for the benchmark)."""
        rows = self._read(
            "SELECT d.delivered_at - j.received_at AS t"
            " FROM deliveries d JOIN outputs o ON o.id = d.output_id"
            " JOIN jobs j ON j.id = o.job_id WHERE d.state = ?",
            (DELIVERED,),
        )
        return [r["t"] for r in rows]
