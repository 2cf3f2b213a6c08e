"""Rotation of the audit trail: one chain across files, verified as one, with an edit in an older
file or a removed file found and named; retention removes old files and says so in the chain."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
from pathlib import Path

from dicom_anon.audit.trail import AuditTrail, read_records, rotated_files, trail_files, verify


def fill(path: Path, count: int, **rotation: float) -> list[Path]:
    trail = AuditTrail(path, fsync=False, head_every_s=3600, **rotation)
    for n in range(count):
        trail.record("instance_received", job=n, sop_uid_hash=f"{n:064x}")
    trail.close()
    return trail_files(path)


def test_ten_thousand_records_over_several_files_verify_as_one_chain(tmp_path):
    path = tmp_path / "audit.jsonl"
    files = fill(path, 10_000, rotate_bytes=400_000)
    assert len(files) >= 5 and [f.name for f in files[:2]] == ["audit.jsonl.000001", "audit.jsonl.000002"]
    result = verify(path)
    assert result.ok, [str(p) for p in result.problems[:3]]
    records = read_records(path)
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    assert sum(r["event"] == "instance_received" for r in records) == 10_000
    rotations = [r for r in records if r["event"] == "audit_rotated"]
    assert [r["previous_file"] for r in rotations] == [f.name for f in files[:-1]]
    # Each new file begins with the record that carries the chain on from the one before.
    for older, newer in itertools.pairwise(files):
        last = json.loads(older.read_bytes().splitlines()[-1])
        first = json.loads(newer.read_bytes().splitlines()[0])
        assert first["event"] == "audit_rotated" and first["prev"] == last["hash"]


def test_an_edit_in_an_older_file_is_found_and_named(tmp_path):
    path = tmp_path / "audit.jsonl"
    files = fill(path, 3000, rotate_bytes=200_000)
    older = files[1]
    lines = older.read_bytes().splitlines(keepends=True)
    lines[9] = lines[9].replace(b'"job":', b'"job":1', 1)
    older.write_bytes(b"".join(lines))
    result = verify(path)
    assert not result.ok
    assert str(result.problems[0]) == (
        "audit.jsonl.000002 line 10: the record does not match its own hash: this line was edited"
    )


def test_a_removed_file_is_found_and_named(tmp_path):
    path = tmp_path / "audit.jsonl"
    files = fill(path, 3000, rotate_bytes=200_000)
    files[1].unlink()
    result = verify(path)
    assert not result.ok
    assert str(result.problems[0]) == (
        "audit.jsonl.000003 line 1: the file before this one, audit.jsonl.000002, is missing: removed"
    )
    assert "missing before this line: deleted" in str(result.problems[1])


def test_the_oldest_file_removed_is_found_and_named(tmp_path):
    path = tmp_path / "audit.jsonl"
    files = fill(path, 3000, rotate_bytes=200_000)
    files[0].unlink()
    problems = [str(p) for p in verify(path).problems]
    assert problems[0] == (
        "audit.jsonl.000002 line 1: the file before this one, audit.jsonl.000001, is missing: removed"
    )


def test_retention_removes_old_files_and_the_chain_still_verifies(tmp_path):
    path = tmp_path / "audit.jsonl"
    # Every rotated file is older than a millisecond by the time it is looked at: all go.
    fill(path, 3000, rotate_bytes=200_000, keep_s=0.001)
    assert rotated_files(path) == []
    expired = [r for r in read_records(path) if r["event"] == "audit_files_expired"]
    assert expired and all(r["files"] for r in expired)
    result = verify(path)
    assert result.ok, [str(p) for p in result.problems[:3]]
    # More files, kept; one removed by hand is still found: no record says retention did it.
    fill(path, 3000, rotate_bytes=200_000)
    assert verify(path).ok
    rotated_files(path)[1][1].unlink()
    assert "is missing: removed" in str(verify(path).problems[0])


def test_a_second_writer_follows_the_services_rotation(tmp_path):
    """The service rotates; an operator's command (another open file, as another process has)
    writes meanwhile and lands in whichever file is live, in one chain."""
    path = tmp_path / "audit.jsonl"
    service = AuditTrail(path, fsync=False, rotate_bytes=50_000)
    operator = AuditTrail(path, fsync=False)

    def write(trail: AuditTrail, who: str) -> None:
        for n in range(1500):
            trail.record("audit_read", by=who, records=n)

    threads = [threading.Thread(target=write, args=(t, w)) for t, w in ((service, "svc"), (operator, "op"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    service.close()
    operator.close()
    result = verify(path)
    assert result.ok, [str(p) for p in result.problems[:3]]
    assert len(trail_files(path)) > 5
    by = [r.get("by") for r in read_records(path)]
    assert by.count("svc") == 1500 and by.count("op") == 1500


def test_audit_verify_names_the_file_on_the_command_line(tmp_path):
    path = tmp_path / "audit.jsonl"
    files = fill(path, 2000, rotate_bytes=200_000)
    cli = str(Path(sys.executable).parent / "dicom-anon")
    ok = subprocess.run(
        [cli, "audit", "verify", "--trail", str(path)], capture_output=True, text=True, check=False
    )
    assert ok.returncode == 0 and "chain intact" in ok.stdout
    files[0].unlink()
    broken = subprocess.run(
        [cli, "audit", "verify", "--trail", str(path)], capture_output=True, text=True, check=False
    )
    assert broken.returncode == 1
    assert "audit.jsonl.000001, is missing: removed" in broken.stderr.replace("\n", "")
