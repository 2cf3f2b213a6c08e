"""Durable files: the spool, the outbox and the quarantine folders, under the data dir or, for
nodes sharing a PostgreSQL store, under ``spool.shared_dir``.

An instance is only acknowledged once its bytes and its directory entry are on disk. Ingress
writes the spool file, the job row and the receipt's audit record without syncing each, then
makes all of them durable with one flush of the file system (``FileSystemFlush``): one disk
write per acknowledgement instead of four fsyncs, shared by the associations that wait at the
same time. After a power cut before that flush the instance was not acknowledged; a job whose
spool file did not survive is recognised at start (``Service._drop_unacknowledged``). A shared
store commits the job row by itself, visible to every worker at once, so there ingress fsyncs
the spool file and its folder before the row.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import Settings


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a new or renamed file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durable(path: Path, data: bytes) -> None:
    """Write a new file (never overwrite), fsync it and its directory. Mode 0600: it holds PHI."""
    write_new(path, data, fsync=True)
    fsync_dir(path.parent)


def write_new(path: Path, data: bytes, *, fsync: bool = False) -> None:
    """Write a new file (never overwrite), mode 0600. Unsynced unless ``fsync``: for a caller whose
    ``FileSystemFlush`` covers it together with the other writes of the same step."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if fsync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


class FileSystemFlush:
    """Group commit for the service's file systems: ``__call__`` returns once every write that
    finished before it is on disk (file contents, directory entries, SQLite's write-ahead log,
    the audit trail).

    One ``syncfs`` does for all of them what an fsync does for one file, and costs about as much
    as one, so an acknowledgement waits for one disk flush instead of four. A flush that began
    after a caller's writes covers that caller too: concurrent associations share it. Python has
    no ``os.syncfs``; it is called from the C library (Linux). Where there is none, ``os.sync``.
    Each folder given whose file system differs from the others' (a shared spool, a shared audit
    folder) is flushed too, one ``syncfs`` per file system. The data dir should have a file system
    of its own, or the flush also writes out what other programs left dirty there.
    """

    def __init__(self, *folders: Path) -> None:
        self._fds: list[int] = []
        devices: set[int] = set()
        for folder in folders:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            device = os.fstat(fd).st_dev
            if device in devices:
                os.close(fd)
                continue
            devices.add(device)
            self._fds.append(fd)
        self._cond = threading.Condition()
        self._requested = 0
        self._done = 0
        self._running = False
        libc = ctypes.CDLL(None, use_errno=True)
        self._syncfs = getattr(libc, "syncfs", None)

    def __call__(self) -> None:
        with self._cond:
            self._requested += 1
            ticket = self._requested
            while self._done < ticket:
                if self._running:
                    self._cond.wait()
                    continue
                self._running, target = True, self._requested
                self._cond.release()
                try:
                    self._flush()
                finally:
                    self._cond.acquire()
                    self._running = False
                    self._cond.notify_all()
                self._done = max(self._done, target)

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)

    def _flush(self) -> None:
        if self._syncfs is None:
            os.sync()
            return
        for fd in self._fds:
            if self._syncfs(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))


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
    """Where things live: the spool, outbox and quarantine folders under the data dir, or under
    ``spool.shared_dir`` where several nodes share them. Rows in the state store hold paths relative
    to that root, so any node finds any file, and a restored backup works at a new place.

    On a shared root this node writes only in its own subfolders (``spool/<node id>/...``): the
    folders below are this node's, which is all that start-up may clear (another node may be
    writing a file whose row is not committed yet).
    """

    def __init__(self, root: Path, *, node: str | None = None, reserve: Path | None = None) -> None:
        self.root = root
        self.shared = node is not None
        self.spool = root / "spool"
        self.outbox = root / "outbox"
        self.quarantine = root / "quarantine"
        if node is not None:
            self.spool, self.outbox, self.quarantine = (
                f / node for f in (self.spool, self.outbox, self.quarantine)
            )
        self.reserve = reserve if reserve is not None else root / "reserve"
        self._made: set[Path] = set()
        self._lock = threading.Lock()

    @classmethod
    def for_settings(cls, settings: Settings) -> Layout:
        """The layout the settings describe; the disk reserve stays in the node's own data dir."""
        shared = settings.spool.shared_dir
        if shared is None:
            return cls(settings.data_dir)
        return cls(shared, node=settings.node.id, reserve=settings.data_dir / "reserve")

    def create(self) -> None:
        for folder in (self.root, self.spool, self.outbox, self.quarantine, self.reserve.parent):
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
        if shutil.disk_usage(self.reserve.parent).free < 2 * size:
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
