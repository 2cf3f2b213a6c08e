"""Throughput of several nodes on one PostgreSQL store: two ingress nodes with one worker, then
with two, in the same run, and where the time goes.

    .venv/bin/python benchmarks/bench_multinode.py [--count 500] [--rounds 2] [--keep DIR]

The set-up of tests/service/test_multinode.py without the kills: a private PostgreSQL (Debian's
server, started here on a unix socket, ``fsync=off`` as in the tests), two ingress nodes and two
workers as ``dicom-anon serve`` processes (one pipeline thread each, headers-only ``basic``
route, audit fsynced as in production), one shared spool folder, a dcmtk storescp as the archive.
Each round sends ``--count`` fresh instances (1 kB) from two storescu processes (half to each
ingress node) with one worker running, and as many again with both, the order alternating from
round to round. A phase is timed from the start of the send until the store has every delivery;
the CPU seconds each part used in it (read from /proc: each node with its child processes, the
PostgreSQL server, the archive, storescu) say where the time goes.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "service"))

from cluster import Cluster  # noqa: E402
from peers import dcmtk, dcmtk_env, free_port, start_storescp, write_photos  # noqa: E402
from pgserver import PostgresServer, tool  # noqa: E402

INGRESS, WORKERS = ("ingress-a", "ingress-b"), ("worker-1", "worker-2")
TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int, *, descendants: bool = True) -> float:
    """CPU seconds (user and system) of a process, and of its descendants alive now."""
    total = 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / TICK
        if descendants:
            for task in Path(f"/proc/{pid}/task").iterdir():
                for child in (task / "children").read_text().split():
                    total += cpu_s(int(child))
    except (FileNotFoundError, ProcessLookupError):
        pass
    return total


def postmaster(server: PostgresServer) -> int:
    return int((server.data / "postmaster.pid").read_text().split()[0])


def parts(cluster: Cluster, server: PostgresServer, archive_pid: int) -> dict[str, float]:
    """CPU seconds so far of each part that runs all the time."""
    running = {name: p.pid for name, p in cluster.procs.items() if p.popen.poll() is None}
    workers = [running[n] for n in WORKERS if n in running]
    own = sum(cpu_s(pid, descendants=False) for pid in workers)
    return {
        "ingress": sum(cpu_s(running[n]) for n in INGRESS if n in running),
        # A worker's own process (claims, outbox, audit, sender) and its de-identification children.
        "worker": own,
        "deid-children": sum(cpu_s(pid) for pid in workers) - own,
        "postgresql": cpu_s(postmaster(server)),
        "archive": cpu_s(archive_pid),
    }


def delivered(conninfo: str) -> int:
    import psycopg

    with psycopg.connect(conninfo) as db:
        return db.execute("SELECT COUNT(*) FROM deliveries WHERE state = 'delivered'").fetchone()[0]


def phase(cluster: Cluster, server: PostgresServer, archive_pid: int, photos: list[Path], work: Path) -> dict:
    """Send ``photos`` (half to each ingress node) and wait until every one is delivered."""
    target = delivered(cluster.conninfo) + len(photos)
    before = parts(cluster, server, archive_pid)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    senders = []
    for i, name in enumerate(INGRESS):
        args = [dcmtk("storescu"), "-xy", "-aet", "CLINIC", "-aec", "DICOM_ANON", "127.0.0.1"]
        args += [str(cluster.ports[name]), *map(str, photos[i::2])]
        log = (work / f"storescu-{name}.log").open("wb")
        senders.append(subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=dcmtk_env()))
    for proc in senders:
        if proc.wait(timeout=600) != 0:
            sys.exit(f"bench_multinode: storescu failed (status {proc.returncode}); see {work}")
    acked = time.monotonic() - start
    while delivered(cluster.conninfo) < target:
        if time.monotonic() - start > 600:
            sys.exit(f"bench_multinode: not everything was delivered within 600 s; see {work}")
        time.sleep(0.05)
    done = time.monotonic() - start
    after = parts(cluster, server, archive_pid)
    used = {k: after[k] - before[k] for k in before}
    now = resource.getrusage(resource.RUSAGE_CHILDREN)
    used["storescu"] = now.ru_utime + now.ru_stime - children.ru_utime - children.ru_stime
    return {"acked_s": acked, "done_s": done, "cpu": used}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=500, help="instances per phase")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="keep the logs, settings and trails here")
    args = parser.parse_args()
    if tool("initdb") is None or tool("pg_ctl") is None:
        sys.exit("bench_multinode: PostgreSQL's server is not installed (apt-get install postgresql)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        sys.exit("bench_multinode: psycopg is not installed (pip install 'dicom-anon[postgresql]')")
    if dcmtk("storescu") is None:
        sys.exit("bench_multinode: dcmtk is not installed (apt-get install dcmtk)")
    work = Path(tempfile.mkdtemp(prefix="bench-multinode-"))
    server = PostgresServer()
    cluster = Cluster(work, server.database(), free_port(), lease_s=300, audit_fsync=True)
    archive = start_storescp(work, cluster.archive_port, work / "archive").wait_ready()
    results: dict[int, list[dict]] = {1: [], 2: []}
    try:
        cluster.upgrade()
        for name in (*INGRESS, *WORKERS):
            cluster.start(name, "worker" if name in WORKERS else "ingress")
        cluster.wait_started(*INGRESS, *WORKERS)
        for r in range(args.rounds):
            for workers in (1, 2) if r % 2 == 0 else (2, 1):
                if workers == 1:
                    cluster.procs["worker-2"].stop()
                elif cluster.procs["worker-2"].popen.poll() is not None:
                    cluster.start("worker-2", "worker")
                    cluster.wait_started("worker-2")
                photos = write_photos(work / f"in-{r}-{workers}", args.count)
                result = phase(cluster, server, archive.pid, photos, work)
                results[workers].append(result)
                n, label = args.count, "2 workers" if workers == 2 else "1 worker "
                print(
                    f"round {r + 1}, {label}: {n} instances acknowledged"
                    f" in {result['acked_s']:.1f} s ({n / result['acked_s']:.0f}/s), all forwarded in"
                    f" {result['done_s']:.1f} s ({n / result['done_s']:.0f}/s)",
                    flush=True,
                )
                shutil.rmtree(work / f"in-{r}-{workers}")
    finally:
        cluster.stop()
        archive.stop()
        server.stop()
        if args.keep:
            shutil.copytree(work, args.keep, dirs_exist_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    report(results, args.count)


def report(results: dict[int, list[dict]], count: int) -> None:
    rate = {w: statistics.median(count / r["done_s"] for r in rs) for w, rs in results.items()}
    per_round = [one["done_s"] / two["done_s"] for one, two in zip(results[1], results[2], strict=True)]
    print(
        f"two workers against one, end to end: {rate[2] / rate[1]:.2f}x (median {rate[2]:.0f} against"
        f" {rate[1]:.0f} instances/s; per round {', '.join(f'{x:.2f}' for x in per_round)})"
    )
    for workers, rs in results.items():
        cpu = {k: statistics.median(r["cpu"][k] for r in rs) * 1000 / count for k in rs[0]["cpu"]}
        wall = statistics.median(r["done_s"] for r in rs) * 1000 / count
        spent = ", ".join(f"{k} {v:.1f}" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1]))
        label = "2 workers" if workers == 2 else "1 worker"
        print(
            f"where the time goes, {label}: {wall:.1f} ms wall per instance;"
            f" CPU ms per instance: {spent} (sum {sum(cpu.values()):.1f}, on {os.cpu_count()} cores)"
        )


if __name__ == "__main__":
    main()
