"""The Review page under each held photo: its QA figures as the service recorded them. A real
service (in this process, with the real face pipeline) holds a face photo for review; the console
reads the same data dir."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from pynetdicom import AE, build_context
from webkit import LENIENT, SETTINGS, make_console, signed_in

from dicom_anon.dicomio import read_instance
from dicom_anon.service.app import Service
from dicom_anon.service.worker import face_pixel_stage


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_held_photo_shows_its_qa_figures(tmp_path: Path, testdata: Path) -> None:
    port = free_port()
    console = make_console(
        tmp_path,
        {
            **SETTINGS,
            "ingress": {**SETTINGS["ingress"], "listen": f"127.0.0.1:{port}"},
            "destinations": {"teaching": {"folder": str(tmp_path / "archive")}},
            "profiles": {"faces": {"pixels": LENIENT}},
            "routes": [
                {"name": "photos", "profile": "faces", "destinations": "teaching", "hold_for_review": True}
            ],
        },
    )
    service = Service(console.settings, pixel_stage=face_pixel_stage)
    service.start()
    try:
        photo = read_instance(testdata / "dicom" / "generated" / "vlphoto_face_noburn_explicit_le.dcm")
        ae = AE(ae_title="CLINIC")
        context = build_context(photo.SOPClassUID, [photo.file_meta.TransferSyntaxUID])
        assoc = ae.associate("127.0.0.1", port, contexts=[context], ae_title="DICOM_ANON")
        assert assoc.is_established
        assert int(assoc.send_c_store(photo).Status) == 0
        assoc.release()
        client, _ = signed_in(console, "olivia")
        deadline = time.monotonic() + 120
        while 'class="tile"' not in (page := client.get("/review").text) and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        service.stop()
    tile = page[page.index('class="tile"') :]
    tile = tile[: tile.index("</label>")]
    assert "route photos" in tile
    qa = tile[tile.index('<span class="qa">') :]
    assert "frame 1 face 1: new face openpeople-" in qa and "(pool), oval " in qa
    assert "SFace similarity to the patient 0." in qa and "dlib distance 0." in qa
    assert "cheek colour moved " in qa and "delta E, reads as F (" in qa
    assert "found again, preserved area changed by 0" in qa
    assert "surrogate: " in qa and "pixels kept exactly, stored copy differs there by 0" in qa
