"""A clinic's photo set through the running service: each view takes its route; intraoral photos
arrive with their pixels as sent and their headers de-identified; profiles and a face sent as
intraoral are held with their reasons and never forwarded."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pydicom
import pytest
from conftest import settings_for
from dentalkit import DENTAL_ROUTES, sample_set
from peers import events, free_port, wait_until
from pynetdicom import AE, build_context

from dicom_anon.headers.pseudonyms import SiteKey
from dicom_anon.service.app import Service
from dicom_anon.service.worker import face_pixel_stage

SENT = (
    "profile-coded",
    "profile-uncoded",
    "intraoral-coded",
    "intraoral-uncoded",
    "occlusal-upper-coded",
    "face-coded-as-intraoral",
)


def send(port: int, datasets: list) -> list[int]:
    ae = AE(ae_title="CLINIC")
    contexts = [build_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID]) for ds in datasets]
    assoc = ae.associate("127.0.0.1", port, contexts=contexts, ae_title="DICOM_ANON")
    assert assoc.is_established
    statuses = [int(assoc.send_c_store(ds).Status) for ds in datasets]
    assoc.release()
    return statuses


def held(data_dir: Path) -> dict[str, dict]:
    """Original SOP Instance UID -> the quarantine's reason file."""
    out = {}
    for folder in (data_dir / "quarantine").iterdir() if (data_dir / "quarantine").exists() else []:
        if (folder / "reason.json").exists() and (folder / "instance.dcm").exists():
            uid = pydicom.dcmread(folder / "instance.dcm", stop_before_pixels=True).SOPInstanceUID
            out[str(uid)] = json.loads((folder / "reason.json").read_text())
    return out


@pytest.fixture
def service(tmp_path):
    """The service as ``serve`` runs it: with the face pipeline as its pixel stage."""
    port = free_port()
    service = Service(settings_for(tmp_path, port, routes=DENTAL_ROUTES), pixel_stage=face_pixel_stage)
    service.start()
    service.port = port  # type: ignore[attr-defined]
    yield service
    service.stop()


def test_the_set_takes_its_routes_through_the_service(service, testdata, tmp_path):
    samples = sample_set(testdata)
    data_dir = service.settings.data_dir
    originals = {name: samples[name][0] for name in SENT}
    assert send(service.port, list(originals.values())) == [0] * len(SENT)

    def outcomes() -> int:
        return len(events(data_dir, "instance_deidentified")) + len(events(data_dir, "instance_quarantined"))

    wait_until(lambda: outcomes() >= len(SENT), 120, "every photo forwarded or held")
    key = SiteKey.load_or_create(data_dir / "site.key")
    forwarded = {e["new_sop_uid"]: e for e in events(data_dir, "instance_deidentified")}
    holds = held(data_dir)
    archive = tmp_path / "archive"
    wait_until(lambda: len(list(archive.glob("*.dcm"))) >= 3, 20, "the intraoral photos in the archive")
    received = {str(pydicom.dcmread(p).SOPInstanceUID): p for p in archive.glob("*.dcm")}

    for name in ("profile-coded", "profile-uncoded"):
        note = holds[str(originals[name].SOPInstanceUID)]
        assert (note["route"], note["code"]) == ("profiles", "profile-view"), name

    note = holds[str(originals["face-coded-as-intraoral"].SOPInstanceUID)]
    assert (note["route"], note["code"]) == ("intraoral", "face-in-intraoral")
    assert key.uid(originals["face-coded-as-intraoral"].SOPInstanceUID) not in received

    manifest = json.loads(
        (testdata / "dicom/generated/vlphoto_intraoral_noburn_phi_manifest.json").read_text()
    )
    phi = [s for s in manifest["strings"]["phi"] if len(s) >= 6]
    for name in ("intraoral-coded", "intraoral-uncoded", "occlusal-upper-coded"):
        new_uid = key.uid(originals[name].SOPInstanceUID)
        assert forwarded[new_uid]["route"] == "intraoral", name
        [check] = forwarded[new_uid]["pixels"]["qa"]["no_face_check"]
        assert not any(check.values())
        path = received[new_uid]
        out = pydicom.dcmread(path)
        assert out.PixelData == originals[name].PixelData  # the pixels as the clinic sent them
        assert out.PatientIdentityRemoved == "YES"
        raw = path.read_bytes().decode("latin-1") + path.read_bytes().decode("utf-8", "replace")
        leaked = [s for s in phi if re.search(re.escape(s), raw)]
        assert not leaked, name
