"""The durable queue and state store: what the service's threads (and several machines') share.

Every state change is one short transaction (claim a job, finish routing, mark delivered, retry
at, quarantine, release). The service sees only the ``StateStore`` protocol below; ``open_store``
picks the backend the settings name: SQLite in the data dir for one machine
(``store_sqlite.py``), or PostgreSQL shared by several ingress nodes and workers
(``store_postgres.py``). Both run the same transactions (``store_sql.py``), written in the SQL the
two speak alike, so what differs is only how a transaction starts and how a claim is locked.

Paths are stored relative to the data dir so a restored backup works at a new place.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np  # annotations only: ``rules check`` imports this module for StoreUnavailable

    from ..config import Settings

# Job states. A job is 'done' when none of its deliveries is pending; quarantined parts hold
# their own copy of the file, so they do not keep the job (or its spool file) open.
RECEIVED, PROCESSING, ROUTED, DONE = "received", "processing", "routed", "done"
PENDING, DELIVERED, QUARANTINED = "pending", "delivered", "quarantined"
HELD, RELEASED, DELETED = "held", "released", "deleted"
# The quarantine code of a de-identified copy a route holds until a person releases it.
AWAITING_REVIEW = "awaiting-review"
# A job's error when the process working on it stopped (killed, out of memory, crashed): it counts
# a try, so that an instance that stops the service every time is held, not taken up for ever.
STOPPED_MID_JOB = "the service stopped while processing it (killed, out of memory or crashed)"


class BusyError(Exception):
    """The row is in use by the running service right now; the operator tries again."""


class LeaseLost(Exception):
    """This node's claim on a job or delivery ended (its lease expired and another node took it,
    or another node finished it): what this node did with it is not recorded, so it is done once."""


class StoreUnavailable(Exception):
    """The state store cannot be used as it is (unreachable, or its schema too old); the message
    is one line that says what to do."""


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
    digest: str | None = None  # SHA-256 of the bytes ingress read strictly and acknowledged


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


class StateStore(Protocol):
    """The transactions the service needs, whatever database holds them.

    ``durable=False`` on ``add_job`` and ``mark_delivered``: the caller's own flush of the data
    dir's file system makes the change durable together with its files and audit record (true of
    SQLite in the data dir; a PostgreSQL store commits these durably itself).
    """

    # The schema version found when the store was opened (None: none yet), before SQLite's own upgrade.
    opened_version: int | None
    # Several nodes use it (PostgreSQL): its commits are durable at once, before the caller's flush.
    shared: bool
    # How long a claim on a job or delivery lasts before another node may take it.
    lease_s: float

    def close(self) -> None: ...
    def upgrade(self) -> tuple[int | None, int]: ...

    # ingress
    def add_job(self, job: NewJob, *, durable: bool = True) -> tuple[int, bool]: ...
    def spool_bytes(self) -> int: ...
    def spool_paths(self) -> set[str]: ...
    def quarantine_paths(self) -> set[str]: ...
    def output_paths(self) -> set[str]: ...

    # worker
    def recover(self) -> int: ...
    def received_spools(self) -> list[tuple[int, str, int]]: ...
    def drop_jobs(self, job_ids: list[int]) -> None: ...
    def claim_job(self) -> Job | None: ...
    def renew_job(self, job_id: int) -> bool: ...
    def retry_job(self, job_id: int, when: float, error: str) -> None: ...
    def job_spool_path(self, job_id: int) -> str | None: ...
    def finish_routing(
        self, job_id: int, outputs: list[NewOutput], quarantines: list[NewQuarantine]
    ) -> tuple[list[int], list[int], bool]: ...
    def forget_spool(self, job_id: int) -> None: ...
    def forget_output(self, path: str) -> None: ...
    def finished_outputs(self) -> list[str]: ...
    def expired_spool(self, before: float) -> list[tuple[int, str]]: ...
    def patient_lock(self, pseudonym: str) -> AbstractContextManager[None]: ...

    # egress
    def due_deliveries(self, destination: str, now: float, limit: int = 32) -> list[Delivery]: ...
    def next_due(self, destination: str) -> float | None: ...
    def pending_destinations(self) -> set[str]: ...
    def retry_at(self, delivery_id: int, when: float, error: str, status: int | None = None) -> int: ...
    def mark_delivered(self, delivery_id: int, status: int, *, durable: bool = True) -> Completion: ...
    def quarantine_delivery(self, delivery_id: int, q: NewQuarantine) -> tuple[int, Completion]: ...

    # quarantine
    def quarantined(self, state: str | None = HELD) -> list[QuarantineRow]: ...
    def quarantine_row(self, qid: int) -> QuarantineRow | None: ...
    def release(self, qid: int, by: str, restored_path: str) -> None: ...
    def delivered_copy(self, delivery_id: int) -> tuple[str, str] | None: ...
    def delete_quarantined(self, qid: int, by: str) -> None: ...

    # the face pipeline's identity memory (faces.identities.IdentityMemory)
    def surrogate_for(self, pseudonym: str) -> str | None: ...
    def remember_surrogate(self, pseudonym: str, surrogate: str) -> None: ...
    def generated_for(self, pseudonym: str) -> tuple[int, str] | None: ...
    def remember_generated(self, pseudonym: str, index: int, steer: str, embedding: np.ndarray) -> None: ...
    def generated_embeddings(self, excluding: str) -> np.ndarray: ...
    def last_passed(self, pseudonym: str) -> tuple[int, float]: ...
    def remember_passed(self, pseudonym: str, oval: float, variant: int | None = None) -> None: ...

    # reporting
    def counts(self) -> dict[str, int]: ...
    def backlog(self) -> dict[str, dict[str, float]]: ...
    def latencies(self) -> list[float]: ...


def open_store(settings: Settings, *, check_schema: bool = True) -> StateStore:
    """The store the settings name, claiming work as this node (``node.id``).

    SQLite creates and migrates its file at open. A PostgreSQL schema is created and migrated only
    by ``dicom-anon db upgrade`` (which opens it with ``check_schema=False``): several nodes share
    it, and one of them altering tables while the others run would stall them all; so a schema
    older than this code needs raises ``StoreUnavailable``, naming the command. Unreachable: the
    same, with libpq's words.
    """
    state = settings.state
    if state.backend == "postgresql":
        from .store_postgres import PostgresStore

        return PostgresStore(
            state.conninfo(), node=settings.node.id, lease_s=state.lease_s, check_schema=check_schema
        )
    from .store_sqlite import SqliteStore

    return SqliteStore(settings.state_path, node=settings.node.id, lease_s=state.lease_s)
