"""Real peers on loopback for the service tests: dcmtk storescu/storescp, Orthanc, ``dicom-anon serve``.

Every process is started on a free port, waited for by polling its port (bounded),
and stopped by its own PID. Nothing here talks to anything but 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from factories import camera_photo, write
from pydicom.dataset import Dataset

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIG = ROOT / "config" / "dicom-anon.yaml"
# Planted in every tiny instance; none of it may reach a destination.
TINY_PHI = ("Doe-Mueller^Jane", "MRN00482913", "19780314", "Photo of Jane Doe-Mueller", "St. Elsewhere")


def dcmtk(tool: str) -> str | None:
    """The dcmtk binary, not pynetdicom's same-named script in the virtual environment."""
    venv_bin = Path(sys.executable).parent
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(folder) / tool
        if candidate.is_file() and os.access(candidate, os.X_OK) and candidate.parent != venv_bin:
            return str(candidate)
    fallback = Path("/usr/bin") / tool
    return str(fallback) if fallback.is_file() else None


def dcmtk_env() -> dict[str, str]:
    """dcmtk leaves Nagle's algorithm on unless TCP_NODELAY=1 is set, which costs some 40 ms per
    C-STORE on loopback; clinic PACSs are configured with it, and so are these peers."""
    return {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True
    return False


def wait_until(condition: Callable[[], bool], timeout: float, what: str, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


class Proc:
    """A started peer; ``stop`` ends it by PID (SIGTERM, then SIGKILL) and returns its output."""

    def __init__(self, name: str, args: list[str], log: Path, port: int | None = None, **kwargs) -> None:
        self.name = name
        self.log = log
        self.port = port
        self._out = log.open("ab")
        self.popen = subprocess.Popen(args, stdout=self._out, stderr=subprocess.STDOUT, **kwargs)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait_ready(self, timeout: float = 20.0) -> Proc:
        assert self.port is not None

        def ready() -> bool:
            if self.popen.poll() is not None:
                raise AssertionError(f"{self.name} exited ({self.popen.returncode}): {self.output()[-2000:]}")
            return port_open(self.port)

        wait_until(ready, timeout, f"{self.name} on port {self.port}")
        return self

    def signal(self, signum: int) -> None:
        if self.popen.poll() is None:
            os.kill(self.pid, signum)

    def kill9(self) -> None:
        self.signal(signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.popen.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)
        self._out.close()
        return self.popen.returncode

    def output(self) -> str:
        if not self._out.closed:
            self._out.flush()
        return self.log.read_text(errors="replace")


def tiny_photo(index: int = 0, *, patient_id: str = "MRN00482913", burned_in: str = "NO") -> Dataset:
    """A 4x4 VL Photographic instance with the fake PHI of TINY_PHI; a fresh SOP Instance UID each call."""
    return camera_photo(
        PatientID=patient_id,
        StudyDescription="Photo of Jane Doe-Mueller",
        InstitutionName="St. Elsewhere",
        InstanceNumber=index + 1,
        BurnedInAnnotation=burned_in,
        PixelData=bytes((index + i) % 256 for i in range(48)),
    )


def write_photos(folder: Path, count: int, **kwargs) -> list[Path]:
    return [write(tiny_photo(i, **kwargs), folder / f"photo{i:04d}.dcm") for i in range(count)]


def dicom_anon() -> str:
    return str(Path(sys.executable).parent / "dicom-anon")


def start_service(
    tmp: Path,
    port: int,
    destinations: list[str],
    *,
    config: Path = EXAMPLE_CONFIG,
    data_dir: Path | None = None,
    name: str = "service",
    headers_only: bool = True,
) -> Proc:
    """``dicom-anon serve`` as a process. With ``headers_only`` (the default) a copy of the config
    is used in which photo routes have the ``basic`` profile: the network tests send tiny synthetic
    photos without a face, which the orthodontic preset rightly quarantines (no-face); the face
    path has its own test, and a test that edits its config live passes its own."""
    if headers_only:
        headers_only = tmp / f"{name}-headers-only.yaml"
        headers_only.write_text(config.read_text().replace("profile: orthodontic", "profile: basic"))
        config = headers_only
    args = [
        dicom_anon(),
        "serve",
        "--config",
        str(config),
        "--listen",
        f"127.0.0.1:{port}",
        "--data-dir",
        str(data_dir or tmp / "data"),
    ]
    for d in destinations:
        args += ["--destination", d]
    return Proc(name, args, tmp / f"{name}.log", port)


def start_storescp(tmp: Path, port: int, folder: Path, *extra: str, aet: str = "TEACHING") -> Proc:
    binary = dcmtk("storescp")
    assert binary is not None
    folder.mkdir(parents=True, exist_ok=True)
    args = [binary, "-aet", aet, "+xa", "-od", str(folder), "-fe", ".dcm", "-dhl", *extra, str(port)]
    return Proc(f"storescp:{port}", args, tmp / f"storescp-{port}.log", port, env=dcmtk_env())


def start_orthanc(tmp: Path, dicom_port: int, http_port: int, aet: str = "ORTHANC") -> Proc:
    folder = tmp / "orthanc"
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {
        "Name": "test-archive",
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "StorageDirectory": str(folder / "db"),
        "IndexDirectory": str(folder / "db"),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": True,
        "Plugins": [],
        "HttpServerEnabled": True,
        "StableAge": 1,
        "ConcurrentJobs": 1,
        "DicomServerEnabled": True,
        "UnknownSopClassAccepted": True,
    }
    cfg_path = folder / "orthanc.json"
    cfg_path.write_text(json.dumps(cfg))
    binary = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    return Proc(f"orthanc:{dicom_port}", [binary, str(cfg_path)], tmp / "orthanc.log", dicom_port)


def storescu(
    port: int,
    files: list[Path],
    *,
    aet: str = "CLINIC",
    aec: str = "DICOM_ANON",
    extra: tuple[str, ...] = (),
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Send like the clinic PACS does: propose JPEG and uncompressed (-xy), one association."""
    binary = dcmtk("storescu")
    assert binary is not None
    args = [binary, "-xy", "-aet", aet, "-aec", aec, *extra, "127.0.0.1", str(port), *map(str, files)]
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False, env=dcmtk_env())


def acknowledged(storescu_log: str) -> set[str]:
    """Files ``storescu -v`` saw answered with Success."""
    acked: set[str] = set()
    current = None
    for line in storescu_log.splitlines():
        if line.startswith("I: Sending file: "):
            current = line.removeprefix("I: Sending file: ").strip()
        elif line.startswith("I: Received Store Response (Success)") and current:
            acked.add(current)
            current = None
    return acked


def audit_records(data_dir: Path) -> list[dict]:
    path = data_dir / "audit" / "audit.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def events(data_dir: Path, name: str) -> list[dict]:
    return [r for r in audit_records(data_dir) if r.get("event") == name]


@contextlib.contextmanager
def running(*procs: Proc) -> Iterator[None]:
    try:
        yield
    finally:
        for p in reversed(procs):
            p.stop()


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(folder: Path) -> Path:
    """A throwaway CA with a server certificate for 127.0.0.1 and a client certificate."""
    folder.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=dicom-anon test CA",
        cwd=folder,
    )
    for name, san in (("server", "IP:127.0.0.1,DNS:localhost"), ("client", "DNS:clinic")):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
            cwd=folder,
        )
        (folder / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
            cwd=folder,
        )
    return folder
