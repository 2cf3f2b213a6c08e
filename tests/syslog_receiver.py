"""A real syslog receiver for the ATNA tests: Debian's rsyslogd with its OpenSSL driver, on
127.0.0.1, its own configuration and work folder, a throwaway CA made with the openssl tool.

It accepts RFC 5425 (TLS, octet-counted frames, our client certificate required) and writes each
message as received (``%rawmsg%``: the RFC 5424 header, the byte order mark and the XML) on its
own line, so a test reads back exactly what was sent.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
_MODULES = Path("/usr/lib/x86_64-linux-gnu/rsyslog")


def rsyslog_missing() -> str | None:
    """Why the receiver cannot run here (None when it can)."""
    if not Path(RSYSLOGD).is_file():
        return "rsyslogd is not installed (dev.sh installs rsyslog and rsyslog-openssl)"
    if not any(Path(p).glob("lmnsd_ossl.so") for p in (_MODULES, Path("/usr/lib/rsyslog"))):
        return "rsyslog's OpenSSL driver is not installed (rsyslog-openssl)"
    if shutil.which("openssl") is None:
        return "openssl is not installed"
    return None


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def throwaway_pki(folder: Path) -> Path:
    """ca.pem, and server/client certificates and keys signed by it (the server's for 127.0.0.1)."""
    folder.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=dicom-anon ATNA test CA", cwd=folder,
    )  # fmt: skip
    for name, san in (("server", "IP:127.0.0.1,DNS:localhost"), ("client", "DNS:dicom-anon")):
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={name}", cwd=folder,
        )  # fmt: skip
        (folder / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=folder,
        )  # fmt: skip
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Receiver:
    """rsyslogd in the foreground on ``port``; ``start``/``stop`` may be called again and again."""

    def __init__(self, folder: Path, pki: Path, port: int | None = None) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.out = folder / "received.log"
        self.log = folder / "rsyslogd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        work = folder / "work"
        work.mkdir(parents=True, exist_ok=True)
        self.config = folder / "rsyslog.conf"
        self.config.write_text(f"""\
global(
  workDirectory="{work}"
  maxMessageSize="256k"
  defaultNetstreamDriver="ossl"
  defaultNetstreamDriverCAFile="{pki}/ca.pem"
  defaultNetstreamDriverCertFile="{pki}/server.pem"
  defaultNetstreamDriverKeyFile="{pki}/server.key"
)
module(load="imtcp" streamDriver.name="ossl" streamDriver.mode="1" streamDriver.authMode="x509/certvalid")
input(type="imtcp" address="127.0.0.1" port="{self.port}")
template(name="raw" type="string" string="%rawmsg%\\n")
action(type="omfile" file="{self.out}" template="raw" flushOnTXEnd="on" asyncWriting="off")
""")

    def start(self, timeout: float = 20.0) -> Receiver:
        pid_file = self.folder / "rsyslogd.pid"
        pid_file.unlink(missing_ok=True)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [RSYSLOGD, "-n", "-f", str(self.config), "-i", str(pid_file)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"rsyslogd exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}"
                )
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return self
            time.sleep(0.05)
        raise AssertionError(f"rsyslogd did not listen on {self.port} within {timeout:g} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def lines(self) -> list[bytes]:
        """Every message received so far, as rsyslog got it (header, BOM, XML).

        Only complete lines: rsyslog writes through a buffer, so a read may catch the last message
        half written (a CI run once failed on exactly that)."""
        if not self.out.exists():
            return []
        data = self.out.read_bytes()
        return [line for line in data[: data.rfind(b"\n") + 1].split(b"\n") if line]
