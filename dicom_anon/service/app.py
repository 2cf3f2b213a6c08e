"""The running service: ingress, workers and senders around one state store and one audit trail.

``Service.start`` recovers from whatever a crash left (jobs mid-processing go back to
the queue, half-written files are swept), then starts the senders, the workers and,
last, the SCP, so nothing is accepted before it can be processed. SIGHUP reloads the
settings file: routes, profiles, destinations, allow-lists and limits change at once;
a file with errors leaves everything as it was and says why (log and audit).

A node's role (``node.role``) says which of these it runs: ``ingress`` only the SCP (received
instances wait in the shared spool and store for a worker), ``worker`` only the workers and
senders, ``all`` everything, as one machine does.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import socket
import sqlite3
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import structlog

from .. import __version__
from ..audit.atna_relay import Relay
from ..audit.trail import AuditTrail
from ..config import ConfigError, LoggingSettings, Settings, apply_overrides, load_settings
from ..headers.errors import SiteKeyError
from ..headers.pseudonyms import SiteKey
from ..rules import Rules
from .deid_pool import DeidPool
from .egress import Sender, remove_output
from .failures import describe_environment, record_or_log
from .files import FileSystemFlush, Layout, write_durable
from .ingress import Ingress
from .metrics import Metrics
from .store import StateStore, open_store
from .worker import PixelStage, Runtime, Worker

log = structlog.get_logger("dicom_anon.service")

# Beside a shared spool: the fingerprint of the site key every node sharing it must use.
KEY_MARKER = "site-key.fingerprint"

# Settings that only take effect when the service starts; a reload that changes them says so.
_RESTART_ONLY = ("data_dir", "secret_file", "workers", "audit", "node", "metrics")
_RESTART_ONLY_INGRESS = ("listen", "tls", "max_pdu_bytes", "timeouts")


def configure_logging(settings: LoggingSettings) -> None:
    """Operational logs on stderr. Tracebacks are printed without local variables: locals hold PHI."""
    level = getattr(logging, settings.level.upper())
    renderer: Any
    if settings.format == "json":
        renderer = structlog.processors.JSONRenderer()
        exc = structlog.processors.format_exc_info
    else:
        renderer = structlog.dev.ConsoleRenderer(
            exception_formatter=structlog.dev.plain_traceback, colors=False
        )
        exc = None
    processors: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if exc is not None:
        processors.append(exc)
    processors.append(renderer)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    # pydicom's warnings quote the offending value ("Invalid value for VR PN: 'Doe^Jane'"): PHI.
    warnings.filterwarnings("ignore", module=r"pydicom(\..*)?$")
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    # pynetdicom logs through the standard library; at INFO and below it describes datasets.
    pynetdicom_log = logging.getLogger("pynetdicom")
    pynetdicom_log.setLevel(max(level, logging.WARNING))
    if not pynetdicom_log.handlers:
        pynetdicom_log.addHandler(logging.StreamHandler(sys.stderr))


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) we are ready or stopping. Hand-written to avoid a dependency
    on python-systemd for one datagram; a no-op outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(message.encode(), address)
        except OSError as exc:
            log.warning("systemd notification failed", error=exc.strerror)


def file_sha256(path: Path | None) -> str | None:
    if path is None:
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Service:
    """One node: ingress, ``settings.workers`` pipeline threads, one sender per destination."""

    def __init__(
        self,
        settings: Settings,
        config_path: Path | None = None,
        overrides: dict[str, Any] | None = None,
        pixel_stage: PixelStage | None = None,
    ) -> None:
        self.settings = settings
        self.config_path = config_path
        self.overrides = overrides or {}
        self.pixel_stage = pixel_stage
        self.layout = Layout.for_settings(settings)
        self.store: StateStore | None = None
        self.flush: FileSystemFlush | None = None
        self.audit: AuditTrail | None = None
        self.metrics: Metrics | None = None
        self.atna: Relay | None = None
        self.runtime: Runtime | None = None
        self.ingress: Ingress | None = None
        self.workers: list[Worker] = []
        self.senders: dict[str, Sender] = {}
        self._work = threading.Event()
        self._lock = threading.Lock()

    # --- start and stop ------------------------------------------------------------------

    def start(self) -> None:
        s = self.settings
        role = s.node.role
        self.layout.create()
        key = SiteKey.load_or_create(s.secret_path)
        if self.layout.shared:
            same_key_as_other_nodes(self.layout.root, key)
        store, recovered = self._open_store()
        self.store = store
        self.metrics = metrics = Metrics(s.node.id)
        metrics.watch_queue(store)
        if s.metrics is not None:
            metrics.serve(s.metrics.listen)
        self.audit = audit = AuditTrail(
            s.audit_path,
            fsync=s.audit.fsync,
            head_every_s=1.0,
            rotate_bytes=(s.audit.rotate_mb or 0) * 2**20,
            rotate_s=(s.audit.rotate_hours or 0) * 3600,
            keep_s=(s.audit.keep_days or 0) * 86400,
            node=s.node.id,
            on_record=metrics.observe,
        )
        # Every file system the service writes on: the data dir, a shared spool, a shared audit folder.
        self.flush = flush = FileSystemFlush(s.data_dir, self.layout.root, s.audit_path.parent)
        if s.audit.atna is not None:
            # Before service_started is written: a first start relays from that record on.
            self.atna = Relay(s)
            self.atna.start()
        swept = self._sweep() + self.purge_outbox()
        self.keep_reserve()
        self.runtime = runtime = Runtime(
            rules=Rules(s),
            store=store,
            layout=self.layout,
            audit=audit,
            key=key,
            notify_destination=self._notify,
            flush=flush,
            on_job_done=self._job_done,
            metrics=metrics,
            pixel_stage=self.pixel_stage,
            # One process per pipeline thread: a thread hands over one instance at a time.
            deid_pool=DeidPool(s.secret_path, s.workers) if role != "ingress" else None,
        )
        record_or_log(
            audit,
            "service_started",
            version=__version__,
            pid=os.getpid(),
            config=str(self.config_path),
            config_sha256=file_sha256(self.config_path),
            key=key.fingerprint(),
            role=role,
            listen=s.ingress.listen if role != "worker" else None,
            ae_title=s.ingress.ae_title,
            recovered_jobs=recovered,
            swept_files=swept,
        )
        record_or_log(
            audit,
            "config_loaded",
            config=str(self.config_path),
            config_sha256=file_sha256(self.config_path),
            routes=[r.name for r in s.routes],
            destinations={name: d.describe() for name, d in s.destinations.items()},
            overrides={k: v for k, v in self.overrides.items() if v},
        )
        if role != "ingress":
            self._start_processing(runtime)
        if role != "worker":
            self.ingress = Ingress(s, store, self.layout, audit, key, self._work.set, flush)
            self.ingress.start()
        sd_notify("READY=1")
        log.info(
            "service started",
            version=__version__,
            role=role,
            listen=s.ingress.listen if self.ingress is not None else None,
            recovered_jobs=recovered,
        )

    def _start_processing(self, runtime: Runtime) -> None:
        """The senders, then the pipeline threads (a worker's or an all-in-one node's part)."""
        assert self.store is not None and runtime.deid_pool is not None
        for name in self.settings.destinations:
            self._start_sender(name)
        for name in sorted(self.store.pending_destinations() - set(self.settings.destinations)):
            log.warning("deliveries wait for a destination that is not configured", destination=name)
        runtime.deid_pool.start()
        for i in range(self.settings.workers):
            worker = Worker(i, runtime, self._work)
            worker.start()
            self.workers.append(worker)

    def _open_store(self) -> tuple[StateStore, int]:
        """The state store with the jobs a crash left mid-processing put back in line (their
        number is the second value), on a full disk too: SQLite needs room for its write-ahead
        log and shared-memory index even to read, so give up the reserve and try once more."""
        try:
            return self._recovered_store()
        except sqlite3.OperationalError as exc:
            if not self.layout.release_reserve():
                raise
            log.error(
                "the state store could not be opened; gave up the reserve to start (is the disk full?)",
                error=describe_environment(exc),
            )
            return self._recovered_store()

    def _recovered_store(self) -> tuple[StateStore, int]:
        store = open_store(self.settings)
        try:
            return store, store.recover()
        except BaseException:
            store.close()
            raise

    def keep_reserve(self) -> None:
        """Put the reserve back once the disk can spare it (after a start that gave it up)."""
        if not self.layout.keep_reserve(self.settings.spool.reserve_mb * 2**20):
            log.warning("no room for the disk reserve yet", reserve_mb=self.settings.spool.reserve_mb)

    def stop(self) -> None:
        sd_notify("STOPPING=1")
        if self.ingress is not None:
            self.ingress.stop()
        for worker in self.workers:
            worker.stop()
        for sender in self.senders.values():
            sender.stop()
        for thread in [*self.workers, *self.senders.values()]:
            thread.join(timeout=30)
        if self.runtime is not None and self.runtime.deid_pool is not None:
            self.runtime.deid_pool.close()
        if self.audit is not None:
            record_or_log(self.audit, "service_stopped", pid=os.getpid())
            self.audit.close()
        if self.atna is not None:
            self.atna.stop()
        if self.metrics is not None:
            self.metrics.close()
        if self.store is not None:
            self.store.close()
        if self.flush is not None:
            self.flush.close()
        log.info("service stopped")

    def _start_sender(self, name: str) -> None:
        assert self.store is not None and self.audit is not None
        s = self.settings
        sender = Sender(
            name,
            s.destinations[name],
            s.ingress.ae_title,
            s.egress,
            self.store,
            self.layout,
            self.audit,
            self._job_done,
            self.flush,
        )
        sender.start()
        self.senders[name] = sender

    def _notify(self, destination: str) -> None:
        sender = self.senders.get(destination)
        if sender is not None:
            sender.wake.set()

    def _job_done(self, job_id: int, spool_path: str) -> None:
        """Spool retention: with keep_days 0 the original goes as soon as nothing needs it. The file
        goes before the row forgets it, so a kill in between leaves a row that ``purge_spool``
        finishes, never a file that no row names (on a shared spool no node would sweep it)."""
        assert self.store is not None
        if self.settings.spool.keep_days == 0:
            self.layout.remove(spool_path)
            self.store.forget_spool(job_id)

    def _sweep(self) -> int:
        """Files a crash left behind: received but never recorded (not acknowledged either),
        outbox files and quarantine folders of a job that will be processed again, and the
        folders of quarantine items released or deleted just before the crash."""
        assert self.store is not None
        known = self.store.spool_paths()
        outputs = self.store.output_paths()
        removed = 0
        for folder, keep in ((self.layout.spool, known), (self.layout.outbox, outputs)):
            for path in folder.rglob("*"):
                if path.is_file() and self.layout.rel(path) not in keep:
                    path.unlink(missing_ok=True)
                    removed += 1
        self._drop_unacknowledged()
        held = self.store.quarantine_paths()
        for item in self.layout.quarantine.iterdir():
            if item.is_dir() and self.layout.rel(item) not in held:
                shutil.rmtree(item, ignore_errors=True)
                removed += 1
        return removed

    def _drop_unacknowledged(self) -> None:
        """Jobs whose spool file is missing or short: ingress acknowledges only after one flush made
        the file, the job and the receipt durable together, so such a job was cut off by a power
        cut before its acknowledgement. Dropped (and audited), so that the sender's re-send is a
        new job and not a duplicate of nothing."""
        assert self.store is not None and self.audit is not None
        lost = []
        for job_id, rel, size in self.store.received_spools():
            path = self.layout.abs(rel)
            if not path.is_file() or path.stat().st_size != size:
                lost.append(job_id)
                path.unlink(missing_ok=True)
        if lost:
            self.store.drop_jobs(lost)
            for job_id in lost:
                record_or_log(self.audit, "instance_unacknowledged", job=job_id, reason="spool file lost")
            log.warning("jobs lost with their spool files before acknowledgement dropped", jobs=lost)

    def purge_spool(self) -> int:
        """Originals kept under spool.keep_days whose time is up; with keep_days 0, those of done
        jobs whose removal a kill cut short (the job was finished, the file not yet gone)."""
        assert self.store is not None
        expired = self.store.expired_spool(time.time() - self.settings.spool.keep_days * 86400)
        for job_id, path in expired:
            self.layout.remove(path)
            self.store.forget_spool(job_id)
        return len(expired)

    def purge_outbox(self) -> int:
        """Outbox files of finished outputs whose removal a kill cut short (the delivery was
        recorded, the file not yet gone), in any node's folder. At start only: such a file comes
        from a kill, and the killed node starts again (the query reads every output's row)."""
        assert self.store is not None
        finished = self.store.finished_outputs()
        for path in finished:
            remove_output(self.layout, self.store, path)
        return len(finished)

    def dead_threads(self) -> list[str]:
        return [t.name for t in [*self.workers, *self.senders.values()] if not t.is_alive()]

    # --- reload --------------------------------------------------------------------------

    def reload(self) -> bool:
        """Re-read the settings file (with the same command-line overrides). False: kept the old."""
        assert self.audit is not None and self.runtime is not None
        with self._lock:
            try:
                if self.config_path is None:
                    raise ConfigError("no settings file was given at start; nothing to reload")
                new = apply_overrides(load_settings(self.config_path), **self.overrides)
            except ConfigError as exc:
                self.audit.record("config_reload_failed", config=str(self.config_path), error=str(exc)[:2000])
                log.error("reload failed; keeping the rules in force", error=str(exc))
                return False
            old = self.settings
            needs_restart = [f for f in _RESTART_ONLY if getattr(old, f) != getattr(new, f)]
            needs_restart += [
                f"ingress.{f}"
                for f in _RESTART_ONLY_INGRESS
                if getattr(old.ingress, f) != getattr(new.ingress, f)
            ]
            if old.spool.shared_dir != new.spool.shared_dir:
                needs_restart.append("spool.shared_dir")
            if needs_restart:
                log.warning("these settings change only at restart", settings=needs_restart)
            self.settings = new
            self.runtime.rules = Rules(new)
            if self.ingress is not None:
                self.ingress.settings = new
            for name, sender in list(self.senders.items()):
                if (
                    name not in new.destinations
                    or new.destinations[name] != old.destinations.get(name)
                    or new.egress != old.egress
                ):
                    sender.stop()
                    sender.join(timeout=30)
                    del self.senders[name]
            for name in new.destinations:
                if name not in self.senders and self.workers:  # an ingress node sends nothing
                    self._start_sender(name)
            self.audit.record(
                "config_reloaded",
                config=str(self.config_path),
                config_sha256=file_sha256(self.config_path),
                routes=[r.name for r in new.routes],
                destinations=sorted(new.destinations),
                restart_needed_for=needs_restart,
            )
            log.info("settings reloaded", routes=len(new.routes), destinations=len(new.destinations))
            return True


def same_key_as_other_nodes(shared_dir: Path, key: SiteKey) -> None:
    """Refuse to start with a site key other than the one the nodes sharing this spool use: its
    pseudonyms and UIDs would differ from theirs, and the same instance received by two nodes
    would not be recognised as one. The first node to start writes the key's fingerprint (which
    does not reveal it) beside the spool; the others compare."""
    marker = shared_dir / KEY_MARKER
    try:
        write_durable(marker, key.fingerprint().encode())
    except FileExistsError:
        theirs = marker.read_text().strip()
        if theirs != key.fingerprint():
            raise SiteKeyError(
                f"this node's site key (fingerprint {key.fingerprint()}) is not the one the other nodes use"
                f" ({theirs}, in {marker}): give every node a copy of the same secret_file"
                " (after rotating the key on every node, remove that file)"
            ) from None


def run(service: Service) -> int:
    """Run until SIGTERM or SIGINT; SIGHUP reloads. Returns the exit status for the process."""
    wake = threading.Event()
    stop = threading.Event()
    reload_requested = threading.Event()

    def _stop(signum: int, _frame: Any) -> None:
        log.info("stopping", signal=signal.Signals(signum).name)
        stop.set()
        wake.set()

    def _hup(_signum: int, _frame: Any) -> None:
        reload_requested.set()
        wake.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGHUP, _hup)
    service.start()
    status = 0
    last_purge = 0.0
    try:
        while not stop.is_set():
            wake.wait(1.0)
            wake.clear()
            if reload_requested.is_set():
                reload_requested.clear()
                service.reload()
            dead = service.dead_threads()
            if dead and not stop.is_set():
                log.error("threads stopped unexpectedly; exiting for a restart", threads=dead)
                status = 1
                break
            if time.monotonic() - last_purge > 60:
                last_purge = time.monotonic()
                try:
                    service.purge_spool()
                    service.keep_reserve()
                except Exception as exc:  # a full disk, a busy store: the next round tries again
                    log.error("housekeeping failed; will try again", error=describe_environment(exc))
    finally:
        service.stop()
    return status
