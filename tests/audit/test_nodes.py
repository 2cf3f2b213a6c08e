"""Several nodes' trails: each node its own chain under audit.shared_dir, verified chain by chain and
read together in time order by ``audit verify|query|export|chart``."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from dicom_anon.audit.nodes import merged_records, trails_in
from dicom_anon.audit.trail import AuditTrail, read_records, rotated_files
from dicom_anon.cli import app
from dicom_anon.config import ConfigError, load_settings

runner = CliRunner()


def write_config(path: Path, **sections: object) -> Path:
    path.write_text(yaml.safe_dump(sections))
    return path


@pytest.fixture
def shared(tmp_path: Path) -> tuple[Path, Path]:
    """Two nodes, a and b, taking turns: a receives, b forwards, and so on, 40 events each; node a's
    trail rotates, so its chain runs across files. Returns (config of node a, shared folder)."""
    folder = tmp_path / "audit"
    a = AuditTrail(folder / "a" / "audit.jsonl", node="a", rotate_bytes=4000)
    b = AuditTrail(folder / "b" / "audit.jsonl", node="b")
    for job in range(40):
        a.record("instance_received", job=job, calling_ae="CLINIC")
        b.record("instance_forwarded", job=job, destination="teaching", status="0x0000")
    a.close()
    b.close()
    config = write_config(
        tmp_path / "a.yaml",
        data_dir=str(tmp_path / "data-a"),
        node={"id": "a"},
        audit={"shared_dir": str(folder)},
    )
    return config, folder


def test_each_node_writes_its_own_chain_and_every_record_names_its_node(shared):
    config, folder = shared
    settings = load_settings(config)
    assert settings.audit_path == folder / "a" / "audit.jsonl"
    assert rotated_files(folder / "a" / "audit.jsonl"), "node a's trail was meant to rotate"
    assert set(trails_in(folder)) == {"a", "b"}
    for node in ("a", "b"):
        records = read_records(folder / node / "audit.jsonl")
        assert {r["node"] for r in records} == {node}
        assert [r["seq"] for r in records] == list(range(1, len(records) + 1))


def test_records_of_all_nodes_are_merged_in_time_order(shared):
    _, folder = shared
    records = merged_records(trails_in(folder))
    jobs = [(r["node"], r["job"]) for r in records if r["event"] != "audit_rotated"]
    # Written turn by turn, read back turn by turn: a's job 0, b's job 0, a's job 1...
    assert jobs == [(node, job) for job in range(40) for node in ("a", "b")]
    stamps = [r["ts"] for r in records]
    assert stamps == sorted(stamps)


def test_verify_checks_every_chain_and_names_the_node_that_is_broken(shared):
    config, folder = shared
    result = runner.invoke(app, ["audit", "verify", "--config", str(config)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "node a:" in result.output and "node b:" in result.output
    assert result.output.count("chain intact") == 2
    path = folder / "b" / "audit.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    lines[7] = lines[7].replace('"destination":"teaching"', '"destination":"elsewhere"')
    path.write_text("".join(lines))
    result = runner.invoke(app, ["audit", "verify", "--config", str(config)], terminal_width=200)
    assert result.exit_code == 1
    broken = [line for line in result.output.splitlines() if "chain broken" in line]
    assert len(broken) == 1 and broken[0].startswith(f"node b: {path}") and "line 8" in broken[0]
    assert "node a:" in result.output and "chain intact" in result.output
    # The check is itself recorded, in node a's own trail, with each node's verdict.
    last = read_records(folder / "a" / "audit.jsonl")[-1]
    assert last["event"] == "audit_verified" and last["nodes"] == {"a": True, "b": False}
    assert not last["ok"]


def test_query_shows_the_node_column_and_both_nodes(shared):
    config, _ = shared
    result = runner.invoke(
        app,
        ["audit", "query", "--config", str(config), "--event", "instance_forwarded", "--limit", "0"],
        terminal_width=200,
    )
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if "event" in line and "seq" in line)
    assert header.index("time (UTC)") < header.index("node") < header.index("event")
    assert "40 records" in result.output


def test_export_holds_both_nodes_in_time_order(shared, tmp_path):
    config, _ = shared
    out = tmp_path / "export.csv"
    result = runner.invoke(app, ["audit", "export", "--config", str(config), "-o", str(out)])
    assert result.exit_code == 0, result.output
    rows = [r for r in csv.DictReader(io.StringIO(out.read_text())) if r["event"] != "audit_rotated"]
    assert [(r["node"], r["job"]) for r in rows] == [
        (node, str(job)) for job in range(40) for node in ("a", "b")
    ]
    result = runner.invoke(app, ["audit", "export", "--config", str(config), "--format", "json"])
    assert {r["node"] for r in json.loads(result.output)} == {"a", "b"}


def test_a_copy_of_the_shared_folder_is_read_with_trail(shared, tmp_path):
    _, folder = shared
    config = write_config(tmp_path / "reviewer.yaml", data_dir=str(tmp_path / "reviewer"))
    result = runner.invoke(
        app, ["audit", "verify", "--config", str(config), "--trail", str(folder)], terminal_width=200
    )
    assert result.exit_code == 0 and result.output.count("chain intact") == 2


def test_chart_reads_every_node(shared, tmp_path):
    config, _ = shared
    out = tmp_path / "chart.png"
    result = runner.invoke(app, ["audit", "chart", "--config", str(config), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "80 events" in result.output and out.stat().st_size > 0


def test_one_node_keeps_its_path_and_table(tmp_path):
    """Nothing configured: the trail stays at data_dir/audit/audit.jsonl, records carry the host's
    node id, and the query table has no node column."""
    config = write_config(tmp_path / "one.yaml", data_dir=str(tmp_path), node={"id": "solo"})
    settings = load_settings(config)
    assert settings.audit_path == tmp_path / "audit" / "audit.jsonl"
    trail = AuditTrail(settings.audit_path, node=settings.node.id)
    trail.record("instance_received", job=1)
    trail.close()
    result = runner.invoke(app, ["audit", "query", "--config", str(config)], terminal_width=200)
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if "event" in line and "seq" in line)
    assert "node" not in header
    assert {r["node"] for r in read_records(settings.audit_path)} == {"solo"}


def test_path_and_shared_dir_together_are_refused(tmp_path):
    config = write_config(tmp_path / "c.yaml", audit={"path": "/x/audit.jsonl", "shared_dir": "/x"})
    with pytest.raises(ConfigError, match="not both"):
        load_settings(config)
