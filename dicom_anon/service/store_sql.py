"""The state store's transactions, in the SQL that SQLite and PostgreSQL speak alike.

A backend (``store_sqlite.SqliteStore``, ``store_postgres.PostgresStore``) says only how a
transaction starts and commits, how rows to claim are locked (nothing on SQLite, whose
``BEGIN IMMEDIATE`` already serialises writers; ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so
that nodes claiming at once take different rows without waiting for each other), and the
column types of its dialect. Everything else (the queue's order, leases, exactly-once
bookkeeping, quarantine and release) is written once, here. SQL is written with ``?``
placeholders; the PostgreSQL backend hands them to psycopg as ``%s``.

Leases: a claimed job or delivery carries ``claimed_by`` (the node id) and ``lease_until``. A
node that died holds its work only until then; a node finishing work another node took over
after its lease ran out finds the row no longer its own (``LeaseLost``) and records nothing,
so every job is routed once and every delivery closed once. (Deliveries are claimed only on a
store several nodes share: one node has one sender per destination.)
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any, ClassVar, Protocol

import numpy as np

from .store import (
    DELETED,
    DELIVERED,
    DONE,
    HELD,
    PENDING,
    PROCESSING,
    QUARANTINED,
    RECEIVED,
    RELEASED,
    ROUTED,
    STOPPED_MID_JOB,
    BusyError,
    Completion,
    Delivery,
    Job,
    LeaseLost,
    NewJob,
    NewOutput,
    NewQuarantine,
    QuarantineRow,
)

# 4: for nodes sharing one store, jobs name the node that received them (received_by), and jobs and
# deliveries carry a lease (claimed_by, lease_until).
# 5: a generated person remembers which of its variants last passed QA (variant).
# 6: ... and the face oval it passed at (oval).
SCHEMA_VERSION = 6

# An output none of whose deliveries is still to be sent (its outbox file is no longer needed);
# the one parameter is PENDING.
_NONE_PENDING = "NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.output_id = outputs.id AND d.state = ?)"

# The current tables; ``{id}``, ``{real}``, ``{blob}`` and ``{int8}`` are the dialect's types.
_TABLES = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS jobs (
    id {id},
    received_at {real} NOT NULL,
    calling_ae TEXT NOT NULL,
    peer TEXT NOT NULL,
    sop_class TEXT NOT NULL,
    sop_key TEXT NOT NULL,
    digest TEXT NOT NULL,
    transfer_syntax TEXT NOT NULL,
    size {int8} NOT NULL,
    spool_path TEXT,
    state TEXT NOT NULL,
    route_only TEXT,
    claimed_at {real},
    done_at {real},
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at {real} NOT NULL DEFAULT 0,
    error TEXT,
    received_by TEXT,
    claimed_by TEXT,
    lease_until {real}
)""",
    """CREATE TABLE IF NOT EXISTS outputs (
    id {id},
    job_id {int8} NOT NULL REFERENCES jobs (id),
    route TEXT NOT NULL,
    path TEXT,
    sop_class TEXT NOT NULL,
    sop_uid TEXT NOT NULL,
    transfer_syntax TEXT NOT NULL,
    patient_pseudonym TEXT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS deliveries (
    id {id},
    output_id {int8} NOT NULL REFERENCES outputs (id),
    destination TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at {real} NOT NULL,
    next_attempt_at {real} NOT NULL,
    delivered_at {real},
    status INTEGER,
    error TEXT,
    claimed_by TEXT,
    lease_until {real}
)""",
    """CREATE TABLE IF NOT EXISTS quarantine (
    id {id},
    job_id {int8} NOT NULL REFERENCES jobs (id),
    delivery_id {int8} REFERENCES deliveries (id),
    route TEXT,
    destination TEXT,
    stage TEXT NOT NULL,
    code TEXT NOT NULL,
    reason TEXT NOT NULL,
    path TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at {real} NOT NULL,
    resolved_at {real},
    resolved_by TEXT
)""",
    """CREATE TABLE IF NOT EXISTS identities (
    patient_pseudonym TEXT PRIMARY KEY,
    surrogate TEXT NOT NULL,
    chosen_at {real} NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS generated_identities (
    patient_pseudonym TEXT PRIMARY KEY,
    latent_index INTEGER NOT NULL,
    steer TEXT NOT NULL DEFAULT '',
    embedding {blob} NOT NULL,
    chosen_at {real} NOT NULL,
    variant INTEGER NOT NULL DEFAULT 0,
    oval {real} NOT NULL DEFAULT 0
)""",
)

# Columns later versions added: a store of an older version gains them on upgrade, before the
# indexes below are made.
_ADDED = {
    # 2: jobs count their failed tries and wait out a backoff (poison jobs).
    "jobs": {
        "attempts": "INTEGER NOT NULL DEFAULT 0",
        "next_attempt_at": "{real} NOT NULL DEFAULT 0",
        "error": "TEXT",
        # 4: the node that received it, and leases
        "received_by": "TEXT",
        "claimed_by": "TEXT",
        "lease_until": "{real}",
    },
    # 3: a generated person is its latent index and its steering code.
    # 5: the variant of the person that last passed QA; 6: the oval it passed at.
    "generated_identities": {
        "steer": "TEXT NOT NULL DEFAULT ''",
        "variant": "INTEGER NOT NULL DEFAULT 0",
        "oval": "{real} NOT NULL DEFAULT 0",
    },
    "deliveries": {"claimed_by": "TEXT", "lease_until": "{real}"},
}

_INDEXES = (
    "CREATE UNIQUE INDEX IF NOT EXISTS jobs_same_instance ON jobs (sop_key, digest)",
    "CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, id)",
    "CREATE INDEX IF NOT EXISTS outputs_by_job ON outputs (job_id)",
    "CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (destination, state, next_attempt_at, id)",
    "CREATE INDEX IF NOT EXISTS deliveries_by_output ON deliveries (output_id)",
    "CREATE INDEX IF NOT EXISTS quarantine_by_state ON quarantine (state, id)",
)

_DELIVERY = (
    "SELECT d.id, o.job_id, d.output_id, d.destination, o.route, o.path, o.sop_class, o.sop_uid,"
    " o.transfer_syntax, o.patient_pseudonym, d.attempts, d.created_at"
    " FROM deliveries d JOIN outputs o ON o.id = d.output_id"
)


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Transaction(Protocol):
    """What a transaction hands the SQL below: the part of sqlite3.Connection both backends offer.
    Rows are read by column name."""

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> Cursor: ...

    def executemany(self, sql: str, params: Iterable[Sequence[Any]], /) -> Any: ...


class SqlStore(ABC):
    """The ``store.StateStore`` transactions over a backend's connection.

    ``node`` names this node in the leases it takes; ``lease_s`` is how long a claim lasts. A
    ``shared`` store is used by several nodes: start-up recovery then puts back only this node's
    claims, and every commit is durable by itself (the data dir's flush does not reach it).
    """

    shared: bool
    opened_version: int | None
    # Appended to the SELECT of rows a claim takes, and of a row a transaction is about to change.
    claim_lock = ""
    row_lock = ""
    types: ClassVar[dict[str, str]]

    def __init__(self, *, node: str, lease_s: float) -> None:
        self.node = node
        self.lease_s = lease_s

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def transaction(self, *, durable: bool = True) -> AbstractContextManager[Transaction]:
        """One transaction. ``durable=False`` lets the commit return before it reaches the disk:
        used only where losing the change to a power cut is harmless (the state it leads to is
        reached again from the durable state before it), and the next durable commit flushes it."""

    @abstractmethod
    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]: ...

    @abstractmethod
    def _columns(self, db: Transaction, table: str) -> set[str]:
        """The table's column names; empty when there is no such table."""

    @abstractmethod
    def patient_lock(self, pseudonym: str) -> AbstractContextManager[None]:
        """Held while one patient's photo passes the face stage: two first photos of a new patient at
        once would each be given a new person, and the second would leave with a face no later photo
        shows. Per pseudonym, so that different patients still run side by side."""

    # --- schema --------------------------------------------------------------------------

    def _version(self, db: Transaction) -> int | None:
        if not self._columns(db, "meta"):
            return None
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row["value"]) if row is not None else None

    def schema_version(self) -> int | None:
        """The schema version the store holds (None: no schema yet)."""
        with self.transaction(durable=False) as db:
            return self._version(db)

    @abstractmethod
    def _lock_schema(self, db: Transaction) -> None:
        """Keep two upgrades from running at once."""

    def upgrade(self) -> tuple[int | None, int]:
        """Create the tables, or add what a store of an older version lacks, in one transaction;
        returns the schema version before and after."""
        with self.transaction() as db:
            self._lock_schema(db)
            before = self._version(db)
            for sql in _TABLES:
                db.execute(sql.format(**self.types))
            for table, wanted in _ADDED.items():
                have = self._columns(db, table)
                for name, kind in wanted.items():
                    if name not in have:
                        db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind.format(**self.types)}")
            for sql in _INDEXES:
                db.execute(sql)
            if before != SCHEMA_VERSION:  # a store already current is not written to (a full disk opens it)
                db.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (str(SCHEMA_VERSION),),
                )
        return before, SCHEMA_VERSION

    # --- ingress -------------------------------------------------------------------------

    def add_job(self, job: NewJob, *, durable: bool = True) -> tuple[int, bool]:
        """Record a received instance. Returns (job id, True), or (the earlier job's id, False)
        when the same bytes of the same SOP instance were already accepted: a PACS that re-sends
        after a lost response must not get the instance forwarded twice (on another ingress node
        too: the unique index decides). ``durable=False``: the caller's own flush makes it durable
        together with the spool file and the receipt."""
        with self.transaction(durable=durable or self.shared) as db:
            row = db.execute(
                "INSERT INTO jobs (received_at, calling_ae, peer, sop_class, sop_key, digest,"
                " transfer_syntax, size, spool_path, state, received_by)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (sop_key, digest) DO NOTHING RETURNING id",
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
                    self.node,
                ),
            ).fetchone()
            if row is not None:
                return int(row["id"]), True
            row = db.execute(
                "SELECT id FROM jobs WHERE sop_key = ? AND digest = ?", (job.sop_key, job.digest)
            ).fetchone()
            return int(row["id"]), False

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
        deterministic, so doing one again writes the same files and the same UIDs), and the
        deliveries being sent are free to be taken again. On a shared store only this node's:
        the others' are still being worked on.

        Each such job counts a try: an instance that kills the process (a decoder crashing or
        taking all memory) would otherwise be taken up first at every restart, for ever, and
        nothing behind it would move. The worker holds a job whose tries ran out this way."""
        mine = " AND claimed_by = ?" if self.shared else ""
        node = (self.node,) if self.shared else ()
        with self.transaction() as db:
            db.execute(
                "UPDATE deliveries SET claimed_by = NULL, lease_until = NULL WHERE state = ?" + mine,
                (PENDING, *node),
            )
            return db.execute(
                "UPDATE jobs SET state = ?, claimed_at = NULL, claimed_by = NULL, lease_until = NULL,"
                " attempts = attempts + 1, error = ? WHERE state = ?" + mine,
                (RECEIVED, STOPPED_MID_JOB, PROCESSING, *node),
            ).rowcount

    def received_spools(self) -> list[tuple[int, str, int]]:
        """(job id, spool path, size) of every job received and not yet taken up (nothing refers to
        it, as to one released from quarantine): what start checks for a spool file a power cut did
        not let reach the disk. On a shared store only the jobs this node received: another node may
        be writing and acknowledging its own right now."""
        mine = " AND received_by = ?" if self.shared else ""
        rows = self._read(
            "SELECT id, spool_path, size FROM jobs WHERE state = ? AND spool_path IS NOT NULL"
            " AND id NOT IN (SELECT job_id FROM quarantine) AND id NOT IN (SELECT job_id FROM outputs)"
            + mine,
            (RECEIVED, *((self.node,) if self.shared else ())),
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
        the ones behind it go ahead), or one whose claim's lease ran out, now claimed by this node
        until ``lease_s`` from now; None when none is due.
        (Not fsynced: a claim lost to a power cut only means the job is claimed again.)"""
        now = time.time()
        with self.transaction(durable=False) as db:
            row = db.execute(
                "SELECT * FROM jobs WHERE (state = ? AND next_attempt_at <= ?)"
                " OR (state = ? AND lease_until < ?) ORDER BY id LIMIT 1" + self.claim_lock,
                (RECEIVED, now, PROCESSING, now),
            ).fetchone()
            if row is None:
                return None
            # A claim whose lease ran out: the node working on it stopped, and that counts a try
            # (``recover``), or one instance could stop every node of a cluster in turn.
            stopped = int(row["state"] == PROCESSING)
            error = STOPPED_MID_JOB if stopped else row["error"]
            db.execute(
                "UPDATE jobs SET state = ?, claimed_at = ?, claimed_by = ?, lease_until = ?,"
                " attempts = attempts + ?, error = ? WHERE id = ?",
                (PROCESSING, now, self.node, now + self.lease_s, stopped, error, row["id"]),
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
                row["attempts"] + stopped,
                row["digest"],
            )

    def renew_job(self, job_id: int) -> bool:
        """Extend this node's claim on a job it is still working on by ``lease_s`` from now; False
        when the claim is no longer its own (another node took the job over)."""
        with self.transaction(durable=False) as db:
            return (
                db.execute(
                    "UPDATE jobs SET lease_until = ? WHERE id = ? AND state = ? AND claimed_by = ?",
                    (time.time() + self.lease_s, job_id, PROCESSING, self.node),
                ).rowcount
                > 0
            )

    def retry_job(self, job_id: int, when: float, error: str) -> None:
        """Processing failed for the instance's own reasons: count the try, and put the job back
        in line from ``when`` on, so that the jobs behind it are not held up meanwhile."""
        with self.transaction(durable=False) as db:
            db.execute(
                "UPDATE jobs SET state = ?, claimed_at = NULL, claimed_by = NULL, lease_until = NULL,"
                " attempts = attempts + 1, next_attempt_at = ?, error = ?"
                " WHERE id = ? AND state = ? AND claimed_by = ?",
                (RECEIVED, when, error, job_id, PROCESSING, self.node),
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
        ``LeaseLost`` when the job is no longer this node's to finish.

        Not fsynced: lost to a power cut, the job is still 'processing' and is done again after
        recovery, with the same keyed UIDs; the next durable commit (a receipt, a delivery)
        makes it durable anyway."""
        now = time.time()
        delivery_ids: list[int] = []
        quarantine_ids: list[int] = []
        held_ids: list[int] = []
        with self.transaction(durable=False) as db:
            mine = db.execute(
                "SELECT id FROM jobs WHERE id = ? AND state = ? AND claimed_by = ?" + self.row_lock,
                (job_id, PROCESSING, self.node),
            ).fetchone()
            if mine is None:
                raise LeaseLost(f"job {job_id} is no longer claimed by node {self.node}")
            for out in outputs:
                output_id = db.execute(
                    "INSERT INTO outputs (job_id, route, path, sop_class, sop_uid, transfer_syntax,"
                    " patient_pseudonym) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    (
                        job_id,
                        out.route,
                        out.path,
                        out.sop_class,
                        out.sop_uid,
                        out.transfer_syntax,
                        out.patient_pseudonym,
                    ),
                ).fetchone()["id"]
                held = {q.destination: q for q in out.held}
                for dest in out.destinations:
                    delivery_id = db.execute(
                        "INSERT INTO deliveries (output_id, destination, state, created_at, next_attempt_at,"
                        " error) VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                        (
                            output_id,
                            dest,
                            QUARANTINED if dest in held else PENDING,
                            now,
                            now,
                            held[dest].reason if dest in held else None,
                        ),
                    ).fetchone()["id"]
                    delivery_ids.append(int(delivery_id))
                    if dest in held:
                        held_ids.append(self._insert_quarantine(db, job_id, delivery_id, held[dest], now))
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
                "UPDATE jobs SET state = ?, route_only = NULL, done_at = ?, claimed_by = NULL,"
                " lease_until = NULL WHERE id = ?",
                (DONE if done else ROUTED, now if done else None, job_id),
            )
        return delivery_ids, quarantine_ids, done

    @staticmethod
    def _insert_quarantine(
        db: Transaction, job_id: int, delivery_id: int | None, q: NewQuarantine, now: float
    ) -> int:
        row = db.execute(
            "INSERT INTO quarantine (job_id, delivery_id, route, destination, stage, code, reason, path,"
            " state, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (job_id, delivery_id, q.route, q.destination, q.stage, q.code, q.reason, q.path, HELD, now),
        ).fetchone()
        return int(row["id"])

    def forget_output(self, path: str) -> None:
        """The outbox file of a finished output was removed; a released copy (pending again) keeps
        its path."""
        with self.transaction(durable=False) as db:
            db.execute(f"UPDATE outputs SET path = NULL WHERE path = ? AND {_NONE_PENDING}", (path, PENDING))

    def finished_outputs(self) -> list[str]:
        """Outbox files no delivery needs any more whose removal a kill cut short: on a shared root
        any node's sender closes any node's deliveries, while start-up clears only a node's own
        folder, so these are found by their rows."""
        rows = self._read(f"SELECT path FROM outputs WHERE path IS NOT NULL AND {_NONE_PENDING}", (PENDING,))
        return [r["path"] for r in rows]

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
        """Pending deliveries to one destination whose retry time has come, oldest first, now claimed
        by this node until ``lease_s`` from now: another node's sender to the same destination
        takes others (or these, once the lease ran out). On a store of one node its one sender per
        destination has nothing to claim them from, and reads them only: it must go on sending on a
        full disk, where no write succeeds (it records the deliveries once there is room)."""
        if not self.shared:
            rows = self._read(
                f"{_DELIVERY} WHERE d.destination = ? AND d.state = ? AND d.next_attempt_at <= ?"
                " ORDER BY d.id LIMIT ?",
                (destination, PENDING, now, limit),
            )
            return [Delivery(**dict(r)) for r in rows]
        with self.transaction(durable=False) as db:
            ids = [
                r["id"]
                for r in db.execute(
                    "SELECT id FROM deliveries WHERE destination = ? AND state = ? AND next_attempt_at <= ?"
                    " AND (claimed_by IS NULL OR claimed_by = ? OR lease_until < ?) ORDER BY id LIMIT ?"
                    + self.claim_lock,
                    (destination, PENDING, now, self.node, now, limit),
                ).fetchall()
            ]
            if not ids:
                return []
            marks = ", ".join("?" * len(ids))
            db.execute(
                f"UPDATE deliveries SET claimed_by = ?, lease_until = ? WHERE id IN ({marks})",
                (self.node, time.time() + self.lease_s, *ids),
            )
            rows = db.execute(f"{_DELIVERY} WHERE d.id IN ({marks}) ORDER BY d.id", ids).fetchall()
        return [Delivery(**dict(r)) for r in rows]

    def next_due(self, destination: str) -> float | None:
        """When this node may next try a pending delivery to ``destination`` (None: nothing pending):
        one another node's sender holds is due for this one when that lease ends, not before, or
        the senders waiting for it would ask again and again meanwhile."""
        rows = self._read(
            "SELECT MIN(CASE WHEN claimed_by != ? AND lease_until > next_attempt_at THEN lease_until"
            " ELSE next_attempt_at END) AS t FROM deliveries WHERE destination = ? AND state = ?",
            (self.node, destination, PENDING),
        )
        return rows[0]["t"]

    def pending_destinations(self) -> set[str]:
        return {
            r["destination"]
            for r in self._read("SELECT DISTINCT destination FROM deliveries WHERE state = ?", (PENDING,))
        }

    def retry_at(self, delivery_id: int, when: float, error: str, status: int | None = None) -> int:
        """A delivery failed for now: count the attempt, try again at ``when`` (by whichever node
        comes first). Returns attempts. (Not fsynced: a lost retry time only means an earlier retry.)"""
        with self.transaction(durable=False) as db:
            db.execute(
                "UPDATE deliveries SET attempts = attempts + 1, next_attempt_at = ?, error = ?, status = ?,"
                " claimed_by = NULL, lease_until = NULL WHERE id = ? AND state = ?",
                (when, error, status, delivery_id, PENDING),
            )
            row = db.execute("SELECT attempts FROM deliveries WHERE id = ?", (delivery_id,)).fetchone()
            return int(row["attempts"])

    def mark_delivered(self, delivery_id: int, status: int, *, durable: bool = True) -> Completion:
        """The destination answered success or a warning; close the delivery and whatever it completes.
        ``durable=False``: the caller's own flush makes it durable with the audit record.
        ``LeaseLost`` when another node closed it meanwhile (after this node's lease ran out)."""
        now = time.time()
        with self.transaction(durable=durable or self.shared) as db:
            self._lock_job(db, delivery_id)
            changed = db.execute(
                "UPDATE deliveries SET state = ?, status = ?, delivered_at = ?, attempts = attempts + 1,"
                " error = NULL, claimed_by = NULL, lease_until = NULL WHERE id = ? AND state = ?",
                (DELIVERED, status, now, delivery_id, PENDING),
            ).rowcount
            if not changed:
                raise LeaseLost(f"delivery {delivery_id} was closed by another node")
            return self._complete(db, delivery_id, now)

    def quarantine_delivery(self, delivery_id: int, q: NewQuarantine) -> tuple[int, Completion]:
        """A permanent refusal: the delivery ends in quarantine (its file copied there by the caller).
        ``LeaseLost`` when another node closed it meanwhile."""
        now = time.time()
        with self.transaction() as db:
            self._lock_job(db, delivery_id)
            changed = db.execute(
                "UPDATE deliveries SET state = ?, error = ?, claimed_by = NULL, lease_until = NULL"
                " WHERE id = ? AND state = ?",
                (QUARANTINED, q.reason, delivery_id, PENDING),
            ).rowcount
            if not changed:
                raise LeaseLost(f"delivery {delivery_id} was closed by another node")
            job_id = db.execute(
                "SELECT o.job_id FROM deliveries d JOIN outputs o ON o.id = d.output_id WHERE d.id = ?",
                (delivery_id,),
            ).fetchone()["job_id"]
            qid = self._insert_quarantine(db, job_id, delivery_id, q, now)
            return qid, self._complete(db, delivery_id, now)

    def _lock_job(self, db: Transaction, delivery_id: int) -> None:
        """Lock the delivery's job before closing the delivery: two deliveries of one job closed at
        once (on two nodes, to two destinations) would each still see the other pending, and the
        job would never be done."""
        db.execute(
            "SELECT id FROM jobs WHERE id ="
            " (SELECT o.job_id FROM deliveries d JOIN outputs o ON o.id = d.output_id WHERE d.id = ?)"
            + self.row_lock,
            (delivery_id,),
        )

    def _complete(self, db: Transaction, delivery_id: int, now: float) -> Completion:
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
        # The row keeps naming the file until the caller has removed it (``forget_output``): a kill
        # in between leaves a row that ``finished_outputs`` finds, never a file that no row names.
        output_path = row["path"] if not output_open else None
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
            q = db.execute(
                "SELECT * FROM quarantine WHERE id = ? AND state = ?" + self.row_lock, (qid, HELD)
            ).fetchone()
            if q is None:
                raise KeyError(qid)
            job_state = db.execute(
                "SELECT state FROM jobs WHERE id = ?" + self.row_lock, (q["job_id"],)
            ).fetchone()["state"]
            if job_state not in (ROUTED, DONE):
                raise BusyError(f"job {q['job_id']} is {job_state}; release it once that has finished")
            db.execute(
                "UPDATE quarantine SET state = ?, resolved_at = ?, resolved_by = ? WHERE id = ?",
                (RELEASED, now, by, qid),
            )
            if q["delivery_id"] is not None:
                db.execute(
                    "UPDATE deliveries SET state = ?, attempts = 0, next_attempt_at = ?, created_at = ?,"
                    " error = NULL, claimed_by = NULL, lease_until = NULL WHERE id = ?",
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

    def last_passed(self, pseudonym: str) -> tuple[int, float]:
        """The variant of the patient's generated person and the face oval that last passed QA
        ((0, 0.0): none yet)."""
        rows = self._read(
            "SELECT variant, oval FROM generated_identities WHERE patient_pseudonym = ?", (pseudonym,)
        )
        return (int(rows[0]["variant"]), float(rows[0]["oval"])) if rows else (0, 0.0)

    def remember_passed(self, pseudonym: str, oval: float, variant: int | None = None) -> None:
        """Try this oval (and this variant, when one was needed) first on the patient's next photo.
        Not durable on its own: losing it costs a later photo a few tries, never another face."""
        with self.transaction(durable=False) as db:
            db.execute(
                "UPDATE generated_identities SET oval = ?, variant = COALESCE(?, variant)"
                " WHERE patient_pseudonym = ?",
                (float(oval), variant, pseudonym),
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
            "SELECT destination, COUNT(*) AS pending,"
            " SUM(CASE WHEN attempts > 0 THEN 1 ELSE 0 END) AS retrying,"
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
