"""Telling the environment's failures from an instance's own, and waiting out the first kind.

The service's threads retry only what the environment does to them (a full disk, an I/O
error, a locked or unwritable state store): that passes, and every instance would fail the
same way meanwhile. Anything else is the instance's own doing and must not be retried forever,
or one bad instance holds up the queue (or kills the thread) for good.
"""

from __future__ import annotations

import errno
import sqlite3
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from ..audit.trail import AuditTrail
from .store import StoreUnavailable

log = structlog.get_logger("dicom_anon.service")

# errno values that say "the machine", not "this file": space, quota, I/O, read-only file system,
# out of file descriptors. An OSError without an errno (Pillow's "image file is truncated") or with
# another one (a missing file) is about the thing being read. Running out of memory is not here:
# one huge instance does that, and retrying it forever would hold up everything behind it.
_ENVIRONMENT_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EMFILE, errno.ENFILE}
)


def is_environment(exc: BaseException) -> bool:
    """True for failures that are retried with backoff: disk full, I/O errors, the state store
    unwritable or busy (SQLite's disk full, disk I/O error, database is locked all arrive as
    OperationalError) or unreachable (a PostgreSQL server restarting, the network)."""
    if isinstance(exc, (sqlite3.OperationalError, StoreUnavailable)):
        return True
    return isinstance(exc, OSError) and exc.errno in _ENVIRONMENT_ERRNOS


def describe_exception(exc: BaseException) -> str:
    """Type and place of an unexpected error, without its message: messages can quote PHI."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return f"{type(exc).__name__}{where}"


def describe_environment(exc: BaseException) -> str:
    """What went wrong around us, for the log: the OS's or SQLite's words (no patient data in them)."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    return f"{type(exc).__name__}: {str(exc)[:120]}"


@dataclass
class Backoff:
    """Exponential backoff with a cap: how long a thread waits after its n-th failure in a row."""

    first_s: float
    max_s: float
    failures: int = 0

    def next_delay(self) -> float:
        self.failures += 1
        return min(self.max_s, self.first_s * 2 ** (self.failures - 1))

    def reset(self) -> None:
        self.failures = 0


def record_or_log(audit: AuditTrail, event: str, **fields: Any) -> bool:
    """Audit ``event``, or, when the trail cannot be written (a full disk), put it in the operational
    log with its fields (which never hold PHI) and go on: a refusal, an abort or a start must still
    happen when it cannot be recorded. False when only the log has it."""
    try:
        audit.record(event, **fields)
    except (OSError, ValueError) as exc:  # ValueError: the trail was closed (the service is stopping)
        log.error(
            "audit trail cannot be written; event only in this log",
            audit_event=event,
            error=describe_environment(exc),
            **fields,
        )
        return False
    return True
