"""The service's audit trail in a real audit repository: dcmtk storescu -> dicom-anon -> dcmtk
storescp, with rsyslogd on loopback as the repository (TLS both ways, a throwaway CA).

Every trail event that has a DICOM audit message arrives, in trail order, valid against the
PS3.15 A.5.1 schema and without an original identifier; while the repository is stopped nothing
is lost, and once it is back the backlog arrives in order.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from atna_schema import invalid, split_syslog
from lxml import etree
from peers import (
    EXAMPLE_CONFIG,
    TINY_PHI,
    audit_records,
    dcmtk,
    events,
    free_port,
    start_service,
    start_storescp,
    storescu,
    wait_until,
    write_photos,
)
from syslog_receiver import Receiver, rsyslog_missing, throwaway_pki

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        dcmtk("storescu") is None or dcmtk("storescp") is None, reason="dcmtk is not installed"
    ),
    pytest.mark.skipif(rsyslog_missing() is not None, reason=str(rsyslog_missing())),
]

# The DICOM audit messages (EventIDs) each trail event of this run must give, in this order.
MESSAGES = {
    "service_started": ["110100"],
    "service_stopped": ["110100"],
    "config_loaded": [],
    "association_accepted": ["110102"],
    "association_rejected": ["110113"],
    "instance_received": ["110104"],
    "instance_routed": [],
    "instance_deidentified": ["110103"],
    "instance_forwarded": ["110104", "110106"],  # teaching is outside: also an Export
    "audit_read": ["110112", "110101"],
    "audit_verified": ["110101"],
}


def expected(data_dir: Path) -> list[tuple[str, str]]:
    """(EventDateTime, EventID) of every message the trail calls for, in trail order."""
    wanted = []
    for record in audit_records(data_dir):
        assert record["event"] in MESSAGES, f"a trail event this test does not expect: {record['event']}"
        wanted += [(record["ts"], event_id) for event_id in MESSAGES[record["event"]]]
    return wanted


def received(receiver: Receiver) -> list[tuple[str, str]]:
    """(EventDateTime, EventID) of each message received once, in arrival order: a message sent
    again after a dropped connection (at least once, never lost) counts where it first arrived."""
    seen: set[bytes] = set()
    got = []
    for line in receiver.lines():
        if line in seen:
            continue
        seen.add(line)
        _, xml = split_syslog(line)
        ident = etree.fromstring(xml).find("EventIdentification")
        got.append((ident.get("EventDateTime"), ident.find("EventID").get("csd-code")))
    return got


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    binary = str(Path(sys.executable).parent / "dicom-anon")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60, check=False)


def originals(files: list[Path]) -> list[str]:
    """What the clinic sent that must never reach the repository."""
    found = set(TINY_PHI)
    for path in files:
        ds = pydicom.dcmread(path)
        found |= {
            str(ds.SOPInstanceUID),
            str(ds.StudyInstanceUID),
            str(ds.SeriesInstanceUID),
            str(ds.PatientID),
        }
    return sorted(found)


def test_the_repository_gets_every_message_valid_in_order_and_none_lost_while_it_is_down(tmp_path):
    pki = throwaway_pki(tmp_path / "pki")
    receiver = Receiver(tmp_path / "arr", pki)
    arch_port, port = free_port(), free_port()
    archive = tmp_path / "archive"
    config = tmp_path / "atna.yaml"
    config.write_text(
        EXAMPLE_CONFIG.read_text().replace(
            "  fsync: true ",
            f"  atna: {{host: 127.0.0.1, port: {receiver.port}, ca: {pki}/ca.pem, cert: {pki}/client.pem, "
            f"key: {pki}/client.key, export_destinations: [teaching], retry_max_s: 1}}\n  fsync: true ",
        )
    )
    data_dir = tmp_path / "data"
    args = ["--config", str(config), "--data-dir", str(data_dir)]
    storescp = start_storescp(tmp_path, arch_port, archive)
    service = start_service(tmp_path, port, [f"teaching=TEACHING@127.0.0.1:{arch_port}"], config=config)
    try:
        receiver.start()
        storescp.wait_ready()
        service.wait_ready()
        first = write_photos(tmp_path / "in", 3)
        assert storescu(port, first).returncode == 0
        assert storescu(port, first[:1], aet="INTRUDER").returncode != 0
        wait_until(lambda: len(events(data_dir, "instance_forwarded")) == 3, 60, "three forwards")
        assert cli("audit", "query", *args).returncode == 0  # another process writes to the trail
        wait_until(lambda: received(receiver) == expected(data_dir), 30, "every message of the first part")

        # The repository goes away; the service goes on; more photos and a verify meanwhile.
        receiver.stop()
        second = write_photos(tmp_path / "in2", 3, patient_id="MRN00777001")
        assert storescu(port, second).returncode == 0
        wait_until(lambda: len(events(data_dir, "instance_forwarded")) == 6, 60, "three more forwards")
        assert cli("audit", "verify", *args).returncode == 0
        wait_until(
            lambda: "last error" in cli("audit", "atna", "status", *args).stderr, 20, "the outage shown"
        )
        time.sleep(1)
        receiver.start()
        wait_until(lambda: received(receiver) == expected(data_dir), 60, "the backlog, in order")
        status = cli("audit", "atna", "status", *args)
        wait_until(
            lambda: "backlog      0 messages" in cli("audit", "atna", "status", *args).stdout,
            20,
            "no backlog",
        )
        assert status.returncode in (0, 1), status.stderr
    finally:
        service.stop()
        storescp.stop()
    # The service's stop is relayed before it exits.
    try:
        wait_until(lambda: received(receiver) == expected(data_dir), 20, "the stop message")
    finally:
        receiver.stop()
    assert received(receiver)[-1][1] == "110100"

    phi = originals([*first, *second])
    lines = receiver.lines()
    assert len({*lines}) == len(expected(data_dir))
    for line in lines:
        fields, xml = split_syslog(line)
        assert fields[0] == "<85>1" and fields[3] == "dicom-anon" and fields[5] == "IHE+RFC-3881"
        assert invalid(xml) is None, xml
        for value in phi:
            assert value.encode() not in line, f"original identifier {value!r} sent to the repository"
    # The forwarded copies are named by their new UIDs, as the archive has them.
    new_studies = {str(pydicom.dcmread(p).StudyInstanceUID) for p in archive.glob("*.dcm")}
    assert len(new_studies) == 6
    assert all(any(uid.encode() in line for line in lines) for uid in new_studies)
