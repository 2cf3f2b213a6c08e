"""End-to-end throughput and latency of the service, beside the ceiling of the same network path.

    .venv/bin/python benchmarks/bench_service.py [--count 1000] [--keep DIR]

1. Ceiling: dcmtk storescu sends N small instances straight to dcmtk storescp.
2. Service: the same storescu sends the same files to ``dicom-anon serve`` (the example
   settings with photo routes on the headers-only ``basic`` profile: the instances are tiny
   synthetic photos without a face, which the face pipeline would rightly quarantine; its own
   speed is benchmarks/bench_faces.py. Durable ack, audit fsynced), which forwards them to
   storescp. Measured from the start of the send until the state store has every delivery.

Prints instances/s for both and their ratio, the time until storescu had every
acknowledgement, latency from receipt to forwarded (p50, p99, from the state store's
timestamps), and the service's peak resident memory (VmHWM). Everything runs on
127.0.0.1 and is stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from io import BytesIO
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicom_anon.service.store import StateStore

ROOT = Path(__file__).resolve().parents[1]
VL_PHOTO = "1.2.840.10008.5.1.4.1.1.77.1.4"
# dcmtk leaves Nagle's algorithm on unless told otherwise: 40 ms per instance on loopback.
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def dcmtk(tool: str) -> str:
    """dcmtk's binary, not pynetdicom's same-named script next to this Python."""
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        path = Path(folder) / tool
        if path.is_file() and path.parent != Path(sys.executable).parent:
            return str(path)
    sys.exit(f"bench_service: dcmtk's {tool} is not installed (apt-get install dcmtk)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"bench_service: a peer exited early (status {proc.returncode})")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"bench_service: nothing listens on port {port} after {timeout} s")


def make_instances(folder: Path, count: int) -> list[Path]:
    """Small VL Photographic instances (16x16 RGB) with fake PHI, as a clinic would send them."""
    folder.mkdir(parents=True)
    paths = []
    for i in range(count):
        ds = Dataset()
        ds.SOPClassUID = VL_PHOTO
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID = generate_uid()
        ds.SeriesInstanceUID = generate_uid()
        ds.PatientName = f"Doe^Jane{i % 50}"
        ds.PatientID = f"MRN{i % 50:08d}"
        ds.PatientBirthDate = "19780314"
        ds.StudyDate = "20240517"
        ds.StudyDescription = "Orthodontic photo"
        ds.Modality = "XC"
        ds.BurnedInAnnotation = "NO"
        ds.Rows = ds.Columns = 16
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = bytes((i + k) % 256 for k in range(16 * 16 * 3))
        ds["PixelData"].VR = "OB"
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        buf = BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        path = folder / f"{i:05d}.dcm"
        path.write_bytes(buf.getvalue())
        paths.append(path)
    return paths


def storescp(folder: Path, port: int, log: Path) -> subprocess.Popen:
    folder.mkdir(parents=True, exist_ok=True)
    args = [
        dcmtk("storescp"),
        "-aet",
        "TEACHING",
        "+xa",
        "-od",
        str(folder),
        "-fe",
        ".dcm",
        "-dhl",
        str(port),
    ]
    proc = subprocess.Popen(args, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=DCMTK_ENV)
    wait_port(port, proc)
    return proc


def storescu(port: int, aec: str, files: list[Path]) -> float:
    """Send every file on one association; seconds until the last acknowledgement."""
    args = [dcmtk("storescu"), "-xy", "-aet", "CLINIC", "-aec", aec, "127.0.0.1", str(port), *map(str, files)]
    started = time.perf_counter()
    result = subprocess.run(args, capture_output=True, text=True, env=DCMTK_ENV, check=False)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"bench_service: storescu failed: {result.stderr[-500:]}")
    return elapsed


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="instances to send (default 1000)")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temp dir)")
    parser.add_argument("--config", type=Path, default=ROOT / "config" / "dicom-anon.yaml")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-service-"))
    work.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen] = []
    try:
        files = make_instances(work / "in", args.count)
        size = sum(p.stat().st_size for p in files) / len(files)
        config = work / "headers-only.yaml"
        config.write_text(args.config.read_text().replace("profile: orthodontic", "profile: basic"))
        print(f"{args.count} instances of {size:.0f} bytes; {args.config}, photo routes headers only")

        port = free_port()
        procs.append(storescp(work / "direct", port, work / "direct.log"))
        direct = storescu(port, "TEACHING", files)
        stop(procs.pop())
        print(
            f"ceiling   storescu -> storescp:              {args.count / direct:8.1f} instances/s"
            f" ({direct:.2f} s)"
        )

        arch, port = free_port(), free_port()
        procs.append(storescp(work / "archive", arch, work / "archive.log"))
        data = work / "data"
        service = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "dicom-anon"),
                "serve",
                "--config",
                str(config),
                "--listen",
                f"127.0.0.1:{port}",
                "--data-dir",
                str(data),
                "--destination",
                f"teaching=TEACHING@127.0.0.1:{arch}",
            ],
            stdout=(work / "service.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        procs.append(service)
        wait_port(port, service)
        store = StateStore(data / "state" / "state.sqlite")

        def delivered() -> int:
            return store.counts().get("deliveries.delivered", 0)

        started = time.perf_counter()
        acked = storescu(port, "DICOM_ANON", files)
        deadline = time.monotonic() + 600
        while delivered() < args.count:
            if time.monotonic() > deadline or service.poll() is not None:
                sys.exit(
                    f"bench_service: only {delivered()} of {args.count} delivered; see {work}/service.log"
                )
            time.sleep(0.02)
        total = time.perf_counter() - started
        peak = peak_rss_mib(service.pid)
        lat = sorted(store.latencies())
        store.close()
        rate = args.count / total
        print(
            f"service   storescu -> dicom-anon -> storescp: {rate:8.1f} instances/s"
            f" ({total:.2f} s end to end)"
        )
        print(
            f"          all acknowledged to storescu after  {acked:.2f} s"
            f" ({args.count / acked:.1f} instances/s)"
        )
        print(
            f"          receipt -> forwarded latency         p50 {percentile(lat, 0.5) * 1000:.0f} ms,"
            f" p99 {percentile(lat, 0.99) * 1000:.0f} ms, mean {statistics.fmean(lat) * 1000:.0f} ms"
        )
        print(f"          peak memory (VmHWM)                  {peak:.0f} MiB")
        print(f"ratio service / ceiling: {rate / (args.count / direct):.3f}")
    finally:
        for proc in reversed(procs):
            stop(proc)
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
