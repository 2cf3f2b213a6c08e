"""The ATNA relay against a real syslog receiver (rsyslogd over TLS, a throwaway CA): every trail
record's messages arrive in order, none lost while the receiver is down, a full queue waits in the
trail instead of dropping, and ``audit atna status`` shows where things stand."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from atna_schema import invalid, split_syslog
from lxml import etree
from syslog_receiver import Receiver, rsyslog_missing, throwaway_pki

from dicom_anon.audit.atna_relay import Relay, read_status
from dicom_anon.audit.trail import AuditTrail, rotated_files
from dicom_anon.config import Settings

pytestmark = pytest.mark.skipif(rsyslog_missing() is not None, reason=str(rsyslog_missing()))


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    return throwaway_pki(tmp_path / "pki")


@pytest.fixture
def receiver(tmp_path: Path, pki: Path):
    r = Receiver(tmp_path / "receiver", pki)
    yield r
    r.stop()


def settings_for(tmp_path: Path, pki: Path, port: int, **atna: object) -> Settings:
    return Settings.model_validate(
        {
            "data_dir": tmp_path / "data",
            "audit": {
                "atna": {
                    "host": "127.0.0.1",
                    "port": port,
                    "ca": pki / "ca.pem",
                    "cert": pki / "client.pem",
                    "key": pki / "client.key",
                    "retry_max_s": 1,
                    **atna,
                }
            },
        }
    )


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def verified_counts(receiver: Receiver) -> list[int]:
    """The ``records`` of each audit_verified message received, in arrival order (each validated)."""
    counts = []
    for line in receiver.lines():
        fields, xml = split_syslog(line)
        assert fields[0] == "<85>1" and fields[5] == "IHE+RFC-3881", fields
        assert invalid(xml) is None
        msg = etree.fromstring(xml)
        assert msg.find("EventIdentification/EventID").get("csd-code") == "110101"
        counts.append(int(msg.find("ActiveParticipant").get("UserID").removeprefix("op")))
    return counts


def first_of_each(values: list[int]) -> list[int]:
    """Arrival order without the repeats a reconnect may send (at least once, never lost)."""
    seen: set[int] = set()
    return [v for v in values if not (v in seen or seen.add(v))]


def write(trail: AuditTrail, numbers: range, pause_s: float = 0.0) -> None:
    for n in numbers:
        # The operator's name carries the number, so each message says which record it is.
        trail.record("audit_verified", by=f"op{n}", records=n, ok=True)
        time.sleep(pause_s)


def test_messages_arrive_in_order_and_none_is_lost_while_the_receiver_is_down(tmp_path, pki, receiver):
    receiver.start()
    settings = settings_for(tmp_path, pki, receiver.port)
    trail = AuditTrail(settings.audit_path)
    write(trail, range(0, 3))  # before the relay's first start: not relayed (no history at once)
    relay = Relay(settings)
    relay.start()
    try:
        write(trail, range(3, 20))
        wait_until(lambda: len(receiver.lines()) >= 17, 20, "the first 17 messages")
        # The receiver stops while records are being written and sent: some messages are in flight.
        writer = threading.Thread(target=write, args=(trail, range(20, 60), 0.005))
        writer.start()
        time.sleep(0.05)
        receiver.stop()
        writer.join()
        time.sleep(1.5)  # the relay notices, fails, backs off, queues
        wait_until(lambda: read_status(settings).last_error, 10, "the failure recorded")
        assert read_status(settings).backlog > 0
        receiver.start()
        write(trail, range(60, 70))
        wait_until(lambda: set(verified_counts(receiver)) >= set(range(3, 70)), 30, "all 67 messages")
        wait_until(lambda: read_status(settings).backlog == 0, 10, "an empty queue")
    finally:
        relay.stop()
        trail.close()
    received = verified_counts(receiver)
    assert first_of_each(received) == list(range(3, 70))
    status = read_status(settings)
    assert status.sent >= 67 and status.last_error is None and status.full_since is None


def test_a_full_queue_waits_in_the_trail_and_drops_nothing(tmp_path, pki, receiver):
    settings = settings_for(tmp_path, pki, receiver.port, queue_mb=1)
    trail = AuditTrail(settings.audit_path)
    relay = Relay(settings)
    relay.start()
    try:
        write(trail, range(0, 1500))  # about 1.5 MB of messages, the repository down
        wait_until(lambda: read_status(settings).full_since is not None, 20, "the queue full")
        status = read_status(settings)
        assert status.backlog_bytes >= 2**20 and status.trail_bytes_unread > 0
        cli = str(Path(sys.executable).parent / "dicom-anon")
        config = str(write_config(tmp_path, settings))
        shown = subprocess.run(
            [cli, "audit", "atna", "status", "--data-dir", str(settings.data_dir), "--config", config],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert shown.returncode == 1, shown.stdout + shown.stderr
        assert "queue full" in shown.stderr and "backlog" in shown.stdout
        receiver.start()
        wait_until(lambda: len(set(verified_counts(receiver))) == 1500, 60, "all 1500 messages")
    finally:
        relay.stop()
        trail.close()
    assert first_of_each(verified_counts(receiver)) == list(range(1500))
    status = read_status(settings)
    assert status.full_since is None and status.trail_bytes_unread == 0 and status.backlog == 0


def write_config(tmp_path: Path, settings: Settings) -> Path:
    atna = settings.audit.atna
    assert atna is not None
    path = tmp_path / "atna.yaml"
    path.write_text(
        f"audit:\n  atna: {{host: 127.0.0.1, port: {atna.port}, ca: {atna.ca}, cert: {atna.cert}, "
        f"key: {atna.key}, queue_mb: {atna.queue_mb}}}\n"
    )
    return path


def test_a_restarted_relay_reads_on_where_it_stopped(tmp_path, pki, receiver):
    receiver.start()
    settings = settings_for(tmp_path, pki, receiver.port)
    trail = AuditTrail(settings.audit_path)
    relay = Relay(settings)
    relay.start()
    write(trail, range(0, 5))
    wait_until(lambda: len(receiver.lines()) >= 5, 20, "five messages")
    relay.stop()
    write(trail, range(5, 9))  # written while no relay runs (the service is stopped)
    relay = Relay(settings)
    relay.start()
    try:
        wait_until(lambda: set(verified_counts(receiver)) >= set(range(9)), 20, "the four written meanwhile")
    finally:
        relay.stop()
        trail.close()
    assert first_of_each(verified_counts(receiver)) == list(range(9))


def test_the_relay_follows_the_trail_across_rotations(tmp_path, pki, receiver):
    receiver.start()
    settings = settings_for(tmp_path, pki, receiver.port)
    trail = AuditTrail(settings.audit_path, rotate_bytes=20_000)
    relay = Relay(settings, poll_s=0.05)
    relay.start()
    try:
        write(trail, range(300), pause_s=0.002)
        wait_until(lambda: set(verified_counts(receiver)) >= set(range(300)), 30, "all 300 messages")
    finally:
        relay.stop()
        trail.close()
    assert len(rotated_files(settings.audit_path)) >= 3
    assert first_of_each(verified_counts(receiver)) == list(range(300))
