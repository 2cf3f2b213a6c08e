"""The console's Audit page over several nodes' trails (audit.shared_dir): it reads them through the
same functions as ``audit query|export|verify``, shows the node column, and names a broken node."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from starlette.testclient import TestClient
from webkit import SETTINGS, make_console, sign_in, signed_in

from dicom_anon.audit.trail import AuditTrail
from dicom_anon.web.app import create_app


def two_nodes(tmp_path: Path):
    folder = tmp_path / "audit"
    a = AuditTrail(folder / "a" / "audit.jsonl", node="a")
    b = AuditTrail(folder / "b" / "audit.jsonl", node="b")
    for job in range(3):
        a.record("instance_received", job=job, calling_ae="CLINIC")
        b.record("instance_forwarded", job=job, destination="teaching", status="0x0000")
    a.close()
    b.close()
    console = make_console(tmp_path, {**SETTINGS, "node": {"id": "a"}, "audit": {"shared_dir": str(folder)}})
    return console, folder


def test_audit_page_shows_every_node_and_exports_both(tmp_path):
    console, _ = two_nodes(tmp_path)
    client, _ = signed_in(console, "rita")
    page = client.get("/audit", params={"run": "1"})
    assert page.status_code == 200
    assert "<th>node</th>" in page.text
    assert "<td>a</td>" in page.text and "<td>b</td>" in page.text
    assert 'id="chain">Hash chain verified' in page.text
    export = client.get("/audit/export.csv")
    rows = list(csv.DictReader(io.StringIO(export.text)))
    assert [(r["node"], r["event"]) for r in rows[:6]] == [
        ("a", "instance_received"),
        ("b", "instance_forwarded"),
    ] * 3


def test_audit_page_names_the_broken_node(tmp_path):
    console, folder = two_nodes(tmp_path)
    path = folder / "b" / "audit.jsonl"
    path.write_text(path.read_text().replace('"job":1', '"job":7'))
    client, _ = signed_in(console, "rita")
    page = client.get("/audit")
    assert "HASH CHAIN BROKEN at node b line 2" in page.text


def test_a_page_that_needs_an_unreachable_state_store_says_so_in_one_line(tmp_path):
    """A shared PostgreSQL store that is down: the Status page answers 503 with one line that
    names the store and keeps the password out, not a bare "Internal Server Error"."""
    dsn = "host=127.0.0.1 port=1 dbname=anon user=anon password=s3cret connect_timeout=2"
    console = make_console(tmp_path, {**SETTINGS, "state": {"backend": "postgresql", "dsn": dsn}})
    client = TestClient(create_app(console))
    assert sign_in(client, "oscar").status_code == 303
    page = client.get("/")
    assert page.status_code == 503
    assert "state store cannot be used now" in page.text and "PostgreSQL" in page.text
    assert "s3cret" not in page.text
