"""Node roles in process, on a private PostgreSQL and a shared spool folder: an ingress node runs
only the SCP and a worker only the pipeline and senders, and what one receives the other forwards;
a node clears at start only its own leftovers in the shared spool; a node with another site key
than the others is refused. (test_multinode.py runs the same as processes, with kills.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from peers import tiny_photo, wait_until
from test_pipeline import send
from typer.testing import CliRunner

from dicom_anon.audit.trail import read_records
from dicom_anon.cli import app
from dicom_anon.headers.errors import SiteKeyError
from dicom_anon.headers.pseudonyms import SiteKey
from dicom_anon.service.app import same_key_as_other_nodes

pytest.importorskip("psycopg")


@pytest.fixture
def node(start_service, postgres, tmp_path):
    """Starts a node of the given id and role on one database, spool folder, audit folder and key."""
    dsn = postgres.database()
    from dicom_anon.service.store_postgres import PostgresStore

    PostgresStore(dsn, node="setup", lease_s=300, check_schema=False).upgrade()
    SiteKey.load_or_create(tmp_path / "site.key")

    def start(name: str, role: str, **sections):
        return start_service(
            data_dir=str(tmp_path / name),
            secret_file=str(sections.pop("secret_file", tmp_path / "site.key")),
            node={"id": name, "role": role},
            state={"backend": "postgresql", "dsn": dsn},
            spool={"shared_dir": str(tmp_path / "shared")},
            audit={"shared_dir": str(tmp_path / "audit"), "fsync": False},
            **sections,
        )

    return start


def events(service) -> list[str]:
    return [r["event"] for r in read_records(service.settings.audit_path)]


def test_an_ingress_node_receives_and_a_worker_node_forwards(node, tmp_path):
    ingress = node("in-1", "ingress")
    worker = node("work-1", "worker")
    assert ingress.workers == [] and ingress.senders == {} and ingress.runtime.deid_pool is None
    assert worker.ingress is None and len(worker.workers) == 1 and set(worker.senders) == {"teaching"}
    assert send(ingress.port, tiny_photo(0), tiny_photo(1)) == [0, 0]
    archive = tmp_path / "archive"
    wait_until(lambda: len(list(archive.glob("*.dcm"))) == 2, 20, "both photos forwarded by the worker")
    # The received file was in the ingress node's part of the shared spool; the worker removed it.
    assert (tmp_path / "shared" / "spool" / "in-1").is_dir()
    wait_until(lambda: not list((tmp_path / "shared").rglob("*.dcm")), 10, "the spool emptied")
    assert events(ingress).count("instance_received") == 2 and "instance_deidentified" not in events(ingress)
    assert events(worker).count("instance_forwarded") == 2 and "instance_received" not in events(worker)


def test_a_starting_node_clears_only_its_own_leftovers_in_the_shared_spool(node, tmp_path):
    spool = tmp_path / "shared" / "spool"
    # Files another node is writing right now (its job row not committed yet), and this node's own
    # file from before a crash.
    theirs = spool / "in-2" / "20261205" / "being-written.dcm"
    mine = spool / "in-1" / "20261205" / "cut-off.dcm"
    outbox = tmp_path / "shared" / "outbox" / "work-2" / "7-photos.dcm"
    for path in (theirs, mine, outbox):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"DICM")
    node("in-1", "ingress")
    assert theirs.exists() and outbox.exists() and not mine.exists()


def test_a_node_with_another_site_key_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    ours = SiteKey.load_or_create(tmp_path / "ours.key")
    same_key_as_other_nodes(shared, ours)  # the first node names the key
    same_key_as_other_nodes(shared, SiteKey.load_or_create(tmp_path / "ours.key"))  # a copy of it
    other = SiteKey.load_or_create(tmp_path / "other.key")
    with pytest.raises(SiteKeyError) as info:
        same_key_as_other_nodes(shared, other)
    assert other.fingerprint() in str(info.value) and ours.fingerprint() in str(info.value)
    assert "same secret_file" in str(info.value)


def test_serve_with_a_role_the_store_cannot_serve_is_one_line(tmp_path):
    config = Path(__file__).resolve().parents[2] / "config" / "dicom-anon.yaml"
    result = CliRunner().invoke(
        app, ["serve", "--config", str(config), "--data-dir", str(tmp_path), "--role", "worker"]
    )
    assert result.exit_code == 2
    assert "--role worker: role 'worker' needs a store and a spool that every node reaches" in result.output
    assert "Traceback" not in result.output
