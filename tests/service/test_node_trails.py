"""Two running nodes that share an audit folder: each writes its own chain, every record names its
node, and reading the folder gives both nodes' receptions in time order with both chains intact."""

from __future__ import annotations

from pathlib import Path

from peers import tiny_photo, wait_until
from test_pipeline import send

from dicom_anon.audit.nodes import merged_records, node_trails, verify_nodes
from dicom_anon.audit.trail import read_records


def forwarded(trail: Path) -> int:
    return sum(r["event"] == "instance_forwarded" for r in read_records(trail)) if trail.exists() else 0


def test_two_nodes_write_their_own_chains_into_one_folder(start_service, tmp_path):
    shared = tmp_path / "audit"
    nodes = {
        name: start_service(
            data_dir=str(tmp_path / name), node={"id": name}, audit={"shared_dir": str(shared)}
        )
        for name in ("node-a", "node-b")
    }
    for i in range(3):
        for k, service in enumerate(nodes.values()):
            assert send(service.port, tiny_photo(10 * k + i)) == [0]
    for service in nodes.values():
        assert service.settings.audit_path == shared / service.settings.node.id / "audit.jsonl"
        wait_until(
            lambda s=service: forwarded(s.settings.audit_path) == 3,
            20,
            "three forwarded by each node",
        )
    trails = node_trails(nodes["node-a"].settings)
    assert set(trails) == {"node-a", "node-b"}
    assert all(result.ok for result in verify_nodes(trails).values())
    received = [r["node"] for r in merged_records(trails) if r["event"] == "instance_received"]
    assert received == ["node-a", "node-b"] * 3
