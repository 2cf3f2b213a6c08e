"""Searching and exporting the trail (API and ``dicom-anon audit ...``); reading it is audited too."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dicom_anon.audit.query import Filters, parse_time, query, to_csv, to_json
from dicom_anon.audit.trail import AuditTrail, read_records
from dicom_anon.cli import app
from dicom_anon.headers.pseudonyms import SiteKey

runner = CliRunner()
SOP_A = "1.2.826.0.1.3680043.8.498.1"
SOP_B = "1.2.826.0.1.3680043.8.498.2"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data dir with a site key and a small trail: two instances, one forwarded, one quarantined."""
    key = SiteKey.load_or_create(tmp_path / "site.key")
    audit = AuditTrail(tmp_path / "audit" / "audit.jsonl")
    audit.record("instance_received", job=1, sop_uid_hash=key.keyed_hash(SOP_A), calling_ae="CLINIC")
    audit.record("instance_received", job=2, sop_uid_hash=key.keyed_hash(SOP_B), calling_ae="CLINIC")
    audit.record("instance_deidentified", job=1, route="photos", patient="ANONAAAA", new_sop_uid="2.25.1")
    audit.record(
        "instance_forwarded",
        job=1,
        route="photos",
        destination="teaching",
        status="0x0000",
        patient="ANONAAAA",
        new_sop_uid="2.25.1",
    )
    audit.record(
        "instance_quarantined", job=2, route="photos", code="burned-in-annotation", reason="burned in"
    )
    audit.close()
    return tmp_path


def trail(data_dir: Path) -> list[dict]:
    return read_records(data_dir / "audit" / "audit.jsonl")


def test_filters_by_event_route_destination_status_patient(data_dir):
    records = trail(data_dir)
    assert [r["seq"] for r in query(records, Filters(events=frozenset({"instance_forwarded"})))] == [4]
    assert [r["seq"] for r in query(records, Filters(route="photos"))] == [3, 4, 5]
    assert [r["seq"] for r in query(records, Filters(destination="teaching"))] == [4]
    assert [r["seq"] for r in query(records, Filters(status="burned-in-annotation"))] == [5]
    assert [r["seq"] for r in query(records, Filters(patient="ANONAAAA"))] == [3, 4]


def test_time_range(data_dir):
    records = trail(data_dir)
    assert query(records, Filters(since=parse_time("2000-01-01"))) == records
    assert query(records, Filters(until=parse_time("2000-01-01"))) == []
    with pytest.raises(ValueError, match="not a date"):
        parse_time("yesterday")


def test_original_sop_uid_finds_every_event_of_its_job(data_dir):
    key = SiteKey.load_or_create(data_dir / "site.key")
    found = query(trail(data_dir), Filters(sop_uid=SOP_A), key)
    assert [r["event"] for r in found] == ["instance_received", "instance_deidentified", "instance_forwarded"]
    with pytest.raises(ValueError, match="site secret"):
        query(trail(data_dir), Filters(sop_uid=SOP_A))


def test_no_raw_uid_in_the_trail(data_dir):
    text = (data_dir / "audit" / "audit.jsonl").read_text()
    assert SOP_A not in text and SOP_B not in text


def test_csv_and_json_exports(data_dir):
    records = trail(data_dir)
    rows = list(csv.DictReader(io.StringIO(to_csv(records))))
    assert len(rows) == 5 and rows[3]["destination"] == "teaching" and rows[3]["status"] == "0x0000"
    assert json.loads(rows[0]["details"]) == {}
    assert [r["seq"] for r in json.loads(to_json(records))] == [1, 2, 3, 4, 5]


def test_cli_verify_ok_then_broken(data_dir):
    result = runner.invoke(app, ["audit", "verify", "--data-dir", str(data_dir)])
    assert result.exit_code == 0 and "chain intact" in result.output
    path = data_dir / "audit" / "audit.jsonl"
    text = path.read_text().replace('"code":"burned-in-annotation"', '"code":"ok"')
    path.write_text(text)
    result = runner.invoke(app, ["audit", "verify", "--data-dir", str(data_dir)], terminal_width=200)
    assert result.exit_code == 1
    assert "line 5" in result.output and "edited" in result.output


def test_cli_query_and_export_are_audited(data_dir, tmp_path):
    result = runner.invoke(
        app, ["audit", "query", "--data-dir", str(data_dir), "--sop-uid", SOP_A], terminal_width=200
    )
    assert result.exit_code == 0, result.output
    assert "3 records" in result.output and "instance_forwarded" in result.output
    out = tmp_path / "export.csv"
    result = runner.invoke(
        app,
        [
            "audit",
            "export",
            "--data-dir",
            str(data_dir),
            "--format",
            "csv",
            "-o",
            str(out),
            "--event",
            "instance_forwarded",
        ],
    )
    assert result.exit_code == 0, result.output
    assert len(list(csv.DictReader(out.open()))) == 1
    read, exported = trail(data_dir)[-2:]
    assert read["event"] == "audit_read" and read["records"] == 3 and read["by_sop_uid"] is True
    assert SOP_A not in json.dumps(read)
    assert exported["event"] == "audit_exported" and exported["format"] == "csv" and exported["records"] == 1
    assert runner.invoke(app, ["audit", "verify", "--data-dir", str(data_dir)]).exit_code == 0


def test_cli_json_export_to_stdout(data_dir):
    result = runner.invoke(
        app, ["audit", "export", "--data-dir", str(data_dir), "--format", "json", "--destination", "teaching"]
    )
    assert result.exit_code == 0
    assert [r["event"] for r in json.loads(result.stdout)] == ["instance_forwarded"]


def test_cli_missing_trail_is_one_line(tmp_path):
    result = runner.invoke(app, ["audit", "verify", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "no audit trail" in result.output and "Traceback" not in result.output
