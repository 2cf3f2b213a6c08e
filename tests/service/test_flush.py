"""files.FileSystemFlush: the one flush an acknowledgement waits for is shared by the threads
that wait at the same time (group commit), and a failed flush is not taken for a done one."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from dicom_anon.service.files import FileSystemFlush


class _Counted(FileSystemFlush):
    """The real syncfs, counted, and slow enough that the other threads arrive while it runs."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.flushes = 0
        self.fail_next = False

    def _flush(self) -> None:
        self.flushes += 1
        time.sleep(0.05)
        if self.fail_next:
            self.fail_next = False
            raise OSError(5, "Input/output error")
        super()._flush()


def test_threads_waiting_together_share_flushes(tmp_path: Path) -> None:
    flush = _Counted(tmp_path)
    start = threading.Barrier(16)

    def acknowledge() -> None:
        start.wait()
        flush()

    threads = [threading.Thread(target=acknowledge) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # One flush under way when the others arrive, then one for all of them (a few more if a
    # thread is slow to arrive), never one each.
    assert 1 <= flush.flushes <= 4
    flush.close()


def test_a_failed_flush_raises_and_the_next_caller_flushes_again(tmp_path: Path) -> None:
    flush = _Counted(tmp_path)
    flush.fail_next = True
    with pytest.raises(OSError):
        flush()
    flush()
    assert flush.flushes == 2
    flush.close()
