"""Two ingress nodes and two workers as real ``dicom-anon serve`` processes on one PostgreSQL store,
one shared spool and one audit folder; two dcmtk storescu processes send 500 instances, one worker
and one ingress node are killed with SIGKILL mid-stream and started again. Every acknowledged
instance reaches the archive (dcmtk storescp) de-identified and once (a second copy only of the one
delivery in flight at the kill), and every node's audit chain verifies.

Skips where PostgreSQL, psycopg or dcmtk is absent.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import pytest
from cluster import Cluster
from peers import (
    TINY_PHI,
    acknowledged,
    dcmtk,
    dcmtk_env,
    free_port,
    start_storescp,
    storescu,
    wait_until,
    write_photos,
)
from test_integration import archive_uids, assert_no_phi, run_cli
from test_store import job, output

from dicom_anon.config import load_settings
from dicom_anon.headers.pseudonyms import SiteKey
from dicom_anon.service.store import open_store

psycopg = pytest.importorskip("psycopg")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        dcmtk("storescu") is None or dcmtk("storescp") is None, reason="dcmtk is not installed"
    ),
]

INGRESS, WORKERS = ("ingress-a", "ingress-b"), ("worker-1", "worker-2")


def rows(conninfo: str, sql: str) -> list[tuple]:
    with psycopg.connect(conninfo) as db:
        return db.execute(sql).fetchall()


def send(port: int, files: list[Path], log: Path) -> subprocess.Popen[bytes]:
    """storescu as a clinic PACS, one association; its log (a file: a pipe nobody reads while it
    runs would fill and stall it) says which instances were acknowledged."""
    binary = dcmtk("storescu")
    args = [binary, "-v", "-xy", "-aet", "CLINIC", "-aec", "DICOM_ANON", "127.0.0.1", str(port)]
    with log.open("wb") as out:
        return subprocess.Popen(
            [*args, *map(str, files)], stdout=out, stderr=subprocess.STDOUT, env=dcmtk_env()
        )


@pytest.fixture
def cluster(tmp_path, postgres):
    made = Cluster(tmp_path, postgres.database(), free_port(), lease_s=60)
    archive = start_storescp(tmp_path, made.archive_port, tmp_path / "archive", "+uf").wait_ready()
    made.upgrade()
    yield made
    made.stop()
    archive.stop()


def test_two_ingress_two_workers_killed_mid_stream_forward_each_acknowledged_instance_once(tmp_path, cluster):
    photos = write_photos(tmp_path / "in", 500)
    halves = {"ingress-a": photos[:250], "ingress-b": photos[250:]}
    for name in WORKERS:
        cluster.start(name, "worker")
    for name in INGRESS:
        cluster.start(name, "ingress")
    cluster.wait_started(*WORKERS, *INGRESS)

    pacs = {
        name: send(cluster.ports[name], files, tmp_path / f"pacs-{name}.log")
        for name, files in halves.items()
    }
    wait_until(lambda: cluster.count("ingress-a", "instance_received") >= 60, 60, "60 instances at ingress-a")
    cluster.kill9("ingress-a")
    wait_until(lambda: cluster.count("worker-1", "instance_deidentified") >= 40, 60, "40 done by worker-1")
    cluster.kill9("worker-1")
    cluster.start("worker-1", "worker")
    cluster.start("ingress-a", "ingress")
    cluster.wait_started("worker-1", "ingress-a")

    acked = set()
    for name, proc in pacs.items():
        proc.wait(timeout=120)
        log = (tmp_path / f"pacs-{name}.log").read_text()
        acked |= acknowledged(log)
        assert (proc.returncode == 0) == (name == "ingress-b"), log[-2000:]
    assert 50 <= len(acked & set(map(str, halves["ingress-a"]))) < 250  # killed in the middle
    # The PACS sends again what was not acknowledged (the one in flight may be a duplicate).
    again = [p for p in halves["ingress-a"] if str(p) not in acked]
    resent = storescu(cluster.ports["ingress-a"], again, timeout=120)
    assert resent.returncode == 0, resent.stderr

    dsn = cluster.conninfo
    wait_until(
        lambda: rows(dsn, "SELECT state, COUNT(*) FROM jobs GROUP BY state") == [("done", 500)],
        120,
        "all 500 jobs done",
    )
    assert rows(dsn, "SELECT state, COUNT(*) FROM deliveries GROUP BY state") == [("delivered", 500)]
    assert rows(dsn, "SELECT COUNT(*) FROM quarantine") == [(0,)]
    cluster.stop()

    # Every acknowledged instance became a job (keyed by its UID), once.
    key = SiteKey.load_or_create(cluster.key_file)
    uid_of = {str(p): str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in photos}
    jobs = {row[0] for row in rows(dsn, "SELECT sop_key FROM jobs")}
    assert {key.keyed_hash(uid_of[path]) for path in acked} <= jobs and len(jobs) == 500
    # At the archive, by the de-identified UID: all 500, a second copy only of the one delivery
    # worker-1 may have had in flight (sent and answered, not yet recorded) when it was killed.
    received = archive_uids(tmp_path / "archive")
    outputs = {row[0] for row in rows(dsn, "SELECT sop_uid FROM outputs")}
    assert set(received) == outputs and len(outputs) == 500
    assert len(received) - len(set(received)) <= 1
    for path in (tmp_path / "archive").glob("*.dcm"):
        assert_no_phi(path.read_bytes(), list(TINY_PHI), path.name)

    # Each did its role's part only, both of each kind took part, and nothing is left in the spool.
    for name in INGRESS:
        assert (
            cluster.count(name, "instance_received") > 0 and cluster.count(name, "instance_deidentified") == 0
        )
    for name in WORKERS:
        assert (
            cluster.count(name, "instance_deidentified") > 0 and cluster.count(name, "instance_received") == 0
        )
    left = [p for p in cluster.shared.rglob("*") if p.is_file() and p.suffix == ".dcm"]
    assert left == []
    verified = run_cli("audit", "verify", "--config", str(cluster.config("ingress-a", "ingress")))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    for name in (*INGRESS, *WORKERS):
        assert f"{name}:" in verified.stdout


def test_another_nodes_outbox_file_left_by_a_kill_after_its_delivery_is_removed(cluster):
    # Any node's sender delivers any node's output. One killed after recording a delivery and
    # before removing its file left that file in worker-2's folder, where no start-up sweeps but
    # worker-2's own: it stayed for good (seen once in this file's test above).
    store = open_store(load_settings(cluster.config("worker-2", "worker")))
    job_id, _ = store.add_job(job(1))
    store.claim_job()
    path = "outbox/worker-2/1-photos.dcm"
    (delivery,), _, _ = store.finish_routing(job_id, [output(destinations=("archive",), path=path)], [])
    assert store.mark_delivered(delivery, 0x0000).output_path == path
    store.close()
    left = cluster.shared / path
    left.parent.mkdir(parents=True, exist_ok=True)
    left.write_bytes(b"a de-identified copy")
    cluster.start("worker-1", "worker")
    cluster.wait_started("worker-1")
    cluster.stop()
    assert not left.exists()
