"""The worker: takes received jobs in order, routes them, de-identifies, and queues deliveries.

For every route that applies: drop, quarantine, or (forward) run the pixel stage when
the route's profile has pixel settings and a pixel stage is installed, then the header
engine and the last gate (``headers.gate.release``: the output bytes re-read strictly and
checked against the profile, or quarantined), write the result to the outbox and create
one delivery per destination. All
of a job's outcomes are committed in one transaction, so after a crash a job is either
fully routed or processed again from the start (with the same keyed UIDs).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pynetdicom
import structlog
from pydicom.dataset import Dataset

from .. import __version__
from ..audit.trail import AuditTrail
from ..config import PixelSettings, ProfileSettings
from ..dicomio import read_instance
from ..headers.engine import Profile, deidentify, patient_pseudonym
from ..headers.errors import Refused
from ..headers.gate import GateFailed, release
from ..headers.options import Option
from ..headers.pseudonyms import SiteKey
from ..review import unsure_sex
from ..rules import Decision, Rules
from .deid_pool import DeidPool, Unreadable, read_strictly, released
from .failures import Backoff, describe_environment, describe_exception, is_environment
from .files import Layout, link_or_copy, replace_durable, write_durable, write_new
from .metrics import Metrics
from .store import AWAITING_REVIEW, STOPPED_MID_JOB, Job, LeaseLost, NewOutput, NewQuarantine, StateStore

log = structlog.get_logger("dicom_anon.worker")

_REVIEW_REASON = "held until a person has looked at it (dicom-anon quarantine review)"


def _held_for_review(hold: bool | str, pixels: dict[str, Any]) -> str | None:
    """Why a route's de-identified copy waits for a person (the quarantine item's reason), or None
    to send it: every copy (``hold_for_review: true``), or a photo whose new face's sex is a guess
    (``unsure-sex``, from the face pipeline's figures)."""
    if hold is True:
        return _REVIEW_REASON
    if hold == "unsure-sex" and (guess := unsure_sex(pixels.get("qa") or {})):
        return f"{_REVIEW_REASON}: {guess}"
    return None


VERSIONS = {"dicom_anon": __version__, "pydicom": pydicom.__version__, "pynetdicom": pynetdicom.__version__}


@dataclass(frozen=True)
class PixelOutcome:
    """What the pixel stage did: the new dataset, the Annex E pixel options it can claim, and the
    figures for the audit (QA, model versions)."""

    dataset: Dataset
    cleaned: frozenset[Option]
    report: dict[str, Any] = field(default_factory=dict)


# The face pipeline plugs in here: (dataset, the route's pixel settings, site key, the store as the
# memory of which surrogate each patient was given) -> PixelOutcome, raising Refused (no face,
# QA failed, undecodable) to quarantine.
PixelStage = Callable[[Dataset, PixelSettings, SiteKey, StateStore], PixelOutcome]


def face_pixel_stage(ds: Dataset, settings: PixelSettings, key: SiteKey, store: StateStore) -> PixelOutcome:
    """The face pipeline as the service's pixel stage: the surrogate is keyed by the header
    pseudonym and remembered in the store, so every later photo of the patient shows the same
    new person; QA figures go to the audit event, Refused (no face, QA failed) quarantines.

    Imported on first use so that torch and the models load only when a photo route runs.
    """
    from ..faces.pipeline import process_photo

    pseudonym = patient_pseudonym(ds, key)
    # One patient's photos one at a time, on every node (StateStore.patient_lock).
    with store.patient_lock(pseudonym):
        result = process_photo(ds, settings, pseudonym, key, store)
    return PixelOutcome(result.dataset, result.options_cleaned, {"qa": result.qa_figures})


@dataclass
class Runtime:
    """What every thread of the service shares. ``rules`` is replaced whole on reload."""

    rules: Rules
    store: StateStore
    layout: Layout
    audit: AuditTrail
    key: SiteKey
    notify_destination: Callable[[str], None]
    flush: Callable[[], None]  # files.FileSystemFlush: one disk flush for a step's writes
    on_job_done: Callable[[int, str], None]
    metrics: Metrics
    pixel_stage: PixelStage | None = None
    deid_pool: DeidPool | None = None


@dataclass
class _Result:
    outputs: list[NewOutput] = field(default_factory=list)
    quarantines: list[NewQuarantine] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)


# A job that fails for its own reasons (an exception nothing above turned into a quarantine) is
# tried this many times in all, JOB_RETRY_S, 2 * JOB_RETRY_S... apart, then quarantined.
JOB_TRIES = 3
JOB_RETRY_S = 1.0
# A failing environment (disk full, state store unwritable) is waited out: 0.5 s, 1 s... up to a minute.
ENVIRONMENT_BACKOFF = (0.5, 60.0)


class Worker(threading.Thread):
    """One pipeline thread. Several may run; each claims the oldest job that is due.

    No failure ends the thread. One of the environment keeps the job in hand and waits (with
    backoff) until the environment works again: every job would fail the same way meanwhile, and
    the job cannot even be put back while the state store is unwritable. Any other failure is the
    instance's: the job goes back in line behind a short delay, and after JOB_TRIES to quarantine.
    """

    def __init__(self, index: int, runtime: Runtime, wake: threading.Event) -> None:
        super().__init__(name=f"worker-{index}", daemon=True)
        self.rt = runtime
        self.wake = wake
        self._stop_event = threading.Event()
        self._backoff = Backoff(*ENVIRONMENT_BACKOFF)

    def stop(self) -> None:
        self._stop_event.set()
        self.wake.set()

    def run(self) -> None:
        in_hand: Job | None = None
        while not self._stop_event.is_set():
            try:
                job = in_hand or self.rt.store.claim_job()
                if job is None:
                    self.wake.wait(1.0)
                    self.wake.clear()
                    continue
                in_hand = job
                self._run_job(job)
                in_hand = None
                self._backoff.reset()
            except LeaseLost as exc:  # another node took the job over and records it; this try is void
                log.warning("job taken over by another node; this node's result dropped", error=str(exc))
                in_hand = None
            except Exception as exc:  # the environment, or a fault in our own bookkeeping: wait, retry
                delay = self._backoff.next_delay()
                log.error(
                    "cannot go on for now; will try again",
                    job=in_hand.id if in_hand else None,
                    error=describe_environment(exc) if is_environment(exc) else describe_exception(exc),
                    retry_in_s=delay,
                )
                self._stop_event.wait(delay)

    def _run_job(self, job: Job) -> None:
        """Process one job; a failure of the instance's own is counted, then retried or quarantined."""
        if job.attempts >= JOB_TRIES:
            # Only a stop counts past the last try (a failure is quarantined at it): the service
            # stopped while processing this instance, again and again. Hold it unprocessed.
            reason = f"tried {job.attempts} times; the last time, {STOPPED_MID_JOB}"
            log.error("job stopped the service; quarantined", job=job.id, tries=job.attempts)
            result = _Result()
            self._quarantine(job, result, "worker", "processing-stopped", reason, job.route_only)
            self._commit(job, result)
            return
        try:
            with self.rt.metrics.stage("job"), self._holding(job):
                self.process(job)
            return
        except LeaseLost:
            raise
        except Exception as exc:
            if is_environment(exc):
                raise
            error = describe_exception(exc)
        tries = job.attempts + 1
        if tries < JOB_TRIES:
            delay = JOB_RETRY_S * 2 ** (tries - 1)
            log.error("job failed; will try again", job=job.id, error=error, tries=tries, retry_in_s=delay)
            self.rt.store.retry_job(job.id, time.time() + delay, error)  # the jobs behind it go ahead
            return
        log.error("job failed; quarantined", job=job.id, error=error, tries=tries)
        result = _Result()
        reason = f"processing failed {tries} times ({error})"
        self._quarantine(job, result, "worker", "processing-failed", reason, job.route_only)
        self._commit(job, result)

    @contextmanager
    def _holding(self, job: Job) -> Iterator[None]:
        """Keep this node's claim on ``job`` while it is processed: on a shared store, renewed every
        third of the lease, so a photo slower than the lease is not taken over by another node
        (which would de-identify it again). A node that cannot renew (stalled, cut off) still
        loses the job when the lease ends, and its result is dropped (``LeaseLost``)."""
        store = self.rt.store
        if not store.shared:
            yield
            return
        done = threading.Event()

        def renew() -> None:
            while not done.wait(store.lease_s / 3):
                try:
                    if not store.renew_job(job.id):
                        return
                except Exception as exc:  # the store is unreachable: the lease may run out
                    log.warning("cannot renew a job's claim", job=job.id, error=describe_environment(exc))

        keeper = threading.Thread(target=renew, name=f"{self.name}-lease", daemon=True)
        keeper.start()
        try:
            yield
        finally:
            done.set()
            keeper.join()

    # --- one job -------------------------------------------------------------------------

    def process(self, job: Job) -> None:
        rt = self.rt
        rules = rt.rules
        result = _Result()
        loaded = self._load(job, result)
        if loaded is not None:
            data, ds = loaded
            decisions = rules.decide(ds, job.calling_ae)
            if job.route_only is not None:
                decisions = [d for d in decisions if d.route.name == job.route_only]
                if not decisions:
                    self._quarantine(
                        job,
                        result,
                        "route",
                        "route-gone",
                        f"released for route {job.route_only!r}, which no longer applies",
                        None,
                    )
            elif not decisions:
                if rules.unmatched == "drop":
                    result.events.append(
                        {"event": "instance_dropped", "route": None, "reason": "no route matches"}
                    )
                else:
                    self._quarantine(job, result, "route", "no-route", "no route matches this instance", None)
            if decisions:
                result.events.append(
                    {
                        "event": "instance_routed",
                        "routes": [d.route.name for d in decisions],
                        "actions": [d.action for d in decisions],
                    }
                )
            for decision in decisions:
                self._apply(job, data, ds, decision, result)
        self._commit(job, result)

    def _commit(self, job: Job, result: _Result) -> None:
        """Record what the job came to: audit events first, then outputs, deliveries and quarantine
        rows in one transaction, then wake the senders and release the original."""
        rt = self.rt
        # One step, one flush: the job's outbox files and records are on disk before its deliveries
        # can start.
        with rt.audit.batch(sync=False):
            for event in result.events:
                rt.audit.record(event.pop("event"), job=job.id, sop_uid_hash=job.sop_key, **event)
        rt.flush()
        delivery_ids, quarantine_ids, done = rt.store.finish_routing(
            job.id, result.outputs, result.quarantines
        )
        # In finish_routing's order: the job's own quarantines, then each output's held copies,
        # which also name the copy.
        audited = [(q, {}) for q in result.quarantines] + [
            (q, {"new_sop_uid": o.sop_uid, "patient": o.patient_pseudonym})
            for o in result.outputs
            for q in o.held
        ]
        try:
            with rt.audit.batch():
                for (q, copy), qid in zip(audited, quarantine_ids, strict=True):
                    self._audit_quarantined(job, q, qid, **copy)
        except OSError as exc:
            # The job is committed; doing it again would queue its deliveries twice. The log keeps
            # what the trail could not (the quarantine rows and their reason files hold it too).
            log.error(
                "audit trail cannot be written; quarantine events only in this log",
                job=job.id,
                quarantined=quarantine_ids,
                codes=[q.code for q, _ in audited],
                error=describe_environment(exc),
            )
        waiting = set()
        for o in result.outputs:
            waiting |= set(o.destinations) - {q.destination for q in o.held}
        for name in sorted(waiting):
            rt.notify_destination(name)
        if done and job.spool_path is not None:
            rt.on_job_done(job.id, job.spool_path)
        log.debug("job routed", job=job.id, deliveries=len(delivery_ids), quarantined=len(quarantine_ids))

    def _audit_quarantined(self, job: Job, q: NewQuarantine, qid: int, **extra: str) -> None:
        self.rt.audit.record(
            "instance_quarantined",
            job=job.id,
            sop_uid_hash=job.sop_key,
            route=q.route,
            stage=q.stage,
            code=q.code,
            reason=q.reason,
            quarantine=qid,
            **({"destination": q.destination} if q.destination else {}),
            **extra,
        )
        # A copy held for review is routine, not a fault.
        level = log.info if q.code == AWAITING_REVIEW else log.warning
        level("instance quarantined", job=job.id, route=q.route, code=q.code, quarantine=qid)

    def _load(self, job: Job, result: _Result) -> tuple[bytes, Dataset] | None:
        """The received bytes and a reading of their attributes for routing, or None once the job is
        quarantined.

        Ingress read these bytes strictly before it acknowledged them, so routing reads them as
        pydicom does, without the pixels, and so does de-identification (``read_strictly`` with
        ``checked``), once their SHA-256 is the one ingress recorded: a spool file that is not
        the bytes acknowledged is quarantined, never trusted. Bytes pydicom cannot even read are
        read strictly here, for the reason to quarantine them with.
        """
        if job.spool_path is None:
            self._quarantine(
                job, result, "decode", "spool-missing", "the received file is no longer in the spool", None
            )
            return None
        try:
            data = self.rt.layout.abs(job.spool_path).read_bytes()
            if job.digest is not None and hashlib.sha256(data).hexdigest() != job.digest:
                self._quarantine(
                    job,
                    result,
                    "decode",
                    "spool-altered",
                    "the spooled file is not the bytes that were received and acknowledged",
                    None,
                )
                return None
            try:
                return data, pydicom.dcmread(BytesIO(data), stop_before_pixels=True)
            except Exception:
                return data, read_instance(data)
        except Refused as refused:
            self._quarantine(job, result, "decode", refused.code, refused.reason, None)
        except OSError as exc:
            self._quarantine(
                job, result, "decode", "spool-unreadable", exc.strerror or type(exc).__name__, None
            )
        return None

    def _apply(self, job: Job, original: bytes, ds: Dataset, decision: Decision, result: _Result) -> None:
        route = decision.route
        if decision.action == "drop":
            result.events.append(
                {"event": "instance_dropped", "route": route.name, "reason": "route says drop"}
            )
            return
        if decision.action == "quarantine":
            self._quarantine(
                job,
                result,
                "route",
                route.reason or "route-quarantine",
                f"route {route.name!r} says quarantine" + (f" ({route.reason})" if route.reason else ""),
                route.name,
            )
            return
        profile = decision.profile
        assert profile is not None and route.profile is not None
        # _load compared these bytes with the digest of what ingress read strictly.
        checked = job.digest is not None
        try:
            skipped = self._pixels_skipped(profile)
            if skipped is not None and self.rt.deid_pool is not None:
                # Headers only: strict reading, engine and gate in a child process, bytes in and out.
                pixels = skipped
                with self.rt.metrics.stage("headers"):
                    deid = self.rt.deid_pool.deidentify(original, profile.options, checked=checked)
            else:
                dataset, cleaned, pixels = self._pixels(read_strictly(original, checked=checked), profile)
                deid_profile = Profile(options=profile.options)
                with self.rt.metrics.stage("headers"):
                    done = deidentify(dataset, self.rt.key, deid_profile, pixels_cleaned=cleaned)
                    # The last gate: only bytes that re-read strictly and match the profile may leave.
                    deid = released(done, release(done, deid_profile))
        except Refused as refused:
            stage = "gate" if isinstance(refused, GateFailed) else "deid"
            stage = "decode" if isinstance(refused, Unreadable) else stage
            self._quarantine(job, result, stage, refused.code, refused.reason, route.name)
            return
        except Exception as exc:  # fail closed: whatever went wrong, this instance does not leave
            reason = f"internal error ({describe_exception(exc)})"
            log.error("de-identification failed", job=job.id, route=route.name, error=describe_exception(exc))
            self._quarantine(job, result, "deid", "internal-error", reason, route.name)
            return
        path: str | None = None
        held: tuple[NewQuarantine, ...] = ()
        why = _held_for_review(route.hold_for_review, pixels)
        if why is not None:
            held = tuple(
                self._hold(job.id, deid.data, "review", AWAITING_REVIEW, why, route.name, dest)
                for dest in route.destinations
            )
        else:
            target = self.rt.layout.outbox / f"{job.id}-{route.name}.dcm"
            # Only this job writes this name; a copy left by an attempt cut short is replaced whole.
            target.unlink(missing_ok=True)
            write_new(target, deid.data)  # durable with the job's records, by the flush in _commit
            path = self.rt.layout.rel(target)
        result.outputs.append(
            NewOutput(
                route=route.name,
                path=path,
                sop_class=deid.sop_class,
                sop_uid=deid.sop_uid,
                transfer_syntax=deid.transfer_syntax,
                patient_pseudonym=deid.patient_pseudonym,
                destinations=tuple(route.destinations),
                held=held,
            )
        )
        result.events.append(
            {
                "event": "instance_deidentified",
                "route": route.name,
                "profile": route.profile,
                "options": sorted(o.value for o in deid.options),
                "patient": deid.patient_pseudonym,
                "patient_hash": deid.patient_hash,
                "new_sop_uid": deid.sop_uid,
                "new_study_uid": deid.study_uid,
                "sop_class": deid.sop_class,
                "changes": deid.changes,
                "pixels": pixels,
                "key": self.rt.key.fingerprint(),
                "versions": VERSIONS,
                "destinations": list(route.destinations),
            }
        )

    def _pixels(
        self, ds: Dataset, profile: ProfileSettings
    ) -> tuple[Dataset, frozenset[Option], dict[str, Any]]:
        """Run the pixel stage for a photo profile; say plainly in the audit when it did not run."""
        skipped = self._pixels_skipped(profile)
        if skipped is not None:
            return ds, frozenset(), skipped
        assert profile.pixels is not None and self.rt.pixel_stage is not None
        with self.rt.metrics.stage("face"):
            outcome = self.rt.pixel_stage(ds, profile.pixels, self.rt.key, self.rt.store)
        report = {"applied": True, "settings": profile.pixels.model_dump(mode="json"), **outcome.report}
        return outcome.dataset, outcome.cleaned, report

    def _pixels_skipped(self, profile: ProfileSettings) -> dict[str, Any] | None:
        """Why the pixel stage does not run for ``profile`` (the audit's words), or None if it does;
        ``Refused`` where it must run and cannot."""
        if profile.pixels is None:
            return {"applied": False, "reason": "profile has no pixel settings"}
        if self.rt.pixel_stage is None:
            # Fail closed: a photo profile's faces (or an intraoral photo's check) cannot be done,
            # so the photo is held rather than forwarded with its headers alone.
            raise Refused(
                "method-unavailable",
                "this service runs without the face pipeline, so the route's photo profile cannot "
                "treat the pixels; start it with `dicom-anon serve`, which installs the pipeline",
            )
        return None

    def _quarantine(
        self, job: Job, result: _Result, stage: str, code: str, reason: str, route: str | None
    ) -> None:
        """Keep a copy of the original with a reason file; the row is written with the job's outcome."""
        layout = self.rt.layout
        spool = layout.abs(job.spool_path) if job.spool_path is not None else None
        original = spool if spool is not None and spool.exists() else None
        result.quarantines.append(self._hold(job.id, original, stage, code, reason, route, None))

    def _hold(
        self,
        job_id: int,
        content: Path | bytes | None,
        stage: str,
        code: str,
        reason: str,
        route: str | None,
        destination: str | None,
    ) -> NewQuarantine:
        """A quarantine folder holding ``content`` (a file linked in, or bytes written) and a reason
        file; its row is written with the job's outcome."""
        layout = self.rt.layout
        folder = layout.quarantine / uuid.uuid4().hex
        folder.mkdir(mode=0o700, parents=True)
        if isinstance(content, Path):
            link_or_copy(content, folder / "instance.dcm")
        elif content is not None:
            write_durable(folder / "instance.dcm", content)
        note = {
            "job": job_id,
            "route": route,
            "destination": destination,
            "stage": stage,
            "code": code,
            "reason": reason,
        }
        replace_durable(folder / "reason.json", json.dumps(note, indent=1).encode())
        return NewQuarantine(stage, code, reason, layout.rel(folder), route, destination)
