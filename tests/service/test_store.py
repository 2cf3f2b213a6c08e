"""The state store's transactions: the queue's order, exactly-once bookkeeping, quarantine and release,
on both backends (SQLite, and a real PostgreSQL server where one is installed)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

import numpy as np
import pytest

from dicom_anon.service.store import (
    DONE,
    BusyError,
    Completion,
    NewJob,
    NewOutput,
    NewQuarantine,
    StateStore,
)
from dicom_anon.service.store_sql import SCHEMA_VERSION
from dicom_anon.service.store_sqlite import SqliteStore


@pytest.fixture(params=["sqlite", "postgresql"])
def reopen(request, tmp_path) -> Callable[[], StateStore]:
    """Opens a store on one database, again and again (as a restarted service does); closed after."""
    opened: list[StateStore] = []
    if request.param == "sqlite":
        path = tmp_path / "state.sqlite"

        def make() -> StateStore:
            return SqliteStore(path)
    else:
        from dicom_anon.service.store_postgres import PostgresStore

        conninfo = request.getfixturevalue("postgres").database()
        PostgresStore(conninfo, node="test", lease_s=300, check_schema=False).upgrade()

        def make() -> StateStore:
            return PostgresStore(conninfo, node="test", lease_s=300)

    def open_one() -> StateStore:
        opened.append(make())
        return opened[-1]

    yield open_one
    for s in opened:
        s.close()


@pytest.fixture
def store(reopen) -> StateStore:
    return reopen()


def job(n: int, digest: str = "d") -> NewJob:
    return NewJob(
        "CLINIC",
        "127.0.0.1",
        "1.2.3",
        f"key{n}",
        f"{digest}{n}",
        "1.2.840.10008.1.2.1",
        100,
        f"spool/{n}.dcm",
    )


def output(
    route: str = "photos", destinations: tuple[str, ...] = ("teaching",), path: str | None = None
) -> NewOutput:
    return NewOutput(
        route, path or f"outbox/{route}.dcm", "1.2.3", "2.25.1", "1.2.840.10008.1.2.1", "ANONX", destinations
    )


def refused_delivery(store: StateStore) -> tuple[int, Completion]:
    """A job's one delivery, refused for good by its destination: (quarantine id, completion)."""
    job_id, _ = store.add_job(job(1))
    store.claim_job()
    (d,), _, _ = store.finish_routing(job_id, [output()], [])
    return store.quarantine_delivery(
        d, NewQuarantine("egress", "refused-0xA900", "no", "q/1", "photos", "teaching")
    )


def test_same_instance_twice_is_one_job(store):
    first, new = store.add_job(job(1))
    again, new_again = store.add_job(job(1))
    assert new and not new_again and first == again
    other, new_other = store.add_job(job(1, digest="changed"))
    assert new_other and other != first  # same UID, different bytes: a correction, a new job


def test_jobs_are_claimed_oldest_first_once(store):
    ids = [store.add_job(job(n))[0] for n in range(3)]
    claimed = [store.claim_job().id for _ in range(3)]
    assert claimed == ids
    assert store.claim_job() is None


def test_recover_puts_claimed_jobs_back(store):
    store.add_job(job(1))
    assert store.claim_job() is not None
    assert store.claim_job() is None
    assert store.recover() == 1
    assert store.claim_job() is not None


def test_each_recovery_counts_a_try_for_the_job_it_puts_back(store):
    """An instance that stops the process each time it is processed must not be taken up first
    at every restart for ever: every restart that finds it mid-processing counts a try."""
    store.add_job(job(1))
    for tries in range(1, 4):
        assert store.claim_job().attempts == tries - 1
        assert store.recover() == 1
    assert store.claim_job().attempts == 3


def test_routing_commits_outputs_deliveries_and_quarantine_together(store):
    job_id, _ = store.add_job(job(1))
    store.claim_job()
    quarantine = NewQuarantine("deid", "burned-in-annotation", "burned in", "quarantine/x", "other")
    deliveries, quarantined, done = store.finish_routing(
        job_id, [output(destinations=("a", "b"))], [quarantine]
    )
    assert len(deliveries) == 2 and len(quarantined) == 1 and not done
    assert [d.id for d in store.due_deliveries("a", time.time())] == [deliveries[0]]
    assert store.counts()["quarantine.held"] == 1


def test_nothing_to_deliver_finishes_the_job(store):
    job_id, _ = store.add_job(job(1))
    store.claim_job()
    *_, done = store.finish_routing(job_id, [], [])
    assert done and store.counts()["jobs.done"] == 1


def test_delivery_completion_frees_outbox_then_spool(store):
    job_id, _ = store.add_job(job(1))
    store.claim_job()
    (a, b), _, _ = store.finish_routing(job_id, [output(destinations=("a", "b"))], [])
    first = store.mark_delivered(a, 0x0000)
    assert first.output_path is None and first.spool_path is None and not first.job_done
    second = store.mark_delivered(b, 0xB000)
    assert (
        second.output_path == "outbox/photos.dcm" and second.spool_path == "spool/1.dcm" and second.job_done
    )
    assert store.counts()["jobs.done"] == 1
    assert len(store.latencies()) == 2


def test_a_finished_outputs_file_stays_named_until_it_is_removed(store):
    # A sender killed after recording the delivery and before removing the file leaves a row that
    # still names it, so a purge finds it (on a shared root no start-up sweeps another node's folder).
    job_id, _ = store.add_job(job(1))
    store.claim_job()
    (d,), _, _ = store.finish_routing(job_id, [output()], [])
    assert store.finished_outputs() == []
    completion = store.mark_delivered(d, 0x0000)
    assert store.finished_outputs() == [completion.output_path] == ["outbox/photos.dcm"]
    assert completion.output_path in store.output_paths()
    store.forget_output(completion.output_path)
    assert store.finished_outputs() == [] and store.output_paths() == set()


def test_a_released_copy_keeps_its_path_when_the_old_one_is_forgotten(store):
    qid, completion = refused_delivery(store)
    store.release(qid, "officer", completion.output_path)  # put back where it was, before the forget
    store.forget_output(completion.output_path)
    assert store.output_paths() == {completion.output_path} and store.finished_outputs() == []


def test_retry_at_hides_a_delivery_until_then(store):
    job_id, _ = store.add_job(job(1))
    store.claim_job()
    (d,), _, _ = store.finish_routing(job_id, [output()], [])
    attempts = store.retry_at(d, time.time() + 60, "connection refused")
    assert attempts == 1
    assert store.due_deliveries("teaching", time.time()) == []
    assert store.due_deliveries("teaching", time.time() + 61)[0].attempts == 1
    assert store.next_due("teaching") > time.time()


def test_quarantined_delivery_can_be_released_to_try_again(store):
    qid, completion = refused_delivery(store)
    assert completion.job_done and completion.output_path == "outbox/photos.dcm"
    store.release(qid, "officer", "outbox/again.dcm")
    [again] = store.due_deliveries("teaching", time.time())
    assert again.path == "outbox/again.dcm" and again.attempts == 0
    assert (
        store.quarantine_row(qid).state == "released" and store.quarantine_row(qid).resolved_by == "officer"
    )
    with pytest.raises(KeyError):
        store.release(qid, "officer", "x")


def test_released_pipeline_quarantine_reprocesses_only_that_route(store):
    job_id, _ = store.add_job(job(1))
    store.claim_job()
    _, (qid,), done = store.finish_routing(job_id, [], [NewQuarantine("deid", "c", "r", "q/1", "photos")])
    assert done
    store.forget_spool(job_id)
    store.release(qid, "officer", "spool/restored.dcm")
    again = store.claim_job()
    assert again.id == job_id and again.route_only == "photos" and again.spool_path == "spool/restored.dcm"


def test_release_waits_while_the_job_is_being_processed(store):
    job_id, _ = store.add_job(job(1))
    store.claim_job()
    held = [NewQuarantine("deid", "c", "r", "q/1", "photos"), NewQuarantine("deid", "c", "r", "q/2", "derm")]
    _, (first, second), _ = store.finish_routing(job_id, [], held)
    store.release(first, "officer", "spool/1.dcm")
    assert store.claim_job().id == job_id  # the worker holds it again
    with pytest.raises(BusyError):
        store.release(second, "officer", "spool/1.dcm")
    assert store.quarantine_row(second).state == "held"


def test_delete_marks_and_refuses_twice(store):
    job_id, _ = store.add_job(job(1))
    store.claim_job()
    _, (qid,), _ = store.finish_routing(job_id, [], [NewQuarantine("route", "no-route", "r", "q/1")])
    store.delete_quarantined(qid, "officer")
    assert store.quarantine_row(qid).state == "deleted"
    with pytest.raises(KeyError):
        store.delete_quarantined(qid, "officer")


def test_spool_bytes_counts_only_originals_still_held(store):
    a, _ = store.add_job(job(1))
    store.add_job(job(2))
    assert store.spool_bytes() == 200
    store.forget_spool(a)
    assert store.spool_bytes() == 100


def test_expired_spool_lists_done_jobs_only(store):
    a, _ = store.add_job(job(1))
    store.add_job(job(2))
    store.claim_job()
    store.finish_routing(a, [], [])
    assert [j for j, _ in store.expired_spool(time.time() + 1)] == [a]
    assert store.counts()["jobs.received"] == 1 and store.counts()["jobs." + DONE] == 1


def test_identity_memory_keeps_the_first_surrogate_and_survives_a_restart(reopen):
    s = reopen()
    assert s.surrogate_for("ANONP1") is None
    s.remember_surrogate("ANONP1", "openpeople-P002")
    s.remember_surrogate("ANONP1", "openpeople-P007")  # a later photo had to use someone else
    s.remember_surrogate("ANONP2", "openpeople-P007")
    s.close()
    again = reopen()
    assert again.surrogate_for("ANONP1") == "openpeople-P002"
    assert again.surrogate_for("ANONP2") == "openpeople-P007"
    again.close()


def test_generated_identity_memory_keeps_index_and_embedding_across_a_restart(reopen):
    s = reopen()
    assert s.generated_for("ANONP1") is None
    assert s.generated_embeddings(excluding="ANONP1").shape == (0, 128)
    first, later = np.linspace(-1, 1, 128, dtype=np.float32), np.ones(128, np.float32)
    s.remember_generated("ANONP1", 3, "L35a15b18F", first)
    s.remember_generated("ANONP1", 9, "", later)  # a later photo's draw does not move it
    s.remember_generated("ANONP2", 0, "", later)
    s.close()
    again = reopen()
    assert again.generated_for("ANONP1") == (3, "L35a15b18F") and again.generated_for("ANONP2") == (0, "")
    assert np.array_equal(again.generated_embeddings(excluding="ANONP2"), first[None])
    assert again.generated_embeddings(excluding="nobody").shape == (2, 128)


def test_the_variant_and_oval_that_passed_are_remembered_beside_the_person(reopen):
    s = reopen()
    assert s.last_passed("ANONP1") == (0, 0.0)
    s.remember_passed("ANONP1", 1.25, 4)  # nobody remembered yet: nothing to attach it to
    assert s.last_passed("ANONP1") == (0, 0.0)
    s.remember_generated("ANONP1", 3, "L35a15b18F", np.ones(128, np.float32))
    s.remember_passed("ANONP1", 1.25, 4)
    s.remember_passed("ANONP1", 1.0, 14)  # the last that passed counts
    s.remember_passed("ANONP1", 1.5)  # the person itself passed: its variant is kept for next time
    s.remember_generated("ANONP2", 0, "", np.ones(128, np.float32))
    s.close()
    again = reopen()
    assert again.last_passed("ANONP1") == (14, 1.5) and again.last_passed("ANONP2") == (0, 0.0)
    assert again.generated_for("ANONP1") == (3, "L35a15b18F")


def test_a_schema_2_store_gains_the_steering_variant_and_oval_columns_and_keeps_its_people(tmp_path):
    path = tmp_path / "state.sqlite"
    s = SqliteStore(path)
    s.remember_generated("ANONP1", 3, "", np.ones(128, np.float32))
    s.close()
    with sqlite3.connect(path) as db:  # as schema 2 left it
        db.execute("ALTER TABLE generated_identities DROP COLUMN steer")
        db.execute("ALTER TABLE generated_identities DROP COLUMN variant")
        db.execute("ALTER TABLE generated_identities DROP COLUMN oval")
        db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    again = SqliteStore(path)
    assert again.generated_for("ANONP1") == (3, "") and again.last_passed("ANONP1") == (0, 0.0)
    again.remember_generated("ANONP2", 5, "M", np.ones(128, np.float32))
    again.remember_passed("ANONP2", 1.25, 2)
    assert again.generated_for("ANONP2") == (5, "M") and again.last_passed("ANONP2") == (2, 1.25)
    again.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
            str(SCHEMA_VERSION),
        )
