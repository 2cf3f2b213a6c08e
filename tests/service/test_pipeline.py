"""Worker and egress in a running service: routes, de-identification, quarantine, retries, destinations."""

from __future__ import annotations

import io
import json
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import settings_for
from factories import to_bytes
from peers import TINY_PHI, events, free_port, tiny_photo, wait_until
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit
from pynetdicom import AE, build_context, evt
from test_store import job, output
from typer.testing import CliRunner

from dicom_anon.cli import app
from dicom_anon.config import load_settings
from dicom_anon.service.app import Service
from dicom_anon.service.store import open_store
from dicom_anon.service.store_sqlite import SqliteStore

runner = CliRunner()


def send(port: int, *datasets) -> list[int]:
    ae = AE(ae_title="CLINIC")
    contexts = [build_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID]) for ds in datasets]
    assoc = ae.associate("127.0.0.1", port, contexts=contexts, ae_title="DICOM_ANON")
    assert assoc.is_established
    statuses = [int(assoc.send_c_store(ds).Status) for ds in datasets]
    assoc.release()
    return statuses


def jpeg_photo(index: int = 0):
    """A 16x16 JPEG Baseline photo, as the clinic cameras send them."""
    ds = tiny_photo(index)
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 0] = np.arange(16)[None, :] * 15
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    ds.Rows = ds.Columns = 16
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.LossyImageCompression = "01"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    return ds


def data(service) -> Path:
    return service.settings.data_dir


def archived(service) -> list[Path]:
    folder = Path(service.settings.destinations["teaching"].folder)
    return sorted(folder.glob("*.dcm")) if folder.exists() else []


def no_phi(raw: bytes) -> None:
    for text in TINY_PHI:
        assert text.encode() not in raw, text


def test_photo_arrives_de_identified_and_the_spool_is_emptied(start_service):
    service = start_service()
    ds = tiny_photo()
    assert send(service.port, ds) == [0]
    wait_until(lambda: archived(service), 10, "the archived file")
    [path] = archived(service)
    raw = path.read_bytes()
    no_phi(raw)
    out = pydicom.dcmread(path)
    assert path.name == f"{out.SOPInstanceUID}.dcm" and out.SOPInstanceUID != ds.SOPInstanceUID
    assert out.PatientIdentityRemoved == "YES"
    wait_until(lambda: events(data(service), "instance_forwarded"), 5, "the forwarded event")
    [forwarded] = events(data(service), "instance_forwarded")
    [deid] = events(data(service), "instance_deidentified")
    assert forwarded["patient"] == deid["patient"] == out.PatientID
    assert forwarded["new_sop_uid"] == out.SOPInstanceUID and forwarded["status"] == "0x0000"
    assert deid["pixels"] == {"applied": False, "reason": "profile has no pixel settings"}
    assert deid["profile"] == "basic"
    assert set(deid["versions"]) == {"dicom_anon", "pydicom", "pynetdicom"}
    wait_until(lambda: not list((data(service) / "spool").rglob("*.dcm")), 5, "the spool to empty")
    assert not list((data(service) / "outbox").iterdir())


@pytest.mark.parametrize("profile", ["orthodontic", "intraoral"])
def test_a_photo_profile_without_the_face_pipeline_is_held_not_sent_by_its_headers(start_service, profile):
    """Fail closed: a service started without the pixel stage cannot replace a face or check an
    intraoral photo for one, so the photo is held (it used to leave de-identified by its headers)."""
    service = start_service(routes=[{"name": "photos", "profile": profile, "destinations": ["teaching"]}])
    assert send(service.port, tiny_photo()) == [0]
    wait_until(lambda: events(data(service), "instance_quarantined"), 10, "the quarantine event")
    [held] = events(data(service), "instance_quarantined")
    assert held["code"] == "method-unavailable" and "face pipeline" in held["reason"]
    time.sleep(0.5)
    assert archived(service) == [] and not events(data(service), "instance_forwarded")


def test_keep_days_keeps_the_original(start_service):
    service = start_service(spool={"keep_days": 3})
    send(service.port, tiny_photo())
    wait_until(lambda: archived(service), 10, "the archived file")
    assert len(list((data(service) / "spool").rglob("*.dcm"))) == 1


def test_an_original_whose_removal_a_kill_cut_short_is_removed_by_housekeeping(start_service):
    """A node killed after a job was finished but before its original was removed leaves the row
    naming the file; on a shared spool no node's start-up sweep would take it (the multi-node CI
    failure), so housekeeping does."""
    service = start_service()
    send(service.port, tiny_photo())
    wait_until(lambda: archived(service), 10, "the archived file")
    wait_until(lambda: not list((data(service) / "spool").rglob("*.dcm")), 5, "the spool to empty")
    left = service.layout.new_spool_path()
    left.write_bytes(b"the original")
    with service.store.transaction(durable=False) as db:
        db.execute("UPDATE jobs SET spool_path = ?", (service.layout.rel(left),))
    assert service.purge_spool() == 1
    assert not left.exists() and service.store.spool_paths() == set()
    assert service.purge_spool() == 0


def test_burned_in_photo_is_quarantined_released_and_deleted(start_service):
    service = start_service()
    send(service.port, tiny_photo(burned_in="YES"))
    wait_until(lambda: events(data(service), "instance_quarantined"), 10, "quarantine")
    [q] = events(data(service), "instance_quarantined")
    assert q["code"] == "burned-in-annotation" and q["stage"] == "deid" and q["route"] == "photos"
    assert not archived(service)
    args = ["--data-dir", str(data(service))]
    listing = runner.invoke(app, ["quarantine", "list", *args], terminal_width=200)
    assert listing.exit_code == 0 and "burned-in-annotation" in listing.output
    released = runner.invoke(app, ["quarantine", "release", str(q["quarantine"]), *args])
    assert released.exit_code == 0, released.output
    # Release never skips de-identification: the same refusal, a new quarantine item.
    wait_until(lambda: len(events(data(service), "instance_quarantined")) == 2, 10, "re-quarantine")
    again = events(data(service), "instance_quarantined")[1]["quarantine"]
    assert again != q["quarantine"] and not archived(service)
    deleted = runner.invoke(app, ["quarantine", "delete", str(again), "--yes", *args])
    assert deleted.exit_code == 0, deleted.output
    assert not [p for p in (data(service) / "quarantine").iterdir()]
    [rel] = events(data(service), "quarantine_released")
    [dele] = events(data(service), "quarantine_deleted")
    assert rel["by"] and dele["by"] and dele["quarantine"] == again
    twice = runner.invoke(app, ["quarantine", "delete", str(again), "--yes", *args])
    assert twice.exit_code == 1 and "already deleted" in twice.output


@pytest.mark.parametrize(
    ("unmatched", "event"), [("quarantine", "instance_quarantined"), ("drop", "instance_dropped")]
)
def test_unmatched_instances(start_service, unmatched, event):
    service = start_service(
        routes=[{"name": "none", "match": {"modality": "SR"}, "action": "drop"}], unmatched=unmatched
    )
    send(service.port, tiny_photo())
    wait_until(lambda: events(data(service), event), 10, event)
    assert not archived(service)


def test_continue_sends_one_instance_through_two_routes(start_service, tmp_path):
    service = start_service(
        destinations={
            "teaching": {"folder": str(tmp_path / "archive")},
            "second": {"folder": str(tmp_path / "b")},
        },
        routes=[
            {"name": "first", "profile": "basic", "destinations": ["teaching"], "continue": True},
            {"name": "again", "profile": "basic", "destinations": ["second"]},
        ],
    )
    send(service.port, tiny_photo())
    wait_until(lambda: len(events(data(service), "instance_forwarded")) == 2, 10, "two deliveries")
    assert {e["route"] for e in events(data(service), "instance_forwarded")} == {"first", "again"}


def dicom_destination(port: int) -> dict:
    return {"teaching": {"ae_title": "TEACHING", "host": "127.0.0.1", "port": port}}


def test_jpeg_kept_when_the_destination_accepts_it(start_service, archive):
    scp = archive()
    service = start_service(destinations=dicom_destination(scp.port))
    send(service.port, jpeg_photo())
    scp.wait_for(1)
    assert scp.syntaxes == [JPEGBaseline8Bit]


def test_decompressed_only_when_the_destination_refuses_jpeg(start_service, archive):
    scp = archive(syntaxes=(ExplicitVRLittleEndian,))
    service = start_service(destinations=dicom_destination(scp.port))
    send(service.port, jpeg_photo())
    [ds] = scp.wait_for(1)
    assert scp.syntaxes == [ExplicitVRLittleEndian]
    assert ds.PixelData and len(ds.PixelData) == 16 * 16 * 3


def test_one_association_is_reused_for_many_instances(start_service, archive):
    scp = archive()
    service = start_service(destinations=dicom_destination(scp.port))
    accepted: list[str] = []
    scp.server.bind(evt.EVT_ACCEPTED, lambda e: accepted.append(e.assoc.requestor.ae_title))
    send(service.port, *[tiny_photo(i) for i in range(10)])
    scp.wait_for(10)
    assert len(accepted) == 1


def test_warning_status_counts_as_delivered(start_service, archive):
    scp = archive(status=0xB000)
    service = start_service(destinations=dicom_destination(scp.port))
    send(service.port, tiny_photo())
    scp.wait_for(1)
    wait_until(lambda: events(data(service), "instance_forwarded"), 5, "forwarded")
    assert events(data(service), "instance_forwarded")[0]["status"] == "0xB000"
    assert not events(data(service), "instance_quarantined")


def test_permanent_refusal_quarantines_and_release_retries(start_service, archive):
    scp = archive(status=0xA900)
    service = start_service(destinations=dicom_destination(scp.port))
    send(service.port, tiny_photo())
    wait_until(lambda: events(data(service), "instance_quarantined"), 10, "egress quarantine")
    [q] = events(data(service), "instance_quarantined")
    assert q["stage"] == "egress" and q["code"] == "refused-0xA900" and q["destination"] == "teaching"
    assert len(scp.received) == 1
    scp.status = 0x0000  # the archive was fixed
    result = runner.invoke(
        app, ["quarantine", "release", str(q["quarantine"]), "--data-dir", str(data(service))]
    )
    assert result.exit_code == 0, result.output
    scp.wait_for(2)
    wait_until(lambda: events(data(service), "instance_forwarded"), 5, "forwarded")
    assert scp.received[0].SOPInstanceUID == scp.received[1].SOPInstanceUID


def test_destination_down_retries_with_backoff_then_delivers_once(start_service, archive):
    port = free_port()
    service = start_service(destinations=dicom_destination(port))
    send(service.port, *[tiny_photo(i) for i in range(3)])
    wait_until(lambda: len(events(data(service), "delivery_retry")) >= 2, 10, "two retries")
    delays = [e["retry_in_s"] for e in events(data(service), "delivery_retry")]
    assert delays[1] > delays[0]  # exponential
    scp = archive(port=port)
    received = scp.wait_for(3, timeout=15)
    wait_until(lambda: len(events(data(service), "instance_forwarded")) == 3, 5, "forwarded")
    assert len({ds.SOPInstanceUID for ds in received}) == 3 and len(scp.received) == 3


def test_a_down_destination_does_not_block_another(start_service, archive, tmp_path):
    down = free_port()
    scp = archive()
    service = start_service(
        destinations={
            "down": {"ae_title": "X", "host": "127.0.0.1", "port": down},
            "teaching": {"ae_title": "TEACHING", "host": "127.0.0.1", "port": scp.port},
        },
        routes=[
            {"name": "to-down", "profile": "basic", "destinations": ["down"], "continue": True},
            {"name": "to-up", "profile": "basic", "destinations": ["teaching"]},
        ],
        egress={"retry": {"first_delay_s": 30, "max_delay_s": 60}},
    )
    send(service.port, *[tiny_photo(i) for i in range(3)])
    scp.wait_for(3)
    counts = SqliteStore(service.settings.state_path).counts()
    assert counts["deliveries.pending"] == 3 and counts["deliveries.delivered"] == 3


def test_reload_keeps_old_rules_on_a_bad_file_and_takes_a_good_one(tmp_path):
    port = free_port()
    base = settings_for(tmp_path, port)
    raw = base.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    config = tmp_path / "settings.yaml"
    config.write_text(json.dumps(raw))  # JSON is YAML
    service = Service(load_settings(config), config)
    service.start()
    try:
        config.write_text(json.dumps(raw).replace('"photos"', '"photos", "oops": 1'))
        assert service.reload() is False
        [failed] = events(data(service), "config_reload_failed")
        assert "unknown setting 'oops'" in failed["error"] and "settings.yaml:1" in failed["error"]
        send(port, tiny_photo())
        wait_until(lambda: events(data(service), "instance_forwarded"), 10, "forwarded under the old rules")
        raw["routes"][0]["action"] = "drop"
        del raw["routes"][0]["profile"], raw["routes"][0]["destinations"]
        config.write_text(json.dumps(raw))
        assert service.reload() is True
        [reloaded] = events(data(service), "config_reloaded")
        assert len(reloaded["config_sha256"]) == 64
        send(port, tiny_photo(1))
        wait_until(lambda: events(data(service), "instance_dropped"), 10, "dropped under the new rules")
    finally:
        service.stop()


@contextmanager
def received_not_processed(tmp_path: Path):
    """A service whose workers are stopped, holding one acknowledged photo in its spool; it stops
    when the block ends, before any worker saw the job."""
    port = free_port()
    settings = settings_for(tmp_path, port)
    service = Service(settings)
    service.start()
    for w in service.workers:
        w.stop()
        w.join()
    try:
        send(port, tiny_photo())
        yield service
    finally:
        service.stop()


def test_restart_recovers_a_job_cut_off_mid_processing(tmp_path):
    with received_not_processed(tmp_path) as first:
        settings = first.settings
        job = first.store.claim_job()  # as if a worker had it when the process died
        assert job is not None
    second = Service(settings)
    second.start()
    try:
        folder = Path(settings.destinations["teaching"].folder)
        wait_until(lambda: list(folder.glob("*.dcm")), 10, "the recovered job's output")
        started = events(settings.data_dir, "service_started")
        assert started[-1]["recovered_jobs"] == 1
    finally:
        second.stop()


def test_a_spool_file_changed_after_the_acknowledgement_is_quarantined_not_trusted(tmp_path):
    """De-identification trusts ingress's strict reading only for the very bytes it read: a spool
    file altered on disk (here a name written back into it) is held with its own code."""
    with received_not_processed(tmp_path) as first:
        settings = first.settings
        [spooled] = list((settings.data_dir / "spool").rglob("*.dcm"))
    raw = spooled.read_bytes()
    name = str(tiny_photo().PatientName).encode()
    spooled.write_bytes(raw.replace(name, name[::-1]))
    second = Service(settings)
    second.start()
    try:
        wait_until(lambda: events(settings.data_dir, "instance_quarantined"), 10, "the quarantine")
        [held] = events(settings.data_dir, "instance_quarantined")
        assert (held["stage"], held["code"]) == ("decode", "spool-altered")
        assert not list(Path(settings.destinations["teaching"].folder).glob("*.dcm"))
    finally:
        second.stop()


def test_leftover_half_written_files_are_swept_at_start(tmp_path):
    settings = settings_for(tmp_path, free_port())
    stray = settings.data_dir / "spool" / "20000101" / "never-recorded.dcm"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(to_bytes(tiny_photo()))
    service = Service(settings)
    service.start()
    service.stop()
    assert not stray.exists()
    assert events(settings.data_dir, "service_started")[0]["swept_files"] == 1


def test_a_delivered_outputs_file_a_kill_left_behind_is_removed_at_start(tmp_path):
    # The sender recorded the delivery and was killed before it removed the file: the row still
    # names the file, and the next start removes it (on a shared root it may be another node's).
    settings = settings_for(tmp_path, free_port())
    first = Service(settings)
    first.start()
    first.stop()
    store = open_store(settings)
    job_id, _ = store.add_job(job(1))
    store.claim_job()
    (delivery,), _, _ = store.finish_routing(job_id, [output()], [])
    left = settings.data_dir / store.mark_delivered(delivery, 0x0000).output_path
    store.close()
    left.parent.mkdir(parents=True, exist_ok=True)
    left.write_bytes(to_bytes(tiny_photo()))
    second = Service(settings)
    second.start()
    second.stop()
    assert not left.exists()
    assert events(settings.data_dir, "service_started")[-1]["swept_files"] == 1


# --- photos held for review ------------------------------------------------------------


HELD_ROUTE = [{"name": "photos", "profile": "basic", "destinations": ["teaching"], "hold_for_review": True}]


def held_events(service, count: int) -> list[dict]:
    wait_until(lambda: len(events(data(service), "instance_quarantined")) == count, 10, "held photos")
    return events(data(service), "instance_quarantined")


def test_a_route_held_for_review_sends_nothing_until_a_person_releases(start_service, tmp_path):
    service = start_service(routes=HELD_ROUTE)
    assert send(service.port, tiny_photo(0), tiny_photo(1, patient_id="MRN7")) == [0, 0]
    first, second = held_events(service, 2)
    deidentified = {e["new_sop_uid"] for e in events(data(service), "instance_deidentified")}
    for held in (first, second):
        assert (held["stage"], held["code"], held["destination"]) == ("review", "awaiting-review", "teaching")
        assert held["new_sop_uid"] in deidentified
    # The originals are no longer needed: what waits is the de-identified copy, in quarantine.
    wait_until(lambda: not list((data(service) / "spool").rglob("*.dcm")), 5, "the spool to empty")
    copies = sorted((data(service) / "quarantine").rglob("instance.dcm"))
    assert len(copies) == 2 and not list((data(service) / "outbox").iterdir())
    for copy in copies:
        no_phi(copy.read_bytes())
        assert pydicom.dcmread(copy).PatientIdentityRemoved == "YES"
    assert not archived(service)

    args = ["--data-dir", str(data(service))]
    listing = runner.invoke(app, ["quarantine", "list", *args], terminal_width=250)
    assert first["patient"] in listing.output and second["patient"] in listing.output
    sheet = tmp_path / "held.png"
    drawn = runner.invoke(app, ["quarantine", "review", "-o", str(sheet), *args], terminal_width=200)
    assert drawn.exit_code == 0, drawn.output
    assert "2 photo(s) held for review" in drawn.output and Image.open(sheet).size[0] > 0
    # The hint can be typed as it is: it names the data dir the operator gave.
    assert f"dicom-anon quarantine release ID... --data-dir {data(service)}" in drawn.output

    released = runner.invoke(app, ["quarantine", "release", str(first["quarantine"]), *args])
    assert released.exit_code == 0 and "approved, sent to teaching" in released.output, released.output
    wait_until(lambda: archived(service), 10, "the released photo")
    [path] = archived(service)
    assert pydicom.dcmread(path).SOPInstanceUID == first["new_sop_uid"]
    deleted = runner.invoke(app, ["quarantine", "delete", str(second["quarantine"]), "--yes", *args])
    assert deleted.exit_code == 0, deleted.output
    wait_until(lambda: events(data(service), "instance_forwarded"), 5, "the forwarded event")
    [forwarded] = events(data(service), "instance_forwarded")
    assert forwarded["new_sop_uid"] == first["new_sop_uid"] and len(archived(service)) == 1
    assert not list((data(service) / "quarantine").iterdir())
    [approved] = events(data(service), "quarantine_released")
    [withdrawn] = events(data(service), "quarantine_deleted")
    assert approved["code"] == withdrawn["code"] == "awaiting-review" and approved["by"] and withdrawn["by"]
    # Each decision names the photo it was about.
    assert (approved["new_sop_uid"], withdrawn["new_sop_uid"]) == (
        first["new_sop_uid"],
        second["new_sop_uid"],
    )
    assert approved["patient"] == first["patient"] and withdrawn["patient"] == second["patient"]
    who = ["audit", "query", "--event", "quarantine_released", "--status", "awaiting-review", *args]
    asked = runner.invoke(app, who, terminal_width=250)
    assert asked.exit_code == 0 and f"item {first['quarantine']} by {approved['by']}" in asked.output
    unfolded = "".join(ch for ch in asked.output if ch not in "│ \n")  # the table folds long UIDs
    assert first["new_sop_uid"] in unfolded and first["patient"] in asked.output
    empty = runner.invoke(app, ["quarantine", "review", "-o", str(tmp_path / "none.png"), *args])
    assert empty.exit_code == 0 and "no photos are held" in empty.output
    assert not (tmp_path / "none.png").exists()


def test_the_review_sheet_points_to_items_held_for_other_reasons(start_service, tmp_path):
    service = start_service(routes=HELD_ROUTE)
    send(service.port, tiny_photo(0), tiny_photo(1, burned_in="YES"))
    held_events(service, 2)
    args = ["--data-dir", str(data(service))]
    drawn = runner.invoke(
        app, ["quarantine", "review", "-o", str(tmp_path / "h.png"), *args], terminal_width=250
    )
    assert drawn.exit_code == 0, drawn.output
    assert "1 photo(s) held for review" in drawn.output
    assert (
        f"1 other item(s) held for other reasons: dicom-anon quarantine list --data-dir {data(service)}"
        in (drawn.output)
    )


def test_each_destination_holds_its_own_copy(start_service, tmp_path):
    route = [{**HELD_ROUTE[0], "destinations": ["teaching", "second"]}]
    service = start_service(routes=route, destinations={"second": {"folder": str(tmp_path / "second")}})
    send(service.port, tiny_photo())
    held = held_events(service, 2)
    assert sorted(e["destination"] for e in held) == ["second", "teaching"]
    assert held[0]["quarantine"] != held[1]["quarantine"]
    to_second = next(e["quarantine"] for e in held if e["destination"] == "second")
    args = ["--data-dir", str(data(service))]
    result = runner.invoke(app, ["quarantine", "release", str(to_second), "999", *args])
    # One bad id is reported and does not stop the others; the exit status says something failed.
    assert result.exit_code == 1 and "no quarantine item 999" in result.output
    wait_until(lambda: list((tmp_path / "second").glob("*.dcm")), 10, "the copy for 'second'")
    assert not archived(service)


def test_held_photos_survive_a_restart_and_a_crash_leftover_is_swept(tmp_path):
    settings = settings_for(tmp_path, free_port(), routes=HELD_ROUTE)
    first = Service(settings)
    first.start()
    send(settings.ingress.port, tiny_photo())
    [held] = held_events(first, 1)
    first.stop()
    # What a crash between writing a job's quarantine folder and committing the job leaves.
    stray = settings.data_dir / "quarantine" / "0123abcd"
    stray.mkdir()
    (stray / "instance.dcm").write_bytes(b"half")
    second = Service(settings)
    second.start()
    try:
        assert not stray.exists() and len(list((settings.data_dir / "quarantine").iterdir())) == 1
        args = ["--data-dir", str(settings.data_dir)]
        released = runner.invoke(app, ["quarantine", "release", str(held["quarantine"]), *args])
        assert released.exit_code == 0, released.output
        folder = Path(settings.destinations["teaching"].folder)
        wait_until(lambda: list(folder.glob("*.dcm")), 10, "the released photo after the restart")
    finally:
        second.stop()
