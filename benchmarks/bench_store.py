"""The state store's own cost per instance, on SQLite and on PostgreSQL, with one and two worker
processes: what the queue adds before the pipeline's seconds (issue 25).

Three steps, each timed on its own: receipt (``add_job``, durable, as ingress acknowledges),
work (``claim_job`` + ``finish_routing`` with one delivery, by 1 or 2 processes at once), and
sending (``due_deliveries`` + ``mark_delivered``). PostgreSQL is a private server started here
(as the tests start it: tests/service/pgserver.py) with fsync on, over its unix socket; SQLite
is a file in a temporary folder. Run on a quiet machine:

    .venv/bin/python benchmarks/bench_store.py --jobs 2000
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "service"))
from pgserver import PostgresServer  # the tests' private server, not a copy

from dicom_anon.service.store import NewJob, NewOutput, StateStore
from dicom_anon.service.store_postgres import PostgresStore
from dicom_anon.service.store_sqlite import SqliteStore


def opener(backend: str, where: str) -> Callable[[str], StateStore]:
    if backend == "sqlite":
        return lambda node: SqliteStore(Path(where), node=node)
    return lambda node: PostgresStore(where, node=node, lease_s=300)


def new_job(n: int) -> NewJob:
    return NewJob(
        "CLINIC", "127.0.0.1", "1.2.3", f"key{n}", f"d{n}", "1.2.840.10008.1.2.1", 100, f"spool/{n}.dcm"
    )


def work(backend: str, where: str, node: str, start: Any, done: Any) -> None:
    """Claim and route jobs until none is left; put the number done."""
    store = opener(backend, where)(node)
    out = NewOutput(
        "photos", "outbox/x.dcm", "1.2.3", "2.25.1", "1.2.840.10008.1.2.1", "ANONX", ("teaching",)
    )
    start.wait()
    n = 0
    while (job := store.claim_job()) is not None:
        store.finish_routing(job.id, [out], [])
        n += 1
    store.close()
    done.put(n)


def run(backend: str, where: str, jobs: int, workers: int) -> dict[str, float]:
    store = opener(backend, where)("ingress")
    started = time.perf_counter()
    for n in range(jobs):
        store.add_job(new_job(n))
    receipt = time.perf_counter() - started

    ctx = multiprocessing.get_context("spawn")
    start, done = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=work, args=(backend, where, f"worker{i}", start, done)) for i in range(workers)
    ]
    for p in procs:
        p.start()
    time.sleep(3.0)  # every process has imported and opened its store
    started = time.perf_counter()
    start.set()
    routed = sum(done.get(timeout=600) for _ in procs)
    working = time.perf_counter() - started
    for p in procs:
        p.join()
    assert routed == jobs, (routed, jobs)

    started = time.perf_counter()
    while batch := store.due_deliveries("teaching", time.time()):
        for d in batch:
            store.mark_delivered(d.id, 0x0000)
    sending = time.perf_counter() - started
    assert store.counts() == {"jobs.done": jobs, "deliveries.delivered": jobs}
    store.close()
    return {"receipt": jobs / receipt, "work": jobs / working, "sending": jobs / sending}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    args = parser.parse_args()
    server = PostgresServer(fsync=True)
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
            for workers in (1, 2):
                sqlite = str(Path(tmp) / f"state{workers}.sqlite")
                rows.append(("sqlite", workers, run("sqlite", sqlite, args.jobs, workers)))
                dsn = server.database()
                PostgresStore(dsn, node="setup", lease_s=300, check_schema=False).upgrade()
                rows.append(("postgresql", workers, run("postgresql", dsn, args.jobs, workers)))
    finally:
        server.stop()
    print(
        f"{args.jobs} instances; per second (receipt: add_job durable; work: claim + finish_routing; sending)"
    )
    print(f"{'backend':<11} {'workers':>7} {'receipt':>9} {'work':>9} {'sending':>9}")
    for backend, workers, r in rows:
        print(f"{backend:<11} {workers:>7} {r['receipt']:>9.0f} {r['work']:>9.0f} {r['sending']:>9.0f}")


if __name__ == "__main__":
    main()
