"""The service's memory over many batches: one ``dicom-anon serve``, batch after batch, RSS after each.

    .venv/bin/python benchmarks/bench_memory.py [--batches 10] [--count 500] [--photos 20]
        [--faces pool|generated] [--keep DIR]

Issue 22 asks for memory bounded over 10 batches. One service runs throughout (the example settings,
photo routes on the headers-only ``basic`` profile as in bench_service.py; with ``--faces pool`` the
settings as they are, so every photo goes through the face pipeline; with ``--faces generated`` the
photo route on the example's ``teaching-photo`` profile with generated identities), forwarding to a dcmtk
storescp. Each batch is ``--count`` small instances (1.6 kB) and ``--photos`` photos (the generated
face photo, 835 kB), each with fresh UIDs and one of a fresh set of patients, sent by storescu on one
association and waited for until the store has finished every job. After each batch it prints the
resident memory (VmRSS) of the service's own process and of its child processes together, the
service's peak (VmHWM), its threads and open files, and what its data dir holds on disk. Then the
growth per batch from the end of the second batch to the last (the first pays for imports and
compiled models) and over the second half (bounded caches, such as the prepared new faces, fill
over the first few dozen patients).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "service"))

from bench_service import photo_instances  # noqa: E402 - beside this script
from factories import write  # noqa: E402
from peers import EXAMPLE_CONFIG, dcmtk, free_port, start_service, start_storescp, storescu, tiny_photo  # noqa: E402

from dicom_anon.service.store_sqlite import SqliteStore  # noqa: E402

COLUMNS = (("batch", 5), ("seconds", 8), ("service MiB", 12), ("children MiB", 13), ("peak MiB", 9),
           ("threads", 8), ("files", 6), ("data dir MiB", 13))  # fmt: skip


def status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (KiB) and Threads of one process, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            fields[key] = int(value.split()[0])
    return fields


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def disk_kib(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) // 1024


def batch_files(folder: Path, batch: int, count: int, photos: int) -> list[Path]:
    """``count`` small instances and ``photos`` face photos, fresh UIDs, patients new to this batch."""
    files = photo_instances(folder / "photos", photos, patients=f"B{batch:02d}F") if photos else []
    (folder / "small").mkdir(parents=True)
    for i in range(count):
        ds = tiny_photo(i, patient_id=f"B{batch:02d}P{i % 50:04d}")
        ds.PatientName = f"Doe^Jane{batch}x{i % 50}"
        files.append(write(ds, folder / "small" / f"s{i:05d}.dcm"))
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--count", type=int, default=500, help="small instances per batch")
    parser.add_argument("--photos", type=int, default=20, help="835 kB face photos per batch")
    parser.add_argument(
        "--faces",
        choices=("pool", "generated"),
        help="photos through the face pipeline, new faces from the pool or generated (slow)",
    )
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temp dir)")
    args = parser.parse_args()
    if dcmtk("storescu") is None:
        sys.exit("bench_memory: dcmtk is not installed (apt-get install dcmtk)")
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    archive_port, port = free_port(), free_port()
    archive = start_storescp(work, archive_port, work / "archive").wait_ready()
    data = work / "data"
    config = EXAMPLE_CONFIG
    if args.faces == "generated":
        config = work / "generated.yaml"
        text = EXAMPLE_CONFIG.read_text().replace("identity: pool ", "identity: generated ")
        config.write_text(text.replace("profile: orthodontic", "profile: teaching-photo"))
    service = start_service(
        work, port, [f"teaching=TEACHING@127.0.0.1:{archive_port}"], config=config,
        data_dir=data, headers_only=not args.faces,
    ).wait_ready(60)  # fmt: skip
    store = SqliteStore(data / "state" / "state.sqlite")
    route = f"the face pipeline, {args.faces} identities" if args.faces else "headers-only (basic)"
    print(f"{args.batches} batches of {args.count} small instances and {args.photos} photos; photos: {route}")
    print(" ".join(f"{h:>{w}}" for h, w in COLUMNS))
    rows = []
    sent = 0
    try:
        for b in range(args.batches):
            files = batch_files(work / f"batch{b}", b, args.count, args.photos)
            started = time.perf_counter()
            result = storescu(port, files, timeout=3600)
            if result.returncode != 0:
                sys.exit(f"bench_memory: storescu failed: {result.stderr[-500:]}")
            sent += len(files)
            deadline = time.monotonic() + 3600
            while store.counts().get("jobs.done", 0) < sent:
                if time.monotonic() > deadline or service.popen.poll() is not None:
                    sys.exit(f"bench_memory: the service did not finish batch {b + 1}; see {service.log}")
                time.sleep(0.05)
            seconds = time.perf_counter() - started
            shutil.rmtree(work / f"batch{b}")
            shutil.rmtree(work / "archive")
            (work / "archive").mkdir()
            own = status(service.pid)
            kids = sum(status(c)["VmRSS"] for c in children(service.pid))
            open_files = len(os.listdir(f"/proc/{service.pid}/fd"))
            mib = (own["VmRSS"] / 1024, kids / 1024, own["VmHWM"] / 1024)
            row = (*mib, own["Threads"], open_files, disk_kib(data) / 1024)
            rows.append(row)
            cells = (b + 1, round(seconds, 1), *(round(v, 1) for v in row))
            print(" ".join(f"{v:>{w}}" for v, (_, w) in zip(cells, COLUMNS, strict=True)))
        if len(rows) >= 4:
            for label, first in (("batch 2", 1), (f"batch {len(rows) // 2 + 1}", len(rows) // 2)):
                per = len(rows) - 1 - first
                grow = [(rows[-1][k] - rows[first][k]) / per for k in (0, 1)]
                print(
                    f"growth per batch from {label} to {len(rows)}: service {grow[0]:+.2f} MiB,"
                    f" children {grow[1]:+.2f} MiB"
                )
        counts = store.counts()
        held = counts.get("quarantine.held", 0)
        print(f"jobs finished {counts.get('jobs.done', 0)} of {sent}; held in quarantine {held}")
    finally:
        store.close()
        service.stop()
        archive.stop()
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
