"""Durable files: the spool, the outbox and the quarantine folders under the data dir.

An instance is only acknowledged once its bytes and its directory entry are on disk
(fsync of the file, then of the directory): after a power cut the file is there with
all its bytes, or the state store never heard of it.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a new or renamed file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durable(path: Path, data: bytes) -> None:
    """Write a new file (never overwrite), fsync it and its directory. Mode 0600: it holds PHI."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)
    fsync_dir(path.parent)


def replace_durable(path: Path, data: bytes) -> None:
    """Write ``path`` atomically (temp file, fsync, rename, fsync dir); readers see old or new."""
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}")
    write_durable(tmp, data)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def link_or_copy(src: Path, dst: Path) -> None:
    """A second durable name for a file: a hard link when on the same file system, else a copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        tmp = dst.with_name(f".tmp-{uuid.uuid4().hex}")
        shutil.copyfile(src, tmp)
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    fsync_dir(dst.parent)


class Layout:
    """Where things live under the data dir. Rows in the state store hold paths relative to it."""

    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir
        self.spool = data_dir / "spool"
        self.outbox = data_dir / "outbox"
        self.quarantine = data_dir / "quarantine"
        self.reserve = data_dir / "reserve"
        self._made: set[Path] = set()
        self._lock = threading.Lock()

    def create(self) -> None:
        for folder in (self.root, self.spool, self.outbox, self.quarantine):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)

    def rel(self, path: Path) -> str:
        return str(path.relative_to(self.root))

    def abs(self, rel: str) -> Path:
        return self.root / rel

    def folder(self, parent: Path, name: str) -> Path:
        """A subfolder made durable once (its entry in ``parent`` fsynced), then cached."""
        path = parent / name
        if path in self._made:
            return path
        with self._lock:
            if not path.is_dir():
                path.mkdir(mode=0o700, parents=True, exist_ok=True)
                fsync_dir(parent)
            self._made.add(path)
        return path

    def new_spool_path(self) -> Path:
        """A fresh name in today's spool folder; the name says nothing about the patient."""
        day = self.folder(self.spool, time.strftime("%Y%m%d"))
        return day / f"{uuid.uuid4().hex}.dcm"

    def remove(self, rel: str | None) -> None:
        """Delete a file we no longer need; already gone is fine (a crash may have removed it)."""
        if rel:
            self.abs(rel).unlink(missing_ok=True)

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.spool).free

    def keep_reserve(self, size: int) -> bool:
        """Hold ``size`` bytes of the disk in the reserve file (allocated, not just sized) while at
        least as much again is free; True when the reserve is in place."""
        if size == 0:
            self.reserve.unlink(missing_ok=True)
            return True
        if self.reserve.exists() and self.reserve.stat().st_size == size:
            return True
        if shutil.disk_usage(self.root).free < 2 * size:
            return False
        tmp = self.reserve.with_name(".reserve.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.posix_fallocate(fd, 0, size)
            finally:
                os.close(fd)
            os.replace(tmp, self.reserve)
        except OSError:
            tmp.unlink(missing_ok=True)
            return False
        return True

    def release_reserve(self) -> bool:
        """Give the reserve back to the file system; False when there was none to give."""
        try:
            self.reserve.unlink()
        except FileNotFoundError:
            return False
        return True
