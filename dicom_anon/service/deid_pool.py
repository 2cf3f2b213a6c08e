"""De-identification in worker processes: the CPU-bound half of a headers-only route, bytes in, bytes out.

The header engine and the last gate are pure Python. Run in the service's own process they hold
the interpreter lock that ingress and egress need for every acknowledgement and every send, so
the second core sat idle while a PACS waited. A child process gets the received bytes and the
profile's options and gives back the released bytes with the few facts the outbox and the audit
need. Nothing durable happens in a child: the worker thread still writes the outbox file, the
job's rows and its audit events in the order it did, so the exactly-once guarantees are the
worker's, unchanged. A child that dies (killed, out of memory) fails that attempt of the job and
the pool is started afresh.

Children are started by ``spawn``, never ``fork``: the service has threads (ingress, senders,
SQLite), and a forked child would inherit locks that another thread held at that moment.
"""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset

from ..dicomio import read_checked, read_instance
from ..headers.engine import DeidResult, Profile, deidentify
from ..headers.errors import Refused
from ..headers.gate import GateFailed, release
from ..headers.options import Option
from ..headers.pseudonyms import SiteKey


@dataclass(frozen=True)
class Released:
    """The bytes that passed the last gate and what the worker records about them."""

    data: bytes
    sop_class: str
    sop_uid: str
    study_uid: str
    transfer_syntax: str
    patient_pseudonym: str
    patient_hash: str
    options: frozenset[Option]
    changes: int


def released(result: DeidResult, data: bytes) -> Released:
    """What the worker keeps of a de-identification, wherever it ran."""
    out = result.dataset
    return Released(
        data=data,
        sop_class=str(out.SOPClassUID),
        sop_uid=str(out.SOPInstanceUID),
        study_uid=str(out.get("StudyInstanceUID", "")),
        transfer_syntax=str(out.file_meta.TransferSyntaxUID),
        patient_pseudonym=result.patient_pseudonym,
        patient_hash=result.patient_hash,
        options=result.options,
        changes=len(result.changes),
    )


class Unreadable(Refused):
    """The received bytes do not read strictly: quarantined at the decode stage."""


def read_strictly(data: bytes, *, checked: bool = False) -> Dataset:
    """``read_instance`` whose refusal says it came from reading, not from the engine; with
    ``checked``, bytes whose digest shows that ingress read them strictly (``read_checked``)."""
    try:
        return read_checked(data) if checked else read_instance(data)
    except Refused as refused:
        raise Unreadable(refused.code, refused.reason) from None


# The refusals a child sends back, by class name: Refused and its subclasses take their own
# arguments and do not pickle back as they are.
_REFUSALS: dict[str, type[Refused]] = {c.__name__: c for c in (GateFailed, Unreadable, Refused)}


@dataclass(frozen=True)
class _Refusal:
    code: str
    reason: str
    kind: str


# The site key each child de-identifies with, loaded once when it starts (from the secret file:
# the secret itself never crosses the pipe).
_key: SiteKey | None = None


def _start_child(secret_path: Path) -> None:
    global _key
    _key = SiteKey.load_or_create(secret_path)


def _start_child_done() -> None:
    """Nothing: submitted so that the pool starts its children."""


def _deidentify_bytes(data: bytes, options: frozenset[Option], checked: bool) -> Released | _Refusal:
    assert _key is not None
    profile = Profile(options=options)
    try:
        result = deidentify(read_strictly(data, checked=checked), _key, profile, in_place=True)
        return released(result, release(result, profile))
    except Refused as refused:
        kind = next(name for name, cls in _REFUSALS.items() if isinstance(refused, cls))
        return _Refusal(refused.code, refused.reason, kind)


class DeidPool:
    """Processes that de-identify received bytes for the worker threads; one per thread is enough,
    since a thread hands over one instance at a time."""

    def __init__(self, secret_path: Path, processes: int) -> None:
        self.secret_path = secret_path
        self.processes = processes
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None

    def deidentify(self, data: bytes, options: frozenset[Option], *, checked: bool = False) -> Released:
        """The released bytes of ``data`` under ``options``; raise ``Refused`` as the worker's own
        process would (``Unreadable`` when reading, ``GateFailed`` at the gate), ``RuntimeError`` if
        the child died. ``checked``: ``read_strictly``'s."""
        pool = self._running()
        try:
            outcome = pool.submit(_deidentify_bytes, data, options, checked).result()
        except BrokenProcessPool:
            self._restart(pool)
            raise RuntimeError("the de-identification process died") from None
        if isinstance(outcome, _Refusal):
            raise _REFUSALS[outcome.kind](outcome.code, outcome.reason)
        return outcome

    def start(self) -> None:
        """Start the children now, while the service is idle: each imports pydicom and the engine
        (about half a second), which the first instances would otherwise wait for."""
        self._running().submit(_start_child_done)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def _running(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    self.processes,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_start_child,
                    initargs=(self.secret_path,),
                )
            return self._pool

    def _restart(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is broken:
                self._pool = None
        broken.shutdown(wait=False, cancel_futures=True)
