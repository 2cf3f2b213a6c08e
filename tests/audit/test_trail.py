"""The hash-chained trail: tampering of every kind is found and placed; two writers keep one chain."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from dicom_anon.audit.trail import AuditTrail, head_path, record_hash, verify


def trail_with(path: Path, n: int) -> Path:
    audit = AuditTrail(path)
    for i in range(n):
        audit.record("instance_received", job=i + 1, sop_uid_hash=f"{i:032x}", calling_ae="CLINIC")
    audit.close()
    return path


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def rewrite(path: Path, new_lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in new_lines))


def test_records_are_chained_json(tmp_path):
    path = trail_with(tmp_path / "a.jsonl", 3)
    records = [json.loads(line) for line in lines(path)]
    assert [r["seq"] for r in records] == [1, 2, 3]
    assert records[0]["prev"] == "0" * 64
    assert records[1]["prev"] == records[0]["hash"] and records[2]["prev"] == records[1]["hash"]
    assert all(r["hash"] == record_hash(r) for r in records)
    assert records[0]["event"] == "instance_received" and records[0]["ts"].endswith("Z")
    result = verify(path)
    assert result.ok and result.records == 3


def test_reopening_continues_the_chain(tmp_path):
    path = trail_with(tmp_path / "a.jsonl", 2)
    trail_with(path, 2)
    assert [json.loads(x)["seq"] for x in lines(path)] == [1, 2, 3, 4]
    assert verify(path).ok


def test_edited_line_is_pinpointed(tmp_path):
    path = trail_with(tmp_path / "a.jsonl", 5)
    text = lines(path)
    text[2] = text[2].replace('"calling_ae":"CLINIC"', '"calling_ae":"OTHER"')
    rewrite(path, text)
    result = verify(path)
    assert not result.ok
    assert result.problems[0].line == 3 and "edited" in result.problems[0].message


def test_edited_and_rehashed_line_is_caught_by_the_next(tmp_path):
    path = trail_with(tmp_path / "a.jsonl", 5)
    text = lines(path)
    record = json.loads(text[1])
    record["job"] = 99
    record["hash"] = record_hash(record)
    text[1] = json.dumps(record, sort_keys=True, separators=(",", ":"))
    rewrite(path, text)
    result = verify(path)
    assert result.problems[0].line == 3
    assert "previous-hash mismatch" in result.problems[0].message


def test_deleted_line_is_found(tmp_path):
    path = trail_with(tmp_path / "a.jsonl", 5)
    text = lines(path)
    del text[2]
    rewrite(path, text)
    result = verify(path)
    assert result.problems[0].line == 3 and "record 3 missing" in result.problems[0].message


def test_reordered_lines_are_found(tmp_path):
    path = trail_with(tmp_path / "a.jsonl", 5)
    text = lines(path)
    text[1], text[2] = text[2], text[1]
    rewrite(path, text)
    result = verify(path)
    assert result.problems[0].line == 2 and "missing" in result.problems[0].message
    assert any("reordered" in p.message for p in result.problems)


def test_lines_cut_off_the_end_are_found_through_the_head_file(tmp_path):
    path = trail_with(tmp_path / "a.jsonl", 5)
    rewrite(path, lines(path)[:3])
    result = verify(path)
    assert not result.ok and "records at the end were removed" in result.problems[0].message
    assert head_path(path).exists()


def test_a_write_cut_short_by_a_crash_is_reported_and_the_chain_goes_on(tmp_path):
    path = trail_with(tmp_path / "a.jsonl", 2)
    with path.open("a") as f:
        f.write('{"event":"instance_rec')  # a crash in the middle of a write
    trail_with(path, 1)
    result = verify(path)
    assert [p.line for p in result.problems] == [3]
    assert "cut short" in result.problems[0].message
    assert json.loads(lines(path)[3])["seq"] == 3


def test_two_writers_keep_one_chain(tmp_path):
    """The service and an operator's command append to the same file (flock + re-read the tail)."""
    path = tmp_path / "a.jsonl"
    first, second = AuditTrail(path), AuditTrail(path)

    def write(trail: AuditTrail, who: str) -> None:
        for i in range(50):
            trail.record("x", who=who, i=i)

    threads = [threading.Thread(target=write, args=(t, w)) for t, w in ((first, "a"), (second, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first.close()
    second.close()
    result = verify(path)
    assert result.ok, result.problems
    assert result.records == 100


@pytest.mark.parametrize("fsync", [True, False])
def test_trail_file_is_private(tmp_path, fsync):
    path = tmp_path / "a.jsonl"
    AuditTrail(path, fsync=fsync).record("x")
    assert path.stat().st_mode & 0o077 == 0


def test_threads_share_fsyncs_and_keep_one_chain(tmp_path):
    """Concurrent associations each wait for their own record to be durable; one fsync serves many."""
    path = tmp_path / "a.jsonl"
    trail = AuditTrail(path, head_every_s=1.0)

    def write(who: int) -> None:
        for i in range(40):
            trail.record("instance_received", who=who, i=i)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    trail.close()
    result = verify(path)
    assert result.ok, result.problems
    assert result.records == 240
    assert json.loads(head_path(path).read_text())["seq"] == 240  # close names the last record


def test_a_head_file_behind_the_trail_after_a_crash_still_verifies(tmp_path):
    """The service rewrites the head once a second: killed in between, the head names an earlier
    record. That verifies; cutting records off below the head is still found."""
    path = tmp_path / "a.jsonl"
    trail = AuditTrail(path, head_every_s=3600)
    for i in range(5):
        trail.record("instance_received", job=i + 1)
    # No close(): the process died here. The first step wrote the head; later ones were not due.
    assert json.loads(head_path(path).read_text())["seq"] == 1
    assert verify(path).ok
    later = AuditTrail(path, head_every_s=3600)
    later.record("service_started")
    later.close()
    rewrite(path, lines(path)[:4])
    result = verify(path)
    assert not result.ok and "records at the end were removed" in result.problems[0].message
