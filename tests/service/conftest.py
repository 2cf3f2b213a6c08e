"""Fixtures for the service tests: an in-process service on a free loopback port, and test archives.

The in-process service is the real thing (Service.start: SCP, workers, senders, SQLite,
audit); only the process boundary is missing, which the integration tests add.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from peers import free_port, wait_until
from pgserver import PostgresServer
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit
from pynetdicom import AE, AllStoragePresentationContexts, evt

from dicom_anon.config import Settings
from dicom_anon.service.app import Service

ALLOW_CLINIC = [{"ae_title": "CLINIC", "addresses": ["127.0.0.1"]}]


def settings_for(tmp_path: Path, port: int, **sections: Any) -> Settings:
    """Settings like the example's: CLINIC may send, photos de-identified to 'teaching' (by their headers:
    this in-process service runs without the face pipeline, which holds photo profiles' photos)."""
    raw: dict[str, Any] = {
        "data_dir": str(tmp_path / "data"),
        "ingress": {"listen": f"127.0.0.1:{port}", "allowed_callers": ALLOW_CLINIC},
        "destinations": {"teaching": {"folder": str(tmp_path / "archive")}},
        "routes": [{"name": "photos", "profile": "basic", "destinations": ["teaching"]}],
        "egress": {"retry": {"first_delay_s": 0.2, "max_delay_s": 1.0}, "idle_release_s": 0.5},
        "audit": {"fsync": False},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return Settings.model_validate(raw)


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[Callable[..., Service]]:
    started: list[Service] = []

    def start(**sections: Any) -> Service:
        port = free_port()
        service = Service(settings_for(tmp_path, port, **sections))
        service.start()
        started.append(service)
        service.port = port  # type: ignore[attr-defined]
        return service

    yield start
    for service in started:
        service.stop()


class ScpArchive:
    """A pynetdicom Storage SCP standing in for a teaching archive that answers what a test needs."""

    def __init__(
        self,
        status: int = 0x0000,
        syntaxes: tuple[str, ...] | None = None,
        aet: str = "TEACHING",
        port: int | None = None,
    ) -> None:
        self.status = status
        self.received: list[Dataset] = []
        self.syntaxes: list[str] = []
        self.port = port or free_port()
        self.ae = AE(ae_title=aet)
        ts = list(syntaxes or (JPEGBaseline8Bit, ExplicitVRLittleEndian, ImplicitVRLittleEndian))
        for cx in AllStoragePresentationContexts:
            self.ae.add_supported_context(cx.abstract_syntax, ts)
        self._lock = threading.Lock()
        self.server = self.ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )

    def _store(self, event: evt.Event) -> int:
        with self._lock:
            self.received.append(event.dataset)
            self.syntaxes.append(str(event.context.transfer_syntax))
        return self.status

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Dataset]:
        wait_until(lambda: len(self.received) >= count, timeout, f"{count} instances at the test archive")
        time.sleep(0.1)
        return list(self.received)

    def stop(self) -> None:
        self.ae.shutdown()


@pytest.fixture
def archive() -> Iterator[Callable[..., ScpArchive]]:
    made: list[ScpArchive] = []

    def make(**kwargs: Any) -> ScpArchive:
        a = ScpArchive(**kwargs)
        made.append(a)
        return a

    yield make
    for a in made:
        a.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A private PostgreSQL server for the session (skips where PostgreSQL or psycopg is absent)."""
    pytest.importorskip("psycopg")
    server = PostgresServer()
    yield server
    server.stop()
