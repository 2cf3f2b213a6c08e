"""The Review page under each held photo: its QA figures as the service recorded them. A real
service (in this process, with the real face pipeline) holds a face photo for review; the console
reads the same data dir."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np
import pytest
from factories import pixel_module, vl_photo
from PIL import Image
from pydicom.dataset import Dataset
from pynetdicom import AE, build_context
from typer.testing import CliRunner
from webkit import LENIENT, SETTINGS, make_console, signed_in

from dicom_anon.cli import app
from dicom_anon.dicomio import read_instance
from dicom_anon.lab.evaluate import openpeople_images
from dicom_anon.service.app import Service
from dicom_anon.service.worker import face_pixel_stage

runner = CliRunner()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def send(port: int, *photos: Dataset) -> None:
    ae = AE(ae_title="CLINIC")
    contexts = [build_context(p.SOPClassUID, [p.file_meta.TransferSyntaxUID]) for p in photos[:1]]
    assoc = ae.associate("127.0.0.1", port, contexts=contexts, ae_title="DICOM_ANON")
    assert assoc.is_established
    assert [int(assoc.send_c_store(p).Status) for p in photos] == [0] * len(photos)
    assoc.release()


def test_a_route_holds_only_the_photos_whose_new_face_sex_is_a_guess(tmp_path: Path) -> None:
    """``hold_for_review: unsure-sex``: openpeople's P004, a woman the estimator reads as a man at
    0.62, sent without Patient's Sex, waits for a person with the reason; her photo with it leaves."""
    pytest.importorskip("openpeople")
    [portrait] = [im for im in openpeople_images(("studio_portrait",)) if im.person == "P004"]
    rgb = np.asarray(Image.fromarray(portrait.rgb).resize((1024, 1024)))
    port = free_port()
    archive = tmp_path / "archive"
    console = make_console(
        tmp_path,
        {
            **SETTINGS,
            "ingress": {**SETTINGS["ingress"], "listen": f"127.0.0.1:{port}"},
            "destinations": {"teaching": {"folder": str(archive)}},
            "profiles": {"faces": {"pixels": LENIENT}},
            "routes": [
                {
                    "name": "photos",
                    "profile": "faces",
                    "destinations": "teaching",
                    "hold_for_review": "unsure-sex",
                }
            ],
        },
    )
    service = Service(console.settings, pixel_stage=face_pixel_stage)
    service.start()
    try:
        photos = [
            vl_photo(
                PatientID=f"MRN-P004-{sex or 'none'}",
                PatientSex=sex,
                **pixel_module(1024, 1024, rgb.tobytes()),
            )
            for sex in ("", "F")
        ]
        send(port, *photos)
        client, _ = signed_in(console, "olivia")
        deadline = time.monotonic() + 180
        while (
            'class="tile"' not in (page := client.get("/review").text) or not list(archive.rglob("*.dcm"))
        ) and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        service.stop()
    assert page.count('class="tile"') == 1 and len(list(archive.rglob("*.dcm"))) == 1
    qa = page[page.index('<span class="qa">') :]
    assert "the face reads M at only 0.6" in qa and "sex is a guess" in qa
    listing = runner.invoke(
        app, ["quarantine", "list", "--data-dir", str(tmp_path / "data")], terminal_width=400
    ).output
    assert "awaiting-review" in listing and "no Patient's Sex in the header" in listing, listing
    assert "MRN-P004" not in listing  # the held copy is de-identified


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
