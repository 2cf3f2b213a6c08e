"""End-to-end throughput of the service beside the receivers a hospital already runs.

    .venv/bin/python benchmarks/bench_service.py [--rounds 8] [--count 1000] [--photos 100] [--keep DIR]
        [--peers wire pynetdicom orthanc]

Each round, dcmtk's storescu (TCP_NODELAY=1, one association, as a clinic PACS sends) sends the
same files to each receiver in turn, the order rotating from round to round:
- wire: dcmtk storescp writing the files (the ceiling of the network path);
- pynetdicom: pynetdicom's own storescp app writing the files (no processing);
- orthanc: Orthanc started here with its own config on loopback (durable store with an index,
  TCP_NODELAY=1 for its dcmtk DICOM side, TcpNoDelay for its HTTP side), timed until storescu
  had every acknowledgement;
- dicom-anon: ``dicom-anon serve`` (the example settings with photo routes on the headers-only
  ``basic`` profile; durable ack, audit fsynced) forwarding to a dcmtk storescp, timed from the
  start of the send until the state store has every delivery.
Two corpora: small instances (1.6 kB) and photos (copies of the generated face photo, 835 kB).
Prints instances/s per receiver and round, the ratios dicom-anon / each peer per round, and the
medians. A dicom-anon round counts as stalled if its service log shows a lost C-STORE response
(a DIMSE timeout or pynetdicom's "unexpected ... message"). Everything runs on 127.0.0.1 and is
stopped by PID; a fresh data dir and archive folder for every run.
"""

from __future__ import annotations

import argparse
import json
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

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicom_anon.service.store_sqlite import SqliteStore

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
        sys.exit(f"bench_service: storescu to {aec} failed: {result.stderr[-500:]}")
    return elapsed


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def photo_instances(folder: Path, count: int, patients: str = "MRN") -> list[Path]:
    """``count`` copies of the generated face photo (no burned-in text), each with its own UIDs,
    of 20 patients whose IDs start with ``patients``."""
    source = (
        ROOT.parent / "shared" / "testdata" / "dicom" / "generated" / "vlphoto_face_noburn_explicit_le.dcm"
    )
    if not source.is_file():
        sys.exit(f"bench_service: {source} is missing; run with --photos 0")
    folder.mkdir(parents=True)
    ds = dcmread(source)
    paths = []
    for i in range(count):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientID = f"{patients}{i % 20:08d}"
        path = folder / f"{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def run_wire(work: Path, files: list[Path]) -> float:
    port = free_port()
    proc = storescp(work / "archive", port, work / "storescp.log")
    try:
        return storescu(port, "TEACHING", files)
    finally:
        stop(proc)


def run_pynetdicom(work: Path, files: list[Path]) -> float:
    port = free_port()
    out = work / "archive"
    out.mkdir(parents=True)
    args = [sys.executable, "-m", "pynetdicom", "storescp", str(port), "-aet", "TEACHING", "-od", str(out)]
    proc = subprocess.Popen(args, stdout=(work / "pynetdicom.log").open("wb"), stderr=subprocess.STDOUT)
    wait_port(port, proc)
    try:
        return storescu(port, "TEACHING", files)
    finally:
        stop(proc)


def run_orthanc(work: Path, files: list[Path]) -> float:
    port, http = free_port(), free_port()
    db = work / "orthanc-db"
    cfg = {
        "Name": "bench",
        "DicomAet": "ORTHANC",
        "DicomPort": port,
        "HttpPort": http,
        "StorageDirectory": str(db),
        "IndexDirectory": str(db),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "HttpServerEnabled": True,
        "DicomServerEnabled": True,
        "UnknownSopClassAccepted": True,
        "TcpNoDelay": True,  # its HTTP server; its DICOM side is dcmtk, told by TCP_NODELAY=1
        "Plugins": [],
    }
    cfg_path = work / "orthanc.json"
    cfg_path.write_text(json.dumps(cfg))
    binary = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    proc = subprocess.Popen(
        [binary, str(cfg_path)],
        stdout=(work / "orthanc.log").open("wb"),
        stderr=subprocess.STDOUT,
        env=DCMTK_ENV,
    )
    wait_port(port, proc)
    try:
        return storescu(port, "ORTHANC", files)
    finally:
        stop(proc)


def run_service(work: Path, files: list[Path], config: Path) -> tuple[float, bool]:
    """Seconds from the start of the send to the last delivery, and whether a response was lost."""
    arch, port = free_port(), free_port()
    archive = storescp(work / "archive", arch, work / "archive.log")
    data = work / "data"
    log = work / "service.log"
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
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_port(port, service)
        store = SqliteStore(data / "state" / "state.sqlite")
        started = time.perf_counter()
        storescu(port, "DICOM_ANON", files)
        deadline = time.monotonic() + 900
        while store.counts().get("deliveries.delivered", 0) < len(files):
            if time.monotonic() > deadline or service.poll() is not None:
                sys.exit(f"bench_service: not everything was delivered; see {log}")
            time.sleep(0.01)
        total = time.perf_counter() - started
        store.close()
    finally:
        stop(service)
        stop(archive)
    text = log.read_text(errors="replace")
    return total, "DIMSE timeout" in text or "unexpected" in text.lower()


PEERS = ("wire", "pynetdicom", "orthanc")


def bench(
    name: str, files: list[Path], rounds: int, config: Path, work: Path, peers: tuple[str, ...] = PEERS
) -> None:
    size = sum(p.stat().st_size for p in files) / len(files)
    print(f"\n{name}: {len(files)} instances of {size / 1000:.1f} kB, {rounds} rounds (instances/s)")
    print(f"  {'round':>5} {'dicom-anon':>10} " + " ".join(f"{p:>10}" for p in peers) + "   ratios to each")
    rates: dict[str, list[float]] = {k: [] for k in ("dicom-anon", *peers)}
    ratios: dict[str, list[float]] = {p: [] for p in peers}
    stalls = 0
    for r in range(rounds):
        who = ["dicom-anon", *peers]
        who = who[r % len(who) :] + who[: r % len(who)]
        seconds: dict[str, float] = {}
        for receiver in who:
            run_dir = work / f"{name}-{r}-{receiver}"
            run_dir.mkdir(parents=True)
            if receiver == "dicom-anon":
                seconds[receiver], stalled = run_service(run_dir, files, config)
                stalls += stalled
            else:
                seconds[receiver] = {"wire": run_wire, "pynetdicom": run_pynetdicom, "orthanc": run_orthanc}[
                    receiver
                ](run_dir, files)
            shutil.rmtree(run_dir, ignore_errors=True)
        for k, v in seconds.items():
            rates[k].append(len(files) / v)
        for p in peers:
            ratios[p].append(seconds[p] / seconds["dicom-anon"])
        print(
            f"  {r + 1:>5} {rates['dicom-anon'][-1]:>10.1f} "
            + " ".join(f"{rates[p][-1]:>10.1f}" for p in peers)
            + "   "
            + "  ".join(f"{ratios[p][-1]:.2f}x" for p in peers)
        )
    med = statistics.median
    print(
        f"  {'med':>5} {med(rates['dicom-anon']):>10.1f} "
        + " ".join(f"{med(rates[p]):>10.1f}" for p in peers)
        + "   "
        + "  ".join(f"{med(ratios[p]):.2f}x" for p in peers)
    )
    print(f"  dicom-anon rounds with a lost C-STORE response (stall): {stalls} of {rounds}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--count", type=int, default=1000, help="small instances (0: skip)")
    parser.add_argument("--photos", type=int, default=100, help="photos (0: skip)")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temp dir)")
    parser.add_argument("--config", type=Path, default=ROOT / "config" / "dicom-anon.yaml")
    parser.add_argument(
        "--peers",
        nargs="*",
        choices=PEERS,
        default=list(PEERS),
        help="peers to run beside dicom-anon (none: dicom-anon alone, e.g. to count stalls over many rounds)",
    )
    args = parser.parse_args()
    peers = tuple(args.peers)
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-service-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        config = work / "headers-only.yaml"
        config.write_text(args.config.read_text().replace("profile: orthodontic", "profile: basic"))
        print(f"settings: {args.config}, photo routes on the headers-only basic profile")
        if args.count:
            bench("small", make_instances(work / "small", args.count), args.rounds, config, work, peers)
        if args.photos:
            bench("photos", photo_instances(work / "photos", args.photos), args.rounds, config, work, peers)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
