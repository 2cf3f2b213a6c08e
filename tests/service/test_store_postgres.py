"""The PostgreSQL state store as several nodes use it, on a real server started for the session:
claims never shared, leases that end, a node that lost its lease recording nothing, one patient at
a time across nodes, the schema migrated by ``dicom-anon db upgrade`` and refused when older, and
the service running on it. (test_store.py runs every transaction on both backends.)"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import ScpArchive, settings_for
from peers import dicom_anon, free_port, tiny_photo, wait_until
from test_pipeline import send
from test_store import job, output
from typer.testing import CliRunner

from dicom_anon.cli import app
from dicom_anon.config import load_settings
from dicom_anon.service.app import Service
from dicom_anon.service.store import LeaseLost, StoreUnavailable, open_store
from dicom_anon.service.store_sql import SCHEMA_VERSION
from dicom_anon.service.worker import PixelOutcome

psycopg = pytest.importorskip("psycopg")
from dicom_anon.service.store_postgres import PostgresStore  # noqa: E402

runner = CliRunner()


@pytest.fixture
def conninfo(postgres) -> str:
    """A database of its own, with the current schema."""
    dsn = postgres.database()
    PostgresStore(dsn, node="setup", lease_s=300, check_schema=False).upgrade()
    return dsn


@pytest.fixture
def node(conninfo):
    """Opens the store as a node of the given id and lease; closed after."""
    opened: list[PostgresStore] = []

    def open_as(name: str, lease_s: float = 300) -> PostgresStore:
        opened.append(PostgresStore(conninfo, node=name, lease_s=lease_s))
        return opened[-1]

    yield open_as
    for s in opened:
        s.close()


_CLAIMER = textwrap.dedent(
    """
    import json, sys
    from dicom_anon.service.store_postgres import PostgresStore
    store = PostgresStore(sys.argv[1], node=sys.argv[2], lease_s=300)
    print("ready", flush=True)
    sys.stdin.readline()  # both start claiming at once
    claimed = []
    while (j := store.claim_job()) is not None:
        claimed.append(j.id)
    print(json.dumps(claimed))
    """
)


def test_two_processes_claiming_at_once_never_get_the_same_job(conninfo, node):
    store = node("ingress")
    ids = {store.add_job(job(n))[0] for n in range(400)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CLAIMER, conninfo, f"worker{i}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    claimed = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    first, second = (set(c) for c in claimed)
    assert first and second  # both took part
    assert len(claimed[0]) + len(claimed[1]) == len(ids)
    assert not first & second and first | second == ids
    assert store.counts() == {"jobs.processing": len(ids)}


def test_a_dead_nodes_job_is_claimed_again_once_its_lease_ends(node):
    dead, alive = node("dead", lease_s=0.5), node("alive")
    job_id, _ = dead.add_job(job(1))
    assert dead.claim_job().id == job_id
    assert alive.claim_job() is None  # still leased
    time.sleep(0.6)
    again = alive.claim_job()
    assert again is not None and again.id == job_id
    assert again.attempts == 1  # the dead node's try counts: an instance that stops nodes is held


def test_a_node_that_lost_its_lease_records_nothing_so_the_job_is_forwarded_once(node):
    slow, fast = node("slow", lease_s=0.5), node("fast")
    job_id, _ = slow.add_job(job(1))
    slow.claim_job()
    time.sleep(0.6)
    fast.claim_job()
    (delivery,), _, _ = fast.finish_routing(job_id, [output()], [])
    with pytest.raises(LeaseLost):
        slow.finish_routing(job_id, [output()], [])  # the slow node's result, after all
    slow.retry_job(job_id, time.time(), "late failure")  # nor does a late failure put it back
    assert fast.counts() == {"jobs.routed": 1, "deliveries.pending": 1}
    assert [d.id for d in fast.due_deliveries("teaching", time.time())] == [delivery]


def test_a_delivery_is_sent_by_one_node_and_closed_once(node):
    a, b = node("a", lease_s=0.5), node("b")
    job_id, _ = a.add_job(job(1))
    a.claim_job()
    (delivery,), _, _ = a.finish_routing(job_id, [output()], [])
    assert [d.id for d in a.due_deliveries("teaching", time.time())] == [delivery]
    assert b.due_deliveries("teaching", time.time()) == []  # a's sender has it
    assert b.next_due("teaching") > time.time() + 0.3 > a.next_due("teaching")  # b waits for the lease
    time.sleep(0.6)
    assert [d.id for d in b.due_deliveries("teaching", time.time())] == [delivery]  # a went quiet
    assert b.mark_delivered(delivery, 0x0000).job_done
    with pytest.raises(LeaseLost):
        a.mark_delivered(delivery, 0x0000)
    assert a.counts() == {"jobs.done": 1, "deliveries.delivered": 1}
    assert len(a.latencies()) == 1


def test_two_nodes_closing_one_jobs_deliveries_at_once_finish_the_job(node):
    """Each sees the other's delivery pending unless the job is locked first: the job would stay
    routed, its spool file kept for good."""
    a, b = node("a"), node("b")
    jobs = []
    for n in range(40):
        job_id, _ = a.add_job(job(n))
        a.claim_job()
        jobs.append(a.finish_routing(job_id, [output(destinations=("x", "y"))], [])[0])
    done: list[bool] = []
    together = threading.Barrier(2)

    def close(store: PostgresStore, which: int) -> None:
        for deliveries in jobs:
            together.wait(10)  # both nodes close this job's deliveries at the same moment
            done.append(store.mark_delivered(deliveries[which], 0x0000).job_done)

    threads = [threading.Thread(target=close, args=(s, i)) for i, s in enumerate((a, b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert a.counts() == {"jobs.done": 40, "deliveries.delivered": 80}
    assert done.count(True) == 40


def test_start_checks_only_the_spool_files_of_jobs_this_node_received(node):
    a, b = node("a"), node("b")
    mine, _ = a.add_job(job(1))
    b.add_job(job(2))  # b may be acknowledging it right now
    assert [j for j, _, _ in a.received_spools()] == [mine]


def test_a_restarting_node_puts_back_only_its_own_claims(node):
    a, b = node("a"), node("b")
    first, _ = a.add_job(job(1))
    second, _ = a.add_job(job(2))
    assert a.claim_job().id == first and b.claim_job().id == second
    assert node("a").recover() == 1  # node a started again
    assert b.claim_job().id == first
    b.finish_routing(second, [], [])  # b's own claim was left alone


def test_one_patients_face_stage_runs_on_one_node_at_a_time(node):
    a, b = node("a"), node("b")
    order: list[str] = []

    def second_node() -> None:
        with b.patient_lock("ANONP1"):
            order.append("b")

    with a.patient_lock("ANONP1"):
        thread = threading.Thread(target=second_node)
        thread.start()
        with b.patient_lock("ANONP2"):  # another patient goes ahead
            order.append("other patient")
        time.sleep(0.3)
        order.append("a done")
    thread.join(10)
    assert order == ["other patient", "a done", "b"]


# --- the schema and its command -------------------------------------------------------------


def config_file(tmp_path: Path, **state) -> Path:
    path = tmp_path / "dicom-anon.yaml"
    path.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"), "state": state}))
    return path


def test_db_upgrade_creates_the_schema_then_has_nothing_to_do(postgres, tmp_path):
    dsn_file = tmp_path / "dsn"
    dsn_file.write_text(postgres.database() + "\n")
    config = config_file(tmp_path, backend="postgresql", dsn_file=str(dsn_file))
    first = runner.invoke(app, ["db", "upgrade", "--config", str(config)])
    assert first.exit_code == 0, first.output
    assert f"no schema -> schema version {SCHEMA_VERSION}" in first.output
    again = runner.invoke(app, ["db", "upgrade", "--config", str(config)])
    assert f"schema version {SCHEMA_VERSION} -> schema version {SCHEMA_VERSION}" in again.output
    store = open_store(load_settings(config))
    assert store.add_job(job(1))[1]
    store.close()


def test_db_upgrade_migrates_an_older_schema_and_keeps_its_rows(postgres, tmp_path):
    dsn = postgres.database()
    store = PostgresStore(dsn, node="a", lease_s=300, check_schema=False)
    store.upgrade()
    job_id, _ = store.add_job(job(1))
    with psycopg.connect(dsn, autocommit=True) as db:  # as schema 3 left it
        for table in ("jobs", "deliveries"):
            db.execute(f"ALTER TABLE {table} DROP COLUMN claimed_by, DROP COLUMN lease_until")
        db.execute("ALTER TABLE jobs DROP COLUMN received_by")
        db.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    store.close()
    config = config_file(tmp_path, backend="postgresql", dsn=dsn)
    settings = load_settings(config)
    with pytest.raises(StoreUnavailable, match=r"schema version 3.*dicom-anon db upgrade"):
        open_store(settings)
    served = subprocess.run(
        [dicom_anon(), "serve", "--config", str(config), "--listen", f"127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert served.returncode == 2 and "db upgrade" in served.stderr and "Traceback" not in served.stderr
    result = runner.invoke(app, ["db", "upgrade", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert f"schema version 3 -> schema version {SCHEMA_VERSION}" in result.output
    store = open_store(settings)
    assert store.claim_job().id == job_id
    store.close()


def test_an_unreachable_database_is_one_line_without_the_password(tmp_path):
    config = config_file(
        tmp_path, backend="postgresql", dsn=f"postgresql://dicom:s3cret@/state?host={tmp_path}&port=1"
    )
    result = runner.invoke(app, ["db", "upgrade", "--config", str(config)])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert "cannot reach the PostgreSQL state store" in result.output and "user=dicom" in result.output
    assert "s3cret" not in result.output and len(result.output.strip().splitlines()) == 1


def test_a_dsn_on_the_sqlite_backend_names_the_line_and_the_fix(tmp_path):
    config = config_file(tmp_path, dsn="postgresql:///state")
    result = runner.invoke(app, ["db", "upgrade", "--config", str(config)])
    assert result.exit_code == 2
    assert f"{config}:" in result.output and "backend: postgresql" in result.output


# --- the service on it ----------------------------------------------------------------------


def test_the_service_forwards_on_postgresql(start_service, conninfo, tmp_path, capsys):
    dsn = f"{conninfo} password=s3cret"  # the test server trusts local connections; any password will do
    service = start_service(state={"backend": "postgresql", "dsn": dsn}, node={"id": "node-a"})
    assert send(service.port, tiny_photo(0), tiny_photo(1)) == [0, 0]
    folder = tmp_path / "archive"
    wait_until(lambda: len(list(folder.glob("*.dcm"))) == 2, 20, "both photos in the archive")
    check = PostgresStore(conninfo, node="check", lease_s=300)
    wait_until(lambda: check.counts().get("jobs.done") == 2, 10, "both jobs done")
    assert check.counts() == {"jobs.done": 2, "deliveries.delivered": 2}
    check.close()
    trail = "".join(p.read_text() for p in (tmp_path / "data" / "audit").rglob("*.jsonl"))
    assert "instance_forwarded" in trail and "s3cret" not in trail
    assert "s3cret" not in "".join(capsys.readouterr())  # nor in the log


def slow_node(conninfo: str, tmp_path: Path, slow_stage) -> Service:
    """A started service on the PostgreSQL store whose face stage is ``slow_stage``."""
    routes = [{"name": "photos", "profile": "orthodontic", "destinations": ["teaching"]}]
    state = {"backend": "postgresql", "dsn": conninfo}
    service = Service(
        settings_for(tmp_path, free_port(), state=state, node={"id": "slow"}, routes=routes),
        pixel_stage=slow_stage,
    )
    service.start()
    return service


def test_a_worker_that_lost_its_job_to_another_node_drops_its_result_and_goes_on(conninfo, tmp_path):
    """The worker's side of a lost lease: its result is not recorded (nothing forwarded or held
    for a job another node routed), and it is not retried either: the next job goes through."""
    entered, go_on = threading.Event(), threading.Event()

    def slow_stage(ds, settings, key, store) -> PixelOutcome:
        if not go_on.is_set():
            entered.set()
            go_on.wait(20)
        return PixelOutcome(ds, frozenset())

    service = slow_node(conninfo, tmp_path, slow_stage)
    try:
        service.store.lease_s = 0.5  # as if the face stage outlasted a lease
        service.store.renew_job = lambda job_id: True  # a node cut off: its renewals do not arrive
        assert send(service.settings.ingress.port, tiny_photo(0)) == [0]
        assert entered.wait(20)
        time.sleep(0.6)
        other = PostgresStore(conninfo, node="other", lease_s=300)
        taken = other.claim_job()
        other.finish_routing(taken.id, [], [])  # the other node routed it (to nothing, here)
        go_on.set()
        assert send(service.settings.ingress.port, tiny_photo(1)) == [0]
        wait_until(lambda: other.counts().get("jobs.done") == 2, 20, "the next job done too")
        with psycopg.connect(conninfo) as db:
            outcomes = db.execute(
                "SELECT job_id FROM outputs UNION ALL SELECT job_id FROM quarantine"
            ).fetchall()
        assert outcomes == [(taken.id + 1,)]  # only the second job's; nothing of the first
        other.close()
    finally:
        go_on.set()
        service.stop()


class _SlowArchive(ScpArchive):
    """An archive that takes its time over each instance, as a busy one does."""

    def _store(self, event):
        time.sleep(0.3)
        return super()._store(event)


def test_a_sender_sends_no_copy_after_its_claim_could_have_ended(conninfo, tmp_path):
    """Two nodes send to one slow archive. A sender claims a batch of deliveries for lease_s; sent
    one by one past the end of that lease, the rest of the batch was claimed and sent by the other
    node too (a helper saw one copy sent three times). It stops at half the lease and claims again."""
    slow = _SlowArchive()
    try:
        state = {"backend": "postgresql", "dsn": conninfo}
        teaching = {"teaching": {"host": "127.0.0.1", "port": slow.port, "ae_title": "TEACHING"}}
        nodes = {
            "state": state,
            "destinations": teaching,
            "spool": {"shared_dir": str(tmp_path / "shared")},
            "secret_file": str(tmp_path / "site.key"),  # one site key for both nodes
        }
        services = [
            Service(settings_for(tmp_path / n, free_port(), node={"id": n}, **nodes)) for n in ("a", "b")
        ]
        for service in services:
            service.start()
            service.store.lease_s = 2.0  # 12 sends of 0.3 s outlast it
        try:
            assert send(services[0].settings.ingress.port, *(tiny_photo(i) for i in range(12))) == [0] * 12
            slow.wait_for(12, timeout=60)
            time.sleep(3.0)  # time for a late copy to arrive
        finally:
            for service in services:
                service.stop()
        uids = [str(ds.SOPInstanceUID) for ds in slow.received]
        assert len(uids) == 12 and len(set(uids)) == 12, f"{len(uids) - len(set(uids))} copies sent twice"
    finally:
        slow.stop()


def test_a_worker_keeps_its_claim_while_a_photo_takes_longer_than_the_lease(conninfo, tmp_path):
    """A face stage slower than the lease: the worker renews its claim as it goes, so no other
    node takes the job over (and de-identifies it a second time); the result is recorded."""
    entered, go_on = threading.Event(), threading.Event()

    def slow_stage(ds, settings, key, store) -> PixelOutcome:
        entered.set()
        go_on.wait(20)
        return PixelOutcome(ds, frozenset())

    service = slow_node(conninfo, tmp_path, slow_stage)
    other = PostgresStore(conninfo, node="other", lease_s=300)
    try:
        service.store.lease_s = 0.6
        assert send(service.settings.ingress.port, tiny_photo(0)) == [0]
        assert entered.wait(20)
        for _ in range(6):  # three leases' time, looking for a claim to take over
            time.sleep(0.3)
            assert other.claim_job() is None
        go_on.set()
        wait_until(lambda: other.counts().get("jobs.done") == 1, 20, "the job done by its first node")
    finally:
        go_on.set()
        other.close()
        service.stop()
