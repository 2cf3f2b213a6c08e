"""The Rules page's test of an uploaded photo runs the face pipeline as the service would: the
de-identified picture beside a placeholder for the original, its QA figures, nothing written to
the outbox or sent; a photo the face stage would hold shows that and why. ``rules test`` on the
command line says the same, through the same function."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner
from webkit import LENIENT, SETTINGS, make_console, signed_in

from dicom_anon.cli import app
from dicom_anon.dicomio import read_instance
from dicom_anon.pixels import decode

FACES = {
    **SETTINGS,
    "profiles": {"faces": {"pixels": LENIENT}},
    "routes": [
        {
            "name": "photos",
            "match": {"sop_class": "VLPhotographicImageStorage"},
            "profile": "faces",
            "destinations": "teaching",
        }
    ],
}


@pytest.fixture
def generated(testdata) -> Path:
    return testdata / "dicom" / "generated"


def try_on_page(tmp_path: Path, photo: Path) -> tuple[str, object]:
    console = make_console(tmp_path, FACES)
    client, csrf = signed_in(console, "olivia")
    answer = client.post(
        "/rules/test",
        data={"csrf": csrf, "calling_ae": ""},
        files={"dicom": (photo.name, photo.read_bytes(), "application/dicom")},
    )
    assert answer.status_code == 200
    trial = answer.text[answer.text.index('id="trial"') :]
    return trial[: trial.index("</section>")], console


def try_on_cli(console, photo: Path) -> str:
    done = CliRunner().invoke(
        app, ["rules", "test", str(console.config_path), str(photo)], terminal_width=300
    )
    assert done.exit_code == 0, done.output
    return done.output


def test_a_photo_routes_face_is_replaced_shown_and_nothing_leaves(tmp_path: Path, generated: Path) -> None:
    photo = generated / "vlphoto_face_noburn_explicit_le.dcm"
    trial, console = try_on_page(tmp_path, photo)
    assert "⇒ route photos: de-identify (faces" in trial and "the original<br>is not shown" in trial
    # The de-identified picture, inline: the face in it is not the patient's, the corners are.
    [uri] = re.findall(r'<img src="data:image/png;base64,([^"]+)" alt="the de-identified picture"', trial)
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri))).convert("RGB"), dtype=int)
    original = Image.fromarray(decode(read_instance(photo)).frames[0])
    original.thumbnail((shown.shape[1], shown.shape[0]))
    before = np.asarray(original, dtype=int)
    assert before.shape == shown.shape
    scale = shown.shape[0] / 512
    x0, y0, x1, y1 = (round(v * scale) for v in (181, 62, 268, 172))  # the astronaut's face
    assert np.abs(shown[y0:y1, x0:x1] - before[y0:y1, x0:x1]).mean() > 10
    # The QA figures the audit trail would get, as lines.
    assert "frame 1 face 1: new face openpeople-" in trial and "SFace similarity to the patient 0." in trial
    assert "preserved area changed by 0" in trial
    # Nothing written where the service sends from, nothing queued.
    data = console.settings.data_dir
    assert not (data / "outbox").exists() or not any((data / "outbox").iterdir())
    assert not console.settings.state_path.exists()
    # The command line says the same of this file (its new person may differ: a throwaway key each).
    said = try_on_cli(console, photo)
    assert "=> route photos: de-identify (faces" in said and "frame 1 face 1: new face openpeople-" in said


def test_a_photo_the_face_stage_would_hold_shows_that_and_why(tmp_path: Path, generated: Path) -> None:
    photo = generated / "vlphoto_intraoral_noburn_explicit_le.dcm"
    trial, console = try_on_page(tmp_path, photo)
    held = "route photos: quarantine, the face pipeline holds it (no-face): frame 1: no face found"
    assert f"⇒ {held}" in trial
    assert "<img" not in trial and "held: nothing<br>would leave" in trial
    assert held in try_on_cli(console, photo)
