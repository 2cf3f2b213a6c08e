"""The service as a process among real peers on 127.0.0.1: dcmtk storescu as the clinic PACS,
dcmtk storescp and Orthanc as teaching archives, ``dicom-anon serve`` in between.

Each test starts what it needs on free ports, waits by polling the port, and stops
everything by PID when it ends (also when it fails).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import sqlite3
import subprocess
import time
import urllib.request
from pathlib import Path

import pydicom
import pytest
from factories import to_bytes
from peers import (
    EXAMPLE_CONFIG,
    TINY_PHI,
    Proc,
    acknowledged,
    dcmtk,
    dcmtk_env,
    dicom_anon,
    events,
    free_port,
    make_pki,
    start_orthanc,
    start_service,
    start_storescp,
    storescu,
    tiny_photo,
    wait_until,
    write_photos,
)
from pydicom.encaps import encapsulate
from pydicom.uid import generate_uid
from pynetdicom import AE, _config, build_context
from pynetdicom.sop_class import Verification

from dicom_anon.headers.pseudonyms import SiteKey

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        dcmtk("storescu") is None or dcmtk("storescp") is None, reason="dcmtk is not installed"
    ),
]


@pytest.fixture
def procs():
    """Everything a test starts; stopped by PID afterwards, newest first."""
    started: list[Proc] = []
    yield started
    for p in reversed(started):
        p.stop()


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([dicom_anon(), *args], capture_output=True, text=True, timeout=timeout, check=False)


def manifest_phi(testdata: Path, *more: Path) -> list[str]:
    """Planted strings long enough to search for as bytes (see tests/headers/test_leaks.py for why),
    from the shared test photos' manifests and ``more`` of them."""
    strings: set[str] = set()
    for manifest in [*(testdata / "dicom" / "generated").glob("*noburn*_manifest.json"), *more]:
        strings |= set(json.loads(manifest.read_text())["strings"]["phi"])
    device_identity = {"SN-0429-7781-XZ", "LENS-8842-0071", "DERMCAM03-RM214", "DERMCAM03"}
    return sorted(
        s for s in strings if len(s) >= 4 and not re.fullmatch(r"\d{3}[DWMY]", s) and s not in device_identity
    )


def assert_no_phi(raw: bytes, phi: list[str], where: str) -> None:
    for text in phi:
        for encoding in ("utf-8", "latin-1"):
            try:
                needle = text.encode(encoding)
            except UnicodeEncodeError:
                continue
            assert needle not in raw, f"{text!r} ({encoding}) found in {where}"


def archive_uids(folder: Path) -> list[str]:
    return [
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in sorted(folder.glob("*.dcm"))
    ]


def db_rows(data_dir: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(f"file:{data_dir / 'state' / 'state.sqlite'}?mode=ro", uri=True) as db:
        return db.execute(sql).fetchall()


def verify_then_tamper(data_dir: Path) -> None:
    """The audit chain verifies; after one line is edited, verify fails and names that line."""
    ok = run_cli("audit", "verify", "--data-dir", str(data_dir))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    path = data_dir / "audit" / "audit.jsonl"
    lines = path.read_text().splitlines()
    target = next(i for i, line in enumerate(lines) if '"event":"instance_forwarded"' in line)
    lines[target] = lines[target].replace('"status":"0x0000"', '"status":"0x0001"')
    path.write_text("\n".join(lines) + "\n")
    bad = run_cli("audit", "verify", "--data-dir", str(data_dir))
    assert bad.returncode == 1
    assert f"line {target + 1}" in bad.stdout + bad.stderr


def test_storescu_to_storescp_arrives_de_identified(tmp_path, procs, testdata):
    phi = manifest_phi(testdata)
    generated = testdata / "dicom" / "generated"
    noburn = sorted(generated.glob("*_noburn_*.dcm"))
    burned = [generated / "vlphoto_face_jpeg_baseline.dcm", generated / "vlphoto_intraoral_explicit_le.dcm"]
    tiny = write_photos(tmp_path / "tiny", 3)
    arch_port, port = free_port(), free_port()
    archive = tmp_path / "archive"
    procs.append(start_storescp(tmp_path, arch_port, archive).wait_ready())
    service = start_service(tmp_path, port, [f"teaching=TEACHING@127.0.0.1:{arch_port}"])
    procs.append(service.wait_ready())

    sent = storescu(port, [*noburn, *burned, *tiny])
    assert sent.returncode == 0, sent.stderr
    data_dir = tmp_path / "data"
    wait_until(lambda: len(list(archive.glob("*.dcm"))) == len(noburn) + len(tiny), 60, "every safe file")
    wait_until(lambda: len(events(data_dir, "instance_quarantined")) == len(burned), 10, "quarantine")
    for path in archive.glob("*.dcm"):
        raw = path.read_bytes()
        assert_no_phi(raw, phi, path.name)
        assert_no_phi(raw, list(TINY_PHI), path.name)
        assert pydicom.dcmread(path).PatientIdentityRemoved == "YES"
    assert {e["code"] for e in events(data_dir, "instance_quarantined")} == {"burned-in-annotation"}
    # JPEG photos stay JPEG: the archive accepts it, so nothing is decompressed.
    jpeg_out = [
        p for p in archive.glob("*.dcm") if pydicom.dcmread(p).file_meta.TransferSyntaxUID.is_compressed
    ]
    assert len(jpeg_out) == len([p for p in noburn if "jpeg" in p.name])
    service.stop()
    assert_no_phi(service.output().encode(), [*phi, *TINY_PHI], "the operational log")
    assert_no_phi((data_dir / "audit" / "audit.jsonl").read_bytes(), [*phi, *TINY_PHI], "the audit trail")
    verify_then_tamper(data_dir)


def second_photo(path: Path, out: Path) -> Path:
    """Another instance of the patient's photo (same pixels, so the QA gate decides the same way,
    and a new SOP Instance UID, so the service takes it as a photo of its own)."""
    ds = pydicom.dcmread(path)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(out)
    return out


def test_face_photos_get_one_new_face_and_a_photo_without_one_is_held(tmp_path, procs, testdata):
    """The orthodontic route through the real face pipeline: the face is replaced with the mouth
    kept, the markers say so, and the patient's second photo shows the same new person (the
    store remembers it); an intraoral photo (no face) is quarantined, never forwarded.

    The face is the demo's patient A (96 px between the eyes). The shared test photo's face is
    small (40 px), where the QA gate's verdict swings with small rendering changes (docs/faces.md,
    known weaknesses); this test is about the service path, not that borderline."""
    examples = Path(__file__).resolve().parents[2] / "examples"
    phi = manifest_phi(testdata, examples / "patient_a_face_phi_manifest.json")
    generated = testdata / "dicom" / "generated"
    face = examples / "patient_a_face_explicit_le.dcm"
    again = second_photo(face, tmp_path / "again.dcm")
    intraoral = generated / "vlphoto_intraoral_noburn_explicit_le.dcm"
    arch_port, port = free_port(), free_port()
    archive = tmp_path / "archive"
    procs.append(start_storescp(tmp_path, arch_port, archive).wait_ready())
    service = start_service(tmp_path, port, [f"teaching=TEACHING@127.0.0.1:{arch_port}"], headers_only=False)
    procs.append(service.wait_ready())
    assert storescu(port, [face, again, intraoral]).returncode == 0
    data_dir = tmp_path / "data"
    wait_until(lambda: len(list(archive.glob("*.dcm"))) == 2, 120, "both face photos")
    wait_until(lambda: events(data_dir, "instance_quarantined"), 30, "the intraoral photo held")
    assert [e["code"] for e in events(data_dir, "instance_quarantined")] == ["no-face"]
    before = pydicom.dcmread(face).pixel_array
    for out in archive.glob("*.dcm"):
        result = pydicom.dcmread(out)
        assert_no_phi(out.read_bytes(), phi, out.name)
        assert result.RecognizableVisualFeatures == "NO"
        assert "113102" in {item.CodeValue for item in result.DeidentificationMethodCodeSequence}
        after = result.pixel_array
        assert after.shape == before.shape
        assert (after != before).any(axis=-1).sum() > 2000  # a face's worth of pixels
    first, second = (e["pixels"] for e in events(data_dir, "instance_deidentified"))
    assert first["applied"] and second["applied"]
    (face1,), (face2,) = first["qa"]["faces"], second["qa"]["faces"]
    assert face1["person"] == face2["person"] and face2["remembered"] is True
    service.stop()
    verify_then_tamper(data_dir)


def test_photos_held_for_review_leave_only_once_a_person_releases_them(tmp_path, procs, testdata):
    """The example config with its photo route's ``hold_for_review`` switched on, the real face
    pipeline, and the operator's commands run as processes beside the running service."""
    examples = Path(__file__).resolve().parents[2] / "examples"
    face = examples / "patient_a_face_explicit_le.dcm"
    again = second_photo(face, tmp_path / "again.dcm")
    config = tmp_path / "held.yaml"
    config.write_text(EXAMPLE_CONFIG.read_text().replace("# hold_for_review: true", "hold_for_review: true"))
    arch_port, port = free_port(), free_port()
    archive = tmp_path / "archive"
    procs.append(start_storescp(tmp_path, arch_port, archive).wait_ready())
    destinations = [f"teaching=TEACHING@127.0.0.1:{arch_port}"]
    service = start_service(tmp_path, port, destinations, config=config, headers_only=False)
    procs.append(service.wait_ready())
    assert storescu(port, [face, again]).returncode == 0
    data_dir = tmp_path / "data"
    wait_until(lambda: len(events(data_dir, "instance_quarantined")) == 2, 120, "both photos held")
    first, second = events(data_dir, "instance_quarantined")
    assert {first["code"], second["code"]} == {"awaiting-review"}
    args = ["--config", str(config), "--data-dir", str(data_dir)]
    sheet = tmp_path / "held.png"
    drawn = run_cli("quarantine", "review", "-o", str(sheet), *args)
    assert drawn.returncode == 0 and "2 photo(s) held for review" in drawn.stdout, drawn.stderr
    assert sheet.stat().st_size > 10_000
    time.sleep(2)
    assert not list(archive.glob("*.dcm"))  # nothing leaves by itself

    assert run_cli("quarantine", "release", str(first["quarantine"]), *args).returncode == 0
    assert run_cli("quarantine", "delete", str(second["quarantine"]), "--yes", *args).returncode == 0
    wait_until(lambda: list(archive.glob("*.dcm")), 30, "the released photo")
    wait_until(lambda: events(data_dir, "instance_forwarded"), 10, "the forwarded record")
    [arrived] = list(archive.glob("*.dcm"))
    out = pydicom.dcmread(arrived)
    assert out.SOPInstanceUID == first["new_sop_uid"] and out.RecognizableVisualFeatures == "NO"
    [released] = events(data_dir, "quarantine_released")
    assert released["code"] == "awaiting-review" and released["by"]
    service.stop()
    verify_then_tamper(data_dir)


def orthanc_get(http_port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}{path}", timeout=10) as rsp:
        return rsp.read()


@pytest.mark.skipif(
    shutil.which("Orthanc") is None and not Path("/usr/sbin/Orthanc").exists(),
    reason="Orthanc is not installed",
)
def test_storescu_to_orthanc(tmp_path, procs, testdata):
    phi = manifest_phi(testdata)
    noburn = sorted((testdata / "dicom" / "generated").glob("*_noburn_*.dcm"))
    tiny = write_photos(tmp_path / "tiny", 5)
    dicom_port, http_port, port = free_port(), free_port(), free_port()
    procs.append(start_orthanc(tmp_path, dicom_port, http_port).wait_ready(60))
    wait_until(lambda: _http_ready(http_port), 30, "Orthanc's REST API")
    procs.append(start_service(tmp_path, port, [f"teaching=ORTHANC@127.0.0.1:{dicom_port}"]).wait_ready())

    sent = storescu(port, [*noburn, *tiny])
    assert sent.returncode == 0, sent.stderr
    expected = len(noburn) + len(tiny)
    wait_until(
        lambda: len(json.loads(orthanc_get(http_port, "/instances"))) == expected, 60, "Orthanc instances"
    )
    for instance in json.loads(orthanc_get(http_port, "/instances")):
        raw = orthanc_get(http_port, f"/instances/{instance}/file")
        assert_no_phi(raw, phi, f"Orthanc instance {instance}")
        assert_no_phi(raw, list(TINY_PHI), f"Orthanc instance {instance}")
        tags = json.loads(orthanc_get(http_port, f"/instances/{instance}/simplified-tags"))
        assert tags["PatientID"].startswith("ANON") and tags["PatientIdentityRemoved"] == "YES"


def _http_ready(port: int) -> bool:
    try:
        orthanc_get(port, "/system")
        return True
    except OSError:
        return False


def test_unknown_caller_and_wrong_called_ae_are_rejected(tmp_path, procs):
    port = free_port()
    procs.append(start_service(tmp_path, port, ["teaching=TEACHING@127.0.0.1:9"]).wait_ready())
    [photo] = write_photos(tmp_path / "in", 1)
    assert storescu(port, [photo], aet="STRANGER").returncode != 0
    assert storescu(port, [photo], aec="NOT_US").returncode != 0
    # The readiness probe (a bare TCP connect) is audited too, without AE titles.
    rejected = [r for r in events(tmp_path / "data", "association_rejected") if "calling_ae" in r]
    assert [r["calling_ae"] for r in rejected] == ["STRANGER", "CLINIC"]
    assert "called AE title 'NOT_US'" in rejected[1]["reason"]
    assert not events(tmp_path / "data", "instance_received")


def test_destination_down_for_a_while_none_lost_none_doubled(tmp_path, procs):
    arch_port, port = free_port(), free_port()
    photos = write_photos(tmp_path / "in", 10)
    config = tmp_path / "fast-retry.yaml"
    config.write_text(
        (Path(__file__).resolve().parents[2] / "config" / "dicom-anon.yaml")
        .read_text()
        .replace("first_delay_s: 2 ", "first_delay_s: 0.2 ")
        .replace("max_delay_s: 300", "max_delay_s: 1")
    )
    service = start_service(tmp_path, port, [f"teaching=TEACHING@127.0.0.1:{arch_port}"], config=config)
    procs.append(service.wait_ready())
    assert storescu(port, photos).returncode == 0
    data_dir = tmp_path / "data"
    wait_until(lambda: len(events(data_dir, "delivery_retry")) >= 3, 20, "retries while the archive is down")
    archive = tmp_path / "archive"
    procs.append(start_storescp(tmp_path, arch_port, archive, "+uf").wait_ready())  # +uf: a second copy shows
    wait_until(lambda: len(list(archive.glob("*.dcm"))) >= 10, 30, "all ten after the archive came back")
    time.sleep(1.0)
    uids = archive_uids(archive)
    assert len(uids) == 10 and len(set(uids)) == 10
    assert db_rows(data_dir, "SELECT COUNT(*) FROM deliveries WHERE state = 'delivered'") == [(10,)]


def test_kill_9_mid_send_then_restart_forwards_each_acknowledged_instance_once(tmp_path, procs):
    """Acknowledged means on disk: after kill -9 at a random point in a 200-instance send and a restart
    (and the PACS sending everything again, as it does after a failure), each instance reaches the
    archive with one output UID, nothing sits in the queue, and nothing arrived un-de-identified."""
    arch_port, port = free_port(), free_port()
    photos = write_photos(tmp_path / "in", 200)
    archive = tmp_path / "archive"
    procs.append(start_storescp(tmp_path, arch_port, archive, "+uf").wait_ready())
    dest = [f"teaching=TEACHING@127.0.0.1:{arch_port}"]
    data_dir = tmp_path / "data"
    first = start_service(tmp_path, port, dest, name="first").wait_ready()
    procs.append(first)
    binary = dcmtk("storescu")
    pacs = subprocess.Popen(
        [
            binary,
            "-v",
            "-xy",
            "-aet",
            "CLINIC",
            "-aec",
            "DICOM_ANON",
            "127.0.0.1",
            str(port),
            *map(str, photos),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dcmtk_env(),
    )
    wait_until(lambda: len(events(data_dir, "instance_received")) >= 60, 60, "60 instances in")
    first.kill9()
    log, _ = pacs.communicate(timeout=60)
    acked = acknowledged(log)
    assert 50 <= len(acked) < 200  # killed in the middle, as intended

    second = start_service(tmp_path, port, dest, name="second").wait_ready()
    procs.append(second)
    resent = storescu(port, photos, timeout=180)
    assert resent.returncode == 0, resent.stderr
    wait_until(
        lambda: db_rows(data_dir, "SELECT COUNT(*) FROM deliveries WHERE state = 'delivered'") == [(200,)],
        120,
        "all 200 delivered",
    )
    time.sleep(0.5)
    second.stop()

    key_of = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in photos}
    jobs = {row[0] for row in db_rows(data_dir, "SELECT sop_key FROM jobs")}
    key = SiteKey.load_or_create(data_dir / "site.key")
    acked_uids = [uid for uid, path in key_of.items() if str(path) in acked]
    assert {key.keyed_hash(uid) for uid in acked_uids} <= jobs  # every acknowledged instance was kept
    assert len(jobs) == 200
    assert db_rows(data_dir, "SELECT state, COUNT(*) FROM jobs GROUP BY state") == [("done", 200)]
    assert db_rows(data_dir, "SELECT COUNT(*) FROM deliveries WHERE state != 'delivered'") == [(0,)]
    outputs = {row[0] for row in db_rows(data_dir, "SELECT sop_uid FROM outputs")}
    received = archive_uids(archive)
    assert set(received) == outputs and len(outputs) == 200
    # Exactly once at the archive, by UID. A second reception can only be the one delivery that was
    # in flight at the kill (sent, answered, not yet recorded): it carries the same keyed UID.
    assert len(received) - len(set(received)) <= 1
    for path in archive.glob("*.dcm"):
        assert_no_phi(path.read_bytes(), list(TINY_PHI), path.name)
    assert run_cli("audit", "verify", "--data-dir", str(data_dir)).returncode == 0


def test_bad_input_gets_an_error_status_and_the_service_goes_on(tmp_path, procs):
    port = free_port()
    procs.append(start_service(tmp_path, port, ["teaching=TEACHING@127.0.0.1:9"]).wait_ready())
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(to_bytes(tiny_photo())[:-30])
    ae = AE(ae_title="CLINIC")
    old = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # send the bytes as they are
    try:
        assoc = ae.associate(
            "127.0.0.1", port, contexts=[build_context(tiny_photo().SOPClassUID)], ae_title="DICOM_ANON"
        )
        status = assoc.send_c_store(truncated).Status
        assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = old
    assert 0xC000 <= status <= 0xCFFF
    mpeg2 = "1.2.840.10008.1.2.4.100"  # no decoder here, so the context is refused at negotiation
    ds = tiny_photo()
    ds.file_meta.TransferSyntaxUID = mpeg2
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60)])
    contexts = [build_context(ds.SOPClassUID, [mpeg2]), build_context(Verification)]
    assoc = ae.associate("127.0.0.1", port, contexts=contexts, ae_title="DICOM_ANON")
    assert assoc.is_established
    assert [cx.abstract_syntax for cx in assoc.accepted_contexts] == [Verification]
    with pytest.raises(ValueError, match="No presentation context"):
        assoc.send_c_store(ds)
    assoc.release()
    [good] = write_photos(tmp_path / "in", 1)
    assert storescu(port, [good]).returncode == 0
    data_dir = tmp_path / "data"
    assert events(data_dir, "instance_refused")[0]["code"] == "corrupt-dicom"
    assert any(e["contexts_rejected"] for e in events(data_dir, "association_accepted"))
    assert len(events(data_dir, "instance_received")) == 1


def test_sighup_with_a_bad_file_keeps_the_rules(tmp_path, procs):
    arch_port, port = free_port(), free_port()
    config = tmp_path / "live.yaml"
    example = (
        (Path(__file__).resolve().parents[2] / "config" / "dicom-anon.yaml")
        .read_text()
        .replace("profile: orthodontic", "profile: basic")
    )
    config.write_text(example)
    archive = tmp_path / "archive"
    procs.append(start_storescp(tmp_path, arch_port, archive).wait_ready())
    service = start_service(
        tmp_path, port, [f"teaching=TEACHING@127.0.0.1:{arch_port}"], config=config, headers_only=False
    )
    procs.append(service.wait_ready())
    config.write_text(example.replace("profile: basic", "profile: orthodontal", 1))
    service.signal(signal.SIGHUP)
    data_dir = tmp_path / "data"
    wait_until(lambda: events(data_dir, "config_reload_failed"), 10, "the failed reload")
    assert "unknown profile 'orthodontal'" in events(data_dir, "config_reload_failed")[0]["error"]
    # The audit record and the log line are written by different streams: wait for both.
    wait_until(lambda: "keeping the rules in force" in service.output(), 10, "the reload log line")
    photos = write_photos(tmp_path / "in", 2)
    assert storescu(port, photos[:1]).returncode == 0
    wait_until(lambda: len(list(archive.glob("*.dcm"))) == 1, 20, "forwarded under the kept rules")
    config.write_text(
        example.replace("unmatched: quarantine", "unmatched: drop")
        .replace(
            "  - name: everything-else\n    action: forward\n"
            "    profile: basic\n    destinations: [teaching]\n",
            "",
        )
        .replace(
            "    action: forward\n    profile: basic\n    destinations: [teaching]\n",
            "    action: drop\n",
        )
    )
    service.signal(signal.SIGHUP)
    wait_until(lambda: events(data_dir, "config_reloaded"), 10, "the good reload")
    assert storescu(port, photos[1:]).returncode == 0
    wait_until(lambda: events(data_dir, "instance_dropped"), 10, "dropped under the new rules")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_tls_only_refuses_plain_and_forwards_over_tls(tmp_path, procs):
    pki = make_pki(tmp_path / "pki")
    arch_port, port = free_port(), free_port()
    archive = tmp_path / "archive"
    # The archive speaks TLS too and wants our client certificate.
    procs.append(
        start_storescp(
            tmp_path,
            arch_port,
            archive,
            "+tls",
            str(pki / "server.key"),
            str(pki / "server.pem"),
            "+cf",
            str(pki / "ca.pem"),
            "-rc",
        ).wait_ready()
    )
    config = tmp_path / "tls.yaml"
    config.write_text(f"""\
ingress:
  allowed_callers: [{{ae_title: CLINIC, addresses: [127.0.0.1]}}]
  tls:
    certificate: {pki}/server.pem
    private_key: {pki}/server.key
    client_ca: {pki}/ca.pem
    require_client_certificate: true
destinations:
  teaching:
    ae_title: TEACHING
    host: 127.0.0.1
    port: {arch_port}
    tls: {{ca: {pki}/ca.pem, certificate: {pki}/client.pem, private_key: {pki}/client.key}}
routes:
  - {{name: photos, profile: orthodontic, destinations: [teaching]}}
""")
    check = run_cli("rules", "check", str(config))
    assert check.returncode == 0, check.stdout + check.stderr
    procs.append(start_service(tmp_path, port, [], config=config).wait_ready())
    photos = write_photos(tmp_path / "in", 2)
    assert storescu(port, photos[:1]).returncode != 0  # plain TCP to a TLS-only port
    tls = ("+tls", str(pki / "client.key"), str(pki / "client.pem"), "+cf", str(pki / "ca.pem"))
    assert (
        storescu(port, photos[1:], extra=("+tla", "+cf", str(pki / "ca.pem"))).returncode != 0
    )  # no client cert
    sent = storescu(port, photos[1:], extra=tls)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    wait_until(lambda: len(list(archive.glob("*.dcm"))) == 1, 20, "the instance over TLS at the TLS archive")
    # The first refusal is the readiness probe (a bare TCP connect); then plain DICOM, then no certificate.
    reasons = [r["reason"] for r in events(tmp_path / "data", "association_rejected")][-2:]
    assert "WRONG_VERSION_NUMBER" in reasons[0] and "PEER_DID_NOT_RETURN_A_CERTIFICATE" in reasons[1]
    assert all(r.startswith("TLS handshake failed") for r in reasons)
