"""A private PostgreSQL server for tests: Debian's ``initdb`` and ``pg_ctl`` on a fresh data directory,
listening only on a unix socket in that directory, stopped and removed after.

PostgreSQL refuses to run as root, and CI runs as root: there the cluster belongs to ``nobody``
(``runuser``), in a directory under /tmp that ``nobody`` owns (pytest's own tmp folders are
private to root). ``fsync=off`` unless asked: the tests check transactions and locks, not power
cuts (a benchmark asks for it).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest


def tool(name: str) -> str | None:
    """A PostgreSQL server program: on PATH, or where Debian's ``postgresql`` package puts it."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(Path(p).parts[-3].split(".")[0])
    )
    return candidates[-1] if candidates else None


class PostgresServer:
    """One cluster; ``database()`` gives each test a database of its own on it."""

    def __init__(self, *, fsync: bool = False) -> None:
        initdb, pg_ctl = tool("initdb"), tool("pg_ctl")
        if initdb is None or pg_ctl is None:
            pytest.skip("PostgreSQL is not installed (./dev.sh installs Debian's postgresql)")
        self.pg_ctl = pg_ctl
        self.dir = Path(tempfile.mkdtemp(prefix="dicom-anon-pg-"))
        self.as_user: list[str] = []
        if os.getuid() == 0:
            nobody = pwd.getpwnam("nobody")
            os.chown(self.dir, nobody.pw_uid, nobody.pw_gid)
            self.as_user = ["runuser", "-u", "nobody", "--"]
        self.data = self.dir / "data"
        self._run(initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        options = (
            f"-k {self.dir} -c listen_addresses='' -c fsync={'on' if fsync else 'off'} -c max_connections=200"
        )
        self._run(pg_ctl, "-D", str(self.data), "-o", options, "-l", str(self.dir / "log"), "-w", "start")
        self._databases = 0

    def _run(self, *args: str) -> None:
        subprocess.run([*self.as_user, *args], check=True, capture_output=True, timeout=120)

    def conninfo(self, dbname: str = "postgres") -> str:
        return f"host={self.dir} port=5432 user=postgres dbname={dbname}"

    def database(self) -> str:
        """A new, empty database; its connection string."""
        import psycopg

        self._databases += 1
        name = f"test{self._databases}"
        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.conninfo(name)

    def stop(self) -> None:
        try:
            self._run(self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
