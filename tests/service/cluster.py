"""Several ``dicom-anon serve`` processes on loopback sharing one PostgreSQL store, one spool folder
and one audit folder, each with its own role and data dir, forwarding to one archive: the set-up
of test_multinode.py and benchmarks/bench_multinode.py.

Every node is started from its own settings file (what an operator writes), by PID, and may be
killed with SIGKILL and started again under the same name and port.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml
from peers import Proc, dicom_anon, free_port, wait_until

from dicom_anon.headers.pseudonyms import SiteKey


class Cluster:
    """Nodes by name; ``tmp`` holds their settings, data dirs, logs and the shared folders."""

    def __init__(
        self, tmp: Path, conninfo: str, archive_port: int, *, lease_s: float = 10, audit_fsync: bool = False
    ) -> None:
        self.tmp = tmp
        self.conninfo = conninfo
        self.archive_port = archive_port
        self.lease_s = lease_s
        self.audit_fsync = audit_fsync
        self.shared = tmp / "shared"
        self.audit_dir = tmp / "audit"
        self.key_file = tmp / "site.key"
        SiteKey.load_or_create(self.key_file)  # one key, copied to every node
        self.procs: dict[str, Proc] = {}
        self.ports: dict[str, int] = {}
        self._starts: dict[str, int] = {}

    def config(self, name: str, role: str, workers: int = 1) -> Path:
        """The settings file of node ``name``: what differs between nodes is its id, role and port."""
        port = self.ports.setdefault(name, free_port())
        settings: dict[str, Any] = {
            "data_dir": str(self.tmp / "nodes" / name),
            "secret_file": str(self.key_file),
            "node": {"id": name, "role": role},
            "state": {"backend": "postgresql", "dsn": self.conninfo, "lease_s": self.lease_s},
            "spool": {"shared_dir": str(self.shared)},
            "audit": {"shared_dir": str(self.audit_dir), "fsync": self.audit_fsync},
            "ingress": {
                "listen": f"127.0.0.1:{port}",
                "allowed_callers": [{"ae_title": "CLINIC", "addresses": ["127.0.0.1"]}],
            },
            "destinations": {
                "archive": {"ae_title": "TEACHING", "host": "127.0.0.1", "port": self.archive_port}
            },
            "routes": [{"name": "photos", "profile": "basic", "destinations": ["archive"]}],
            "egress": {"retry": {"first_delay_s": 0.2, "max_delay_s": 1.0}, "idle_release_s": 0.5},
            "workers": workers,
        }
        path = self.tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump(settings))
        return path

    def upgrade(self) -> None:
        """``dicom-anon db upgrade``, once, before any node starts (as the docs say)."""
        config = self.config("setup", "all")
        done = subprocess.run(
            [dicom_anon(), "db", "upgrade", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr

    def start(self, name: str, role: str, workers: int = 1) -> Proc:
        """Start node ``name`` (again, after a kill: same id, port and data dir); not waited for."""
        config = self.config(name, role, workers)
        self._starts[name] = self._starts.get(name, 0) + 1
        log = self.tmp / f"{name}-{self._starts[name]}.log"
        self.procs[name] = Proc(name, [dicom_anon(), "serve", "--config", str(config)], log)
        return self.procs[name]

    def wait_started(self, *names: str, timeout: float = 60) -> None:
        """Ready: an ingress node listens, a worker has logged that it started."""
        for name in names:
            proc = self.procs[name]

            def ready(proc: Proc = proc) -> bool:
                if proc.popen.poll() is not None:
                    raise AssertionError(
                        f"{proc.name} exited ({proc.popen.returncode}): {proc.output()[-2000:]}"
                    )
                return "service started" in proc.output()

            wait_until(ready, timeout, f"{name} started", step=0.1)

    def kill9(self, name: str) -> None:
        self.procs[name].kill9()

    def trail(self, name: str) -> Path:
        return self.audit_dir / name / "audit.jsonl"

    def count(self, name: str, event: str) -> int:
        """Records of ``event`` in node ``name``'s trail so far (the current file)."""
        trail = self.trail(name)
        return trail.read_text().count(f'"event":"{event}"') if trail.exists() else 0

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            proc.stop()
