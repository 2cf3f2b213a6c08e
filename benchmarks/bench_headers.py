"""Header de-identification throughput: dicom-anon against dicognito on the same 1,000 files.

Usage: .venv/bin/python benchmarks/bench_headers.py [--count 1000] [--workdir DIR] [--keep]

Builds a corpus from the shared generated *noburn* photos (every copy with its own
patient, study, series and SOP Instance UIDs, so pseudonym and UID caches cannot
help), then runs each tool in its own child process so that imports and peak memory
are its own: read the file, de-identify, write the result (atomic write with fsync,
the same writer for both). Prints instances per second side by side, the ratio, and
each run's peak RSS.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ROOT.parent / "shared" / "testdata" / "dicom" / "generated"
PATIENTS = 200  # 1,000 instances over 200 patients: several studies per patient, as in a clinic


def build_corpus(outdir: Path, count: int) -> list[Path]:
    """Write ``count`` copies of the noburn files, each a distinct instance of one of PATIENTS patients."""
    sources = sorted(GENERATED.glob("*_noburn_*.dcm"))
    if not sources:
        sys.exit(f"bench_headers: no *_noburn_*.dcm in {GENERATED}")
    templates = [pydicom.dcmread(p) for p in sources]
    outdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        ds = templates[i % len(templates)]
        patient = i % PATIENTS
        ds.PatientID = f"BENCH{patient:05d}"
        ds.PatientName = f"Bench^Patient{patient:05d}"
        ds.StudyInstanceUID = generate_uid(entropy_srcs=["bench-study", str(patient), str(i // PATIENTS)])
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=["bench-series", str(i)])
        ds.SOPInstanceUID = generate_uid(entropy_srcs=["bench-sop", str(i)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = outdir / f"{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def run_ours(files: list[Path], outdir: Path) -> int:
    """What `dicom-anon deid` does per file: read, check, de-identify with the default profile, write."""
    from dicom_anon.batch import deid_file
    from dicom_anon.headers.engine import Profile
    from dicom_anon.headers.pseudonyms import SiteKey

    key = SiteKey(b"benchmark-secret-0123456789abcdef")
    profile = Profile(options=frozenset())
    refused = 0
    for path in files:
        outcome = deid_file(path, key, profile, outdir)
        if not outcome.ok:
            refused += 1
            print(f"bench_headers: {path.name}: {outcome.refused}", file=sys.stderr)
    return refused


def run_dicognito(files: list[Path], outdir: Path) -> int:
    """dicognito's documented API on the same files, written with the same atomic writer."""
    from dicognito.anonymizer import Anonymizer

    from dicom_anon.dicomio import write_instance

    anonymizer = Anonymizer(seed="benchmark")
    for path in files:
        ds = pydicom.dcmread(path)
        anonymizer.anonymize(ds)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        write_instance(buf.getvalue(), outdir / f"{ds.SOPInstanceUID}.dcm")
    return 0


RUNNERS = {"dicom-anon": run_ours, "dicognito": run_dicognito}


def child(tool: str, corpus: Path, outdir: Path) -> None:
    """One tool's timed run; prints a JSON line for the parent."""
    files = sorted(corpus.glob("*.dcm"))
    start = time.perf_counter()
    refused = RUNNERS[tool](files, outdir)
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    print(json.dumps({"tool": tool, "n": len(files), "refused": refused, "s": seconds, "rss": peak_mib}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--workdir", type=Path, help="where the corpus and outputs go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir with the corpus and outputs")
    parser.add_argument("--child", choices=sorted(RUNNERS), help=argparse.SUPPRESS)
    args = parser.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-headers-"))
    corpus = work / "corpus"
    if args.child:
        child(args.child, corpus, work / f"out-{args.child}")
        return

    try:
        t0 = time.perf_counter()
        if corpus.exists():
            shutil.rmtree(corpus)
        build_corpus(corpus, args.count)
        size_mib = sum(p.stat().st_size for p in corpus.iterdir()) / 2**20
        print(
            f"corpus: {args.count} instances, {size_mib:.0f} MiB, built in {time.perf_counter() - t0:.1f} s"
        )
        results = {}
        for tool in RUNNERS:
            shutil.rmtree(work / f"out-{tool}", ignore_errors=True)
            cmd = [sys.executable, __file__, "--workdir", str(work), "--child", tool]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                sys.exit(f"bench_headers: {tool} failed:\n{done.stderr[-2000:]}")
            results[tool] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{'tool':<12}{'instances':>10}{'refused':>9}{'seconds':>10}{'inst/s':>9}{'peak RSS MiB':>14}")
        for r in results.values():
            rate = r["n"] / r["s"]
            print(f"{r['tool']:<12}{r['n']:>10}{r['refused']:>9}{r['s']:>10.1f}{rate:>9.1f}{r['rss']:>14.0f}")
        ours, theirs = results["dicom-anon"], results["dicognito"]
        print(f"ratio dicom-anon / dicognito (instances/s): {theirs['s'] / ours['s']:.2f}")
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
