"""``dicom-anon serve`` as a process against a hostile sender and a hostile machine: a full disk,
idle and garbage connections, and a corpus of malformed instances. After each, the same process
still answers, every acknowledged instance is forwarded or quarantined, a valid photo sent last
arrives, and the audit chain verifies.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from factories import jpeg_bomb, write
from fuzz_corpus import MARKER, corpus, leaks
from peers import (
    EXAMPLE_CONFIG,
    TINY_PHI,
    Proc,
    events,
    free_port,
    start_service,
    start_storescp,
    storescu,
    tiny_photo,
    wait_until,
    write_photos,
)
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config, build_context
from pynetdicom.sop_class import Verification
from test_integration import db_rows, run_cli, second_photo

from dicom_anon.service.store import STOPPED_MID_JOB

pytestmark = pytest.mark.integration


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in reversed(started):
        p.stop()


def config_with(tmp: Path, name: str, **replace: str) -> Path:
    """The example settings with some lines replaced (old text -> new text)."""
    text = EXAMPLE_CONFIG.read_text()
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp / f"{name}.yaml"
    path.write_text(text)
    return path


def store(port: int, *datasets: Dataset) -> list[int]:
    """C-STORE as the clinic: one association, the statuses in order (no association: [])."""
    ae = AE(ae_title="CLINIC")
    contexts = [build_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID]) for ds in datasets]
    assoc = ae.associate("127.0.0.1", port, contexts=contexts, ae_title="DICOM_ANON")
    if not assoc.is_established:
        return []
    statuses = [int(assoc.send_c_store(ds).Status) for ds in datasets]
    assoc.release()
    return statuses


def echo(port: int) -> bool:
    ae = AE(ae_title="CLINIC")
    assoc = ae.associate("127.0.0.1", port, contexts=[build_context(Verification)], ae_title="DICOM_ANON")
    if not assoc.is_established:
        return False
    ok = int(assoc.send_c_echo().Status) == 0
    assoc.release()
    return ok


def verified(data_dir: Path) -> None:
    result = run_cli("audit", "verify", "--data-dir", str(data_dir))
    assert result.returncode == 0, result.stdout + result.stderr


# --- a full disk -------------------------------------------------------------------------


@contextlib.contextmanager
def small_disk(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` at ``folder``: a file system that genuinely fills up. Needs root."""
    folder.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(folder)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()[:100]})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)


def fill(folder: Path, name: str, leave: int = 0) -> Path:
    """Take the file system's free space, all of it or all but ``leave`` bytes."""
    path = folder / name
    stat = os.statvfs(folder)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        if stat.f_bavail * stat.f_frsize - leave > 0:
            os.posix_fallocate(fd, 0, stat.f_bavail * stat.f_frsize - leave)
        if leave == 0:  # whatever rounding left
            with contextlib.suppress(OSError):
                while os.write(fd, bytes(4096)):
                    pass
    finally:
        os.close(fd)
    return path


def big_photo(index: int) -> Dataset:
    """A 400x400 photo (480 kB of pixels): its spool copy fits where its outbox copy then does not."""
    ds = tiny_photo(index)
    ds.Rows = ds.Columns = 400
    ds.PixelData = bytes((index + i) % 251 for i in range(400 * 400 * 3))
    return ds


def test_a_full_disk_answers_out_of_resources_no_thread_dies_and_it_recovers(tmp_path, procs):
    """The issue's case: after one 0xA700 the worker died putting a job back (SQLite: disk full),
    the sender died on ENOSPC, the process exited, and ``serve`` could not start until space
    returned. Here the data dir is a 4 MiB tmpfs filled to the last byte."""
    disk = tmp_path / "disk"
    with small_disk(disk, "4m"):
        data_dir = disk / "data"
        config = config_with(
            tmp_path,
            "small-disk",
            **{
                "min_free_mb: 1024": "min_free_mb: 0",  # let the writes themselves meet the full disk
                "reserve_mb: 16": "reserve_mb: 1",
                "first_delay_s: 2 ": "first_delay_s: 0.2 ",
                "max_delay_s: 300": "max_delay_s: 1",
            },
        )
        arch_port, port = free_port(), free_port()
        dest = [f"teaching=TEACHING@127.0.0.1:{arch_port}"]
        service = start_service(tmp_path, port, dest, config=config, data_dir=data_dir, name="first")
        procs.append(service.wait_ready())
        # The archive is down: three photos wait in the outbox for it.
        assert store(port, tiny_photo(0), tiny_photo(1), tiny_photo(2)) == [0, 0, 0]
        wait_until(lambda: len(events(data_dir, "instance_deidentified")) == 3, 20, "three processed")

        # Room for one big photo's spool copy, not for its de-identified copy: acknowledged, then
        # the worker meets the full disk.
        filler = fill(disk, "filler-1", leave=len(big_photo(9).PixelData) + 60_000)
        assert store(port, big_photo(9)) == [0]
        wait_until(lambda: "cannot go on for now" in service.output(), 20, "the worker meeting ENOSPC")
        more = fill(disk, "filler-2")
        assert store(port, tiny_photo(3)) == [0xA700]  # the spool cannot take it: a clear answer
        assert echo(port)

        # The archive comes back while the disk is full: the sender sends, cannot record (or audit)
        # the delivery, so it waits and sends it again later (the same UIDs: the archive keeps one).
        archive = tmp_path / "archive"
        procs.append(start_storescp(tmp_path, arch_port, archive).wait_ready())
        wait_until(lambda: list(archive.glob("*.dcm")), 30, "a photo at the archive")
        wait_until(lambda: "sender cannot go on for now" in service.output(), 10, "the sender waiting")
        time.sleep(2)
        assert service.popen.poll() is None, service.output()[-3000:]
        assert echo(port)

        # Restart on the full disk: it starts (the reserve makes room for the state store).
        assert service.stop() == 0
        again = start_service(tmp_path, port, dest, config=config, data_dir=data_dir, name="second")
        procs.append(again.wait_ready())
        assert "gave up the reserve" in again.output()
        assert echo(port)

        # Space returns: everything acknowledged arrives, and so does a new photo.
        filler.unlink()
        more.unlink()
        assert store(port, tiny_photo(4)) == [0]
        delivered = "SELECT COUNT(*) FROM deliveries WHERE state = 'delivered'"
        wait_until(lambda: db_rows(data_dir, delivered) == [(5,)], 60, "all five delivered")
        assert db_rows(data_dir, "SELECT state, COUNT(*) FROM jobs GROUP BY state") == [("done", 5)]
        uids = {
            str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in archive.glob("*.dcm")
        }
        assert len(uids) == 5
        for path in archive.glob("*.dcm"):
            for text in TINY_PHI:
                assert text.encode() not in path.read_bytes()
        assert again.stop() == 0
        verified(data_dir)


# --- connections ---------------------------------------------------------------------------


def test_idle_connections_cannot_lock_the_clinic_out_and_are_audited(tmp_path, procs):
    """Ten idle TCP connections from anywhere took every association slot for 30 s, before any
    AE title or address check, and were never audited."""
    arch_port, port = free_port(), free_port()
    archive = tmp_path / "archive"
    procs.append(start_storescp(tmp_path, arch_port, archive).wait_ready())
    service = start_service(tmp_path, port, [f"teaching=TEACHING@127.0.0.1:{arch_port}"])
    procs.append(service.wait_ready())
    data_dir = tmp_path / "data"
    time.sleep(1)  # wait_ready's bare connects are audited too
    probes = len(events(data_dir, "association_rejected"))
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(25)]  # 20 may wait at once
    try:
        time.sleep(0.5)
        [photo] = write_photos(tmp_path / "in", 1)
        started = time.monotonic()
        sent = storescu(port, [photo])
        assert sent.returncode == 0, sent.stderr
        assert time.monotonic() - started < 3
        wait_until(lambda: len(list(archive.glob("*.dcm"))) == 1, 20, "the clinic's photo")
        # Each idle connection is closed within the request time limit (5 s) and audited once.
        for sock in idle:
            sock.settimeout(10)
            assert sock.recv(1) == b""
        wait_until(lambda: len(events(data_dir, "association_rejected")) >= probes + 25, 10, "25 events")
    finally:
        for sock in idle:
            sock.close()
    refused = events(data_dir, "association_rejected")[probes:]
    reasons = [r["reason"] for r in refused]
    assert len(refused) == 25 and all(
        r["category"] == "security" and r["peer"] == "127.0.0.1" for r in refused
    )
    # 20 may wait at once: the 5 oldest were pushed out (one more when the clinic's own connection
    # was waiting for a moment too), the others timed out.
    dropped = sum(r.startswith("dropped after") for r in reasons)
    assert dropped in (5, 6) and sum("within 5 s" in r for r in reasons) == 25 - dropped


def _associate_rq(called: bytes, calling: bytes) -> bytes:
    """An A-ASSOCIATE-RQ PDU with the given raw AE title fields and an application context item."""
    context = b"1.2.840.10008.3.1.1.1"
    items = b"\x10\x00" + struct.pack(">H", len(context)) + context
    body = b"\x00\x01\x00\x00" + called.ljust(16)[:16] + calling.ljust(16)[:16] + bytes(32) + items
    return b"\x01\x00" + struct.pack(">I", len(body)) + body


GARBAGE = {
    "http": (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "not a DICOM association request"),
    "tls-hello": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40), "TLS handshake"),
    "nul-in-calling-ae": (_associate_rq(b"DICOM_ANON", b"CLI\x00NIC"), "control or non-ASCII"),
    "escape-in-called-ae": (_associate_rq(b"DICOM\x1b[2J", b"CLINIC"), "control or non-ASCII"),
    "non-ascii-calling-ae": (
        _associate_rq(b"DICOM_ANON", "CLÉNIC".encode("latin-1")),
        "control or non-ASCII",
    ),
    "cut-short": (_associate_rq(b"DICOM_ANON", b"CLINIC")[:30], "cut short"),
    "huge-length": (
        b"\x01\x00\xff\xff\xff\xff\x00\x01",
        "a PDU of 4294967295 bytes, more than the 1048576 taken",
    ),
    "bare-connect": (b"", "closed without sending anything"),
}


def test_protocol_garbage_is_refused_and_audited_once_each(tmp_path, procs):
    port = free_port()
    procs.append(start_service(tmp_path, port, ["teaching=TEACHING@127.0.0.1:9"]).wait_ready())
    data_dir = tmp_path / "data"
    time.sleep(1)  # wait_ready's bare connects are audited too
    refused = []
    for name, (raw, expected) in GARBAGE.items():
        # One probe at a time: refusals are audited from the threads that handle them, so two
        # probes in flight may be written in either order.
        before = len(events(data_dir, "association_rejected"))
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(10)
            with contextlib.suppress(OSError):
                while sock.recv(4096):
                    pass
        wait_until(
            lambda n=before: len(events(data_dir, "association_rejected")) > n, 15, f"an event for {name}"
        )
        time.sleep(0.3)
        new = events(data_dir, "association_rejected")[before:]
        assert len(new) == 1, (name, new)
        assert expected in new[0]["reason"], (name, new[0])
        assert new[0]["category"] == "security"
        refused.extend(new)
    titles = {e.get("calling_ae") for e in refused} | {e.get("called_ae") for e in refused}
    assert {"CLI\\x00NIC", "CL\\xc9NIC", "DICOM\\x1b[2J"} <= titles
    assert echo(port)


def test_one_pdu_or_one_instance_cannot_take_the_services_memory(tmp_path, procs):
    """pynetdicom reads a PDU of whatever length its header states (up to 4 GiB) and keeps every
    fragment of an instance in memory until the last: a sender could take all of the service's
    memory. Now a PDU is refused from its header and an instance at ingress.max_instance_mb."""
    config = config_with(tmp_path, "limit", **{"max_instance_mb: 512": "max_instance_mb: 1"})
    port = free_port()
    procs.append(start_service(tmp_path, port, ["teaching=TEACHING@127.0.0.1:9"], config=config).wait_ready())
    data_dir = tmp_path / "data"
    ae = AE(ae_title="CLINIC")
    large = tiny_photo(1)
    large.Rows = large.Columns = 800
    large.PixelData = bytes(800 * 800 * 3)  # 1.8 MiB, sent in the 256 kB PDUs the service asked for
    contexts = [build_context(large.SOPClassUID, [ExplicitVRLittleEndian])]
    assoc = ae.associate("127.0.0.1", port, contexts=contexts, ae_title="DICOM_ANON")
    assert "Status" not in assoc.send_c_store(large)  # no answer: the connection was closed
    wait_until(lambda: events(data_dir, "association_aborted"), 15, "the large instance's association")
    [aborted] = events(data_dir, "association_aborted")
    assert aborted["reason"] == "dropped: an instance of more than 1 MiB (ingress.max_instance_mb)"

    assoc = ae.associate("127.0.0.1", port, contexts=contexts, ae_title="DICOM_ANON")
    sock = assoc.dul.socket.socket
    sent = 0
    with pytest.raises(OSError):  # the service closes the connection: a broken pipe or a reset
        sock.sendall(b"\x04\x00" + struct.pack(">I", 0xFFFFFFF0))
        while sent < 256 * 2**20:
            sock.sendall(bytes(2**16))
            sent += 2**16
    wait_until(lambda: len(events(data_dir, "association_aborted")) == 2, 15, "the 4 GiB PDU's association")
    reason = events(data_dir, "association_aborted")[1]["reason"]
    assert reason == "dropped: a PDU of 4294967280 bytes, more than the 1048576 taken"
    assert store(port, tiny_photo(2)) == [0]
    assert len(events(data_dir, "instance_received")) == 1


# --- a corpus of hostile instances over the network -----------------------------------------


def _send_raw(port: int, files: list[Path]) -> dict[Path, int | None]:
    """Each file's bytes as they are (pynetdicom's chunked sending), on as few associations as the
    service allows; None where no status came back (the SCU could not send it, or the service
    aborted the association)."""
    pairs = set()
    for path in files:
        with contextlib.suppress(Exception):  # a file meta too broken to read: that file is not sent
            meta = pydicom.filereader.read_file_meta_info(path)
            pairs.add((str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)))
    contexts = [build_context(sop, [ts]) for sop, ts in sorted(pairs)][:120]
    ae = AE(ae_title="CLINIC")
    result: dict[Path, int | None] = {}
    old = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    assoc = None
    try:
        for path in files:
            if assoc is None or not assoc.is_established:
                assoc = ae.associate("127.0.0.1", port, contexts=contexts, ae_title="DICOM_ANON")
            try:
                rsp = assoc.send_c_store(path)
                result[path] = int(rsp.Status) if "Status" in rsp else None
            except Exception:  # pynetdicom as the sender could not send these bytes
                result[path] = None
        if assoc is not None and assoc.is_established:
            assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = old
    return result


@pytest.mark.timeout(300)
def test_hostile_instances_over_the_network_leave_nothing_behind(tmp_path, procs, testdata):
    """The fuzz corpus (tests/fuzz_corpus.py: planted markers, then lying lengths, bit flips, wrong
    VRs, deep nesting, broken encapsulation, wrong transfer syntaxes, two-valued UIDs, command
    elements) sent raw, each case's bytes as they are, then protocol garbage, then a valid photo."""
    cases = list(corpus(80, seed=21, testdata=testdata))
    folder = tmp_path / "corpus"
    folder.mkdir()
    files = []
    for i, case in enumerate(cases):
        path = folder / f"{i:03d}.dcm"
        path.write_bytes(case.data)
        files.append(path)
    arch_port, port = free_port(), free_port()
    archive = tmp_path / "archive"
    procs.append(start_storescp(tmp_path, arch_port, archive).wait_ready())
    service = start_service(tmp_path, port, [f"teaching=TEACHING@127.0.0.1:{arch_port}"])
    procs.append(service.wait_ready())
    data_dir = tmp_path / "data"

    statuses = _send_raw(port, files)
    for raw, _ in random.Random(21).sample(list(GARBAGE.values()), 4):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(raw)
    good = write(tiny_photo(99), tmp_path / "good.dcm")
    assert storescu(port, [good]).returncode == 0

    acknowledged = [p for p, s in statuses.items() if s == 0]
    assert acknowledged, "the corpus should hold some instances the service takes"
    assert all(s is None or s == 0 or 0xA700 <= s <= 0xCFFF for s in statuses.values()), statuses
    # Every acknowledged instance is forwarded or quarantined: nothing is left in the queue.
    settled = "SELECT COUNT(*) FROM jobs WHERE state != 'done'"
    wait_until(lambda: db_rows(data_dir, settled) == [(0,)], 120, "every job settled")
    assert db_rows(data_dir, "SELECT COUNT(*) FROM deliveries WHERE state = 'pending'") == [(0,)]
    jobs = db_rows(data_dir, "SELECT COUNT(*) FROM jobs")[0][0]
    assert jobs >= len({p.read_bytes() for p in acknowledged}) + 1  # the same bytes again are one job
    # The valid photo arrived (the last one received); nothing forwarded holds a planted string.
    last = events(data_dir, "instance_received")[-1]["job"]
    [new_uid] = [e["new_sop_uid"] for e in events(data_dir, "instance_deidentified") if e["job"] == last]
    wait_until(lambda: any(new_uid in p.name for p in archive.glob("*.dcm")), 20, "the valid photo")
    forwarded = list(archive.glob("*.dcm"))
    for path in forwarded:
        assert not leaks(path.read_bytes(), testdata), path.name
        assert MARKER not in path.read_bytes()
    # The same process all along, answering, and the trail intact.
    assert service.popen.poll() is None
    assert echo(port)
    assert len(events(data_dir, "service_started")) == 1
    assert service.stop() == 0
    verified(data_dir)


# --- pixels that ask for gigabytes ------------------------------------------------------


def peak_memory_mib(pid: int) -> float:
    """The process's peak resident memory (VmHWM) so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_photos_whose_pixels_ask_for_gigabytes_are_held_and_the_service_stays_small(tmp_path, procs):
    """On a face route: a 700-byte JPEG whose frame declares 65,000 x 65,000 under a header of
    16 x 16 (a decoder took 24 GB on it and the kernel killed it; in the service's process that was
    the whole service, again at each restart, as the job was still queued), and one whose header
    agrees at 30,000 x 30,000 (5 GB). Both are held with a reason the operator can read; the
    service never grows past the size of its models."""
    arch_port, port = free_port(), free_port()
    archive = tmp_path / "archive"
    procs.append(start_storescp(tmp_path, arch_port, archive).wait_ready())
    service = start_service(tmp_path, port, [f"teaching=TEACHING@127.0.0.1:{arch_port}"], headers_only=False)
    procs.append(service.wait_ready())
    folder = tmp_path / "bombs"
    folder.mkdir()
    bombs = [
        write(jpeg_bomb((65000, 65000)), folder / "lying.dcm"),
        write(jpeg_bomb((30000, 30000), (30000, 30000)), folder / "huge.dcm"),
    ]
    assert storescu(port, bombs).returncode == 0
    data_dir = tmp_path / "data"
    wait_until(lambda: len(events(data_dir, "instance_quarantined")) == 2, 60, "both held")
    held = {e["code"]: e["reason"] for e in events(data_dir, "instance_quarantined")}
    assert set(held) == {"undecodable-pixels", "unsupported-pixels"}, held
    assert "declares 65000 x 65000 pixels" in held["undecodable-pixels"]
    assert "900 MP; photos above 120 MP are not processed" in held["unsupported-pixels"]
    assert not list(archive.glob("*.dcm"))
    assert echo(port)
    assert service.popen.poll() is None
    assert peak_memory_mib(service.popen.pid) < 2500
    assert service.stop() == 0
    verified(data_dir)


def test_an_instance_that_stops_the_service_each_time_is_held_after_three_tries(tmp_path, procs):
    """Whatever stops the process mid-photo (a decoder crashing, the kernel's out-of-memory killer,
    here kill -9) left the job to be taken up first at the next start, and the next, for ever, with
    nothing behind it moving. Each stop counts a try: after three, the instance is held, and the
    photo sent behind it is forwarded."""
    examples = Path(__file__).resolve().parents[2] / "examples"
    face = examples / "patient_a_face_explicit_le.dcm"
    arch_port, port = free_port(), free_port()
    archive = tmp_path / "archive"
    procs.append(start_storescp(tmp_path, arch_port, archive).wait_ready())
    dest = [f"teaching=TEACHING@127.0.0.1:{arch_port}"]
    data_dir = tmp_path / "data"
    processing = "SELECT id FROM jobs WHERE state = 'processing'"  # one pipeline thread: job 2 waits
    for run in range(3):
        service = start_service(tmp_path, port, dest, headers_only=False, name=f"run{run}").wait_ready()
        procs.append(service)
        if run == 0:
            behind = second_photo(face, tmp_path / "behind.dcm")
            assert storescu(port, [face]).returncode == 0
            assert storescu(port, [behind]).returncode == 0
        wait_until(lambda: db_rows(data_dir, processing) == [(1,)], 60, "the first photo in hand")
        service.kill9()
    last = start_service(tmp_path, port, dest, headers_only=False, name="last").wait_ready()
    procs.append(last)
    wait_until(lambda: events(data_dir, "instance_quarantined"), 30, "the first photo held")
    held = events(data_dir, "instance_quarantined")
    assert [(e["job"], e["code"]) for e in held] == [(1, "processing-stopped")], held
    [held] = held
    assert held["reason"] == f"tried 3 times; the last time, {STOPPED_MID_JOB}"
    wait_until(lambda: len(list(archive.glob("*.dcm"))) == 1, 120, "the photo behind it forwarded")
    assert last.stop() == 0
    verified(data_dir)
