"""``dicom-anon audit chart``: the counts behind the bars, the PNG, and a broken chain said out loud."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from dicom_anon.audit.chart import BROKEN_COLOUR, Bucket, tally
from dicom_anon.audit.query import Filters, parse_time
from dicom_anon.audit.trail import AuditTrail, read_records, verify
from dicom_anon.cli import app

runner = CliRunner()
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A trail as the service writes it: four instances on two routes, three forwards to two
    destinations, two quarantines, two associations turned away, and events the chart ignores."""
    audit = AuditTrail(tmp_path / "audit" / "audit.jsonl")
    audit.record("config_loaded", config="x.yaml", config_sha256="0" * 64)
    audit.record("association_accepted", calling_ae="CLINIC", peer="127.0.0.1")
    for job in (1, 2, 3, 4):
        audit.record("instance_received", job=job, sop_uid_hash=f"{job:064x}", calling_ae="CLINIC")
    audit.record("instance_routed", job=1, routes=["ortho"], actions=["forward"])
    audit.record("instance_forwarded", job=1, route="ortho", destination="teaching", status="0x0000")
    audit.record("instance_forwarded", job=1, route="ortho", destination="research", status="0x0000")
    audit.record("instance_forwarded", job=2, route="photos", destination="teaching", status="0x0000")
    audit.record("instance_quarantined", job=3, route="photos", code="burned-in-annotation", reason="yes")
    audit.record("instance_quarantined", job=4, route=None, code="no-route", reason="no route matches")
    audit.record("delivery_retry", job=1, route="ortho", destination="research", attempt=1)
    audit.record("association_rejected", category="security", calling_ae="INTRUDER", peer="127.0.0.1")
    audit.record("association_rejected", category="security", called_ae="WRONG", peer="127.0.0.1")
    audit.record("audit_read", by="reviewer", records=3)
    audit.close()
    return tmp_path


def trail_path(data_dir: Path) -> Path:
    return data_dir / "audit" / "audit.jsonl"


def at(records: list[dict], *stamps: str) -> list[dict]:
    """The counted records, in order, moved to the given times (the writer stamps 'now')."""
    counted = [
        r
        for r in records
        if r["event"]
        in {"instance_received", "instance_forwarded", "instance_quarantined", "association_rejected"}
    ]
    assert len(counted) == len(stamps)
    for record, stamp in zip(counted, stamps, strict=True):
        record["ts"] = stamp
    return records


# --- counting -----------------------------------------------------------------------------------


def test_counts_every_kind_of_event_once(data_dir):
    t = tally(read_records(trail_path(data_dir)))
    assert t.bucket is Bucket.minute and len(t.starts) in (1, 2)  # written within a second or two
    assert sum(t.received) == 4
    assert {dest: sum(c) for dest, c in t.forwarded.items()} == {"research": 1, "teaching": 2}
    assert {code: sum(c) for code, c in t.quarantined.items()} == {"burned-in-annotation": 1, "no-route": 1}
    assert t.rejected is not None and sum(t.rejected) == 2
    assert t.events == 11


def test_one_route_counts_the_receipts_of_its_instances(data_dir):
    t = tally(read_records(trail_path(data_dir)), Filters(route="photos"))
    assert sum(t.received) == 2  # jobs 2 and 3, found through their jobs
    assert {dest: sum(c) for dest, c in t.forwarded.items()} == {"teaching": 1}
    assert {code: sum(c) for code, c in t.quarantined.items()} == {"burned-in-annotation": 1}
    assert t.rejected is None  # an association has no route


def test_one_destination(data_dir):
    t = tally(read_records(trail_path(data_dir)), Filters(destination="research"))
    assert sum(t.received) == 1
    assert {dest: sum(c) for dest, c in t.forwarded.items()} == {"research": 1}
    assert t.quarantined == {}


def test_hour_buckets_keep_empty_hours(data_dir):
    records = at(
        read_records(trail_path(data_dir)),
        *["2025-03-01T10:05:00Z"] * 3,
        "2025-03-01T10:59:59Z",
        "2025-03-01T10:06:00Z",
        "2025-03-01T12:00:00Z",
        "2025-03-01T12:30:00Z",
        "2025-03-01T12:31:00Z",
        "2025-03-01T12:32:00Z",
        "2025-03-01T10:20:00Z",
        "2025-03-01T12:40:00Z",
    )
    t = tally(records, bucket=Bucket.hour)
    assert [s.hour for s in t.starts] == [10, 11, 12]
    assert t.received == (4, 0, 0)
    assert t.forwarded == {"research": (0, 0, 1), "teaching": (1, 0, 1)}
    assert t.quarantined == {"burned-in-annotation": (0, 0, 1), "no-route": (0, 0, 1)}
    assert t.rejected == (1, 0, 1)
    assert t.end == datetime(2025, 3, 1, 13, tzinfo=UTC)

    day = tally(records, bucket=Bucket.day)
    assert day.received == (4,) and day.rejected == (2,)


def test_since_and_until_cut_the_window(data_dir):
    records = at(
        read_records(trail_path(data_dir)),
        *[f"2025-03-0{d}T08:00:00Z" for d in (1, 2, 3)] * 3,
        "2025-03-04T08:00:00Z",
        "2025-03-05T08:00:00Z",
    )
    t = tally(
        records, Filters(since=parse_time("2025-03-02"), until=parse_time("2025-03-03T23:00")), Bucket.day
    )
    assert [s.day for s in t.starts] == [2, 3]
    assert t.events == 6


def test_auto_picks_the_bar_by_the_length_of_the_range(data_dir):
    base = datetime(2025, 3, 1, tzinfo=UTC)
    for span, expected in (
        (timedelta(minutes=40), Bucket.minute),
        (timedelta(days=2), Bucket.hour),
        (timedelta(days=40), Bucket.day),
    ):
        stamps = [(base + span * i / 10).isoformat() for i in range(11)]
        assert tally(at(read_records(trail_path(data_dir)), *stamps)).bucket is expected


def test_too_many_bars_is_a_clear_error(data_dir):
    stamps = ["2025-01-01T00:00:00Z"] * 10 + ["2025-03-01T00:00:00Z"]
    with pytest.raises(ValueError, match="too many to read"):
        tally(at(read_records(trail_path(data_dir)), *stamps), bucket=Bucket.minute)


def test_nothing_in_range_gives_no_bars(data_dir):
    t = tally(read_records(trail_path(data_dir)), Filters(until=parse_time("2000-01-01")))
    assert t.starts == () and t.events == 0


# --- the command ---------------------------------------------------------------------------------


def chart(data_dir: Path, out: Path, *args: str):
    return runner.invoke(
        app, ["audit", "chart", "--data-dir", str(data_dir), "--out", str(out), *args], terminal_width=200
    )


def opened(png: Path) -> Image.Image:
    data = png.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 0
    image = Image.open(png)
    image.load()
    assert image.format == "PNG" and image.width > 600 and image.height > 300
    return image.convert("RGB")


def test_command_writes_a_png_and_audits_the_reading(data_dir, tmp_path):
    out = tmp_path / "chart.png"
    result = chart(data_dir, out, "--bucket", "hour")
    assert result.exit_code == 0, result.output
    assert "11 events" in result.output and "chain intact" in result.output
    assert opened(out).getpixel((0, 0)) == (255, 255, 255)
    read = read_records(trail_path(data_dir))[-1]
    assert read["event"] == "audit_read" and read["view"] == "chart"
    assert read["records"] == 11 and read["bucket"] == "hour" and read["chain_ok"] is True
    assert read["output"] == str(out)
    assert verify(trail_path(data_dir)).ok


def test_command_with_filters_and_an_empty_range(data_dir, tmp_path):
    out = tmp_path / "empty.png"
    result = chart(data_dir, out, "--since", "2000-01-01", "--until", "2000-01-02", "--route", "photos")
    assert result.exit_code == 0, result.output
    opened(out)
    read = read_records(trail_path(data_dir))[-1]
    assert read["records"] == 0 and read["filters"]["route"] == "photos"


def test_tampered_trail_exits_non_zero_and_the_chart_says_so(data_dir, tmp_path):
    path = trail_path(data_dir)
    path.write_text(path.read_text().replace('"code":"no-route"', '"code":"ok"'))
    out = tmp_path / "tampered.png"
    result = chart(data_dir, out)
    assert result.exit_code == 1
    assert "chain broken at line 12" in result.output and "edited" in result.output
    image = opened(out)  # written all the same, framed in red
    red = tuple(int(BROKEN_COLOUR[i : i + 2], 16) for i in (1, 3, 5))
    assert all(
        max(abs(a - b) for a, b in zip(image.getpixel(xy), red, strict=True)) < 40
        for xy in ((0, 0), (image.width - 1, image.height // 2))
    )
    assert read_records(path)[-1]["chain_ok"] is False


def test_bad_options_are_one_line(data_dir, tmp_path):
    result = chart(data_dir, tmp_path / "x.png", "--since", "yesterday")
    assert result.exit_code == 2 and "not a date" in result.output and "Traceback" not in result.output
    result = chart(data_dir, tmp_path / "no" / "such" / "dir" / "x.png")
    assert result.exit_code == 2 and "cannot write" in result.output
