"""``dicom-anon review``: de-identified photos on a sheet, each patient's together; an original among
them is never drawn."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
from factories import frames_dataset, write
from PIL import Image
from typer.testing import CliRunner

from dicom_anon.cli import app
from dicom_anon.review import (
    Tile,
    in_review_order,
    page_paths,
    qa_lines,
    qa_notes,
    read_tile,
    sheets,
    unsure_sex,
)

runner = CliRunner()
GREEN = (0, 200, 0)
BLUE = (0, 0, 200)


def _photo(
    path: Path,
    colour: tuple[int, int, int],
    *,
    patient: str,
    removed: str | None = "YES",
    features: str = "NO",
) -> Path:
    frames = np.zeros((1, 48, 64, 3), np.uint8)
    frames[...] = colour
    ds = frames_dataset(frames)
    ds.PatientID = patient
    ds.RecognizableVisualFeatures = features
    if removed is not None:
        ds.PatientIdentityRemoved = removed
    return write(ds, path)


def _has(image: Image.Image, colour: tuple[int, int, int]) -> bool:
    return bool((np.asarray(image.convert("RGB")) == colour).all(-1).any())


def test_each_patients_photos_sit_together_and_problems_come_first(tmp_path: Path) -> None:
    tiles = [
        read_tile(_photo(tmp_path / "b1.dcm", BLUE, patient="ANON-B")),
        read_tile(_photo(tmp_path / "a2.dcm", BLUE, patient="ANON-A")),
        read_tile(_photo(tmp_path / "c.dcm", GREEN, patient="MRN123", removed=None)),
        read_tile(_photo(tmp_path / "a1.dcm", BLUE, patient="ANON-A")),
    ]
    order = [t.source.name for t in in_review_order(tiles)]
    assert order == ["c.dcm", "a1.dcm", "a2.dcm", "b1.dcm"]


def test_an_original_among_the_outputs_is_never_drawn_nor_its_patient_id_written(tmp_path: Path) -> None:
    original = read_tile(_photo(tmp_path / "orig.dcm", GREEN, patient="MRN00482913", removed=None))
    also = read_tile(_photo(tmp_path / "no.dcm", GREEN, patient="MRN00482914", removed="NO"))
    shown = read_tile(_photo(tmp_path / "ok.dcm", BLUE, patient="ANON-A"))
    for tile in (original, also):
        assert tile.image is None and tile.patient == "" and tile.uid == ""
        assert "not de-identified" in tile.withheld
    assert shown.image is not None and shown.patient == "ANON-A" and not shown.withheld
    (page,) = sheets([original, also, shown])
    assert not _has(page, GREEN)
    assert _has(page, BLUE)


def test_a_photo_whose_face_was_not_replaced_is_marked(tmp_path: Path) -> None:
    replaced = read_tile(_photo(tmp_path / "a.dcm", BLUE, patient="ANON-A"))
    intraoral = read_tile(_photo(tmp_path / "b.dcm", BLUE, patient="ANON-A", features="YES"))
    assert replaced.face_replaced and not intraoral.face_replaced

    def orange_text(image: Image.Image) -> bool:  # the mark's anti-aliased letters on white
        r, g, b = np.moveaxis(np.asarray(image, np.int16), -1, 0)
        return bool(((r > 200) & (r - b > 90) & (g > b + 40) & (g < r - 40)).any())

    assert not orange_text(sheets([replaced])[0])
    assert orange_text(sheets([intraoral])[0])


def test_a_multi_frame_instance_shows_its_first_frame_and_says_how_many(tmp_path: Path) -> None:
    frames = np.zeros((3, 16, 16, 3), np.uint8)
    frames[0] = BLUE
    frames[1:] = GREEN
    ds = frames_dataset(frames)
    ds.PatientIdentityRemoved, ds.RecognizableVisualFeatures, ds.PatientID = "YES", "NO", "ANON-A"
    tile = read_tile(write(ds, tmp_path / "multi.dcm"))
    assert tile.frames == 3
    (page,) = sheets([tile])
    assert _has(page, BLUE) and not _has(page, GREEN)


def test_unreadable_and_undecodable_files_say_why(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not a dicom file at all")
    assert read_tile(junk).withheld.startswith("not readable as DICOM")
    ds = frames_dataset(np.zeros((1, 8, 8, 3), np.uint8))
    ds.PatientIdentityRemoved = "YES"
    del ds.PixelData
    tile = read_tile(write(ds, tmp_path / "empty.dcm"))
    assert tile.withheld.startswith("pixels not shown") and "no Pixel Data" in tile.withheld


def test_an_image_that_is_not_a_photo_is_named_but_does_not_fail_the_review(tmp_path: Path) -> None:
    """A de-identified 12-bit image (a CT) in a mixed export: not drawn, not an error either."""
    _photo(tmp_path / "in" / "a.dcm", BLUE, patient="ANON-A")
    ds = frames_dataset(np.zeros((1, 8, 8), np.uint8))
    ds.PatientIdentityRemoved, ds.PatientID = "YES", "ANON-B"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelData = np.zeros((8, 8), np.uint16).tobytes()
    write(ds, tmp_path / "in" / "ct.dcm")
    tile = read_tile(tmp_path / "in" / "ct.dcm")
    assert not tile.withheld and tile.not_photo.startswith("not a photo") and "8 bits" in tile.not_photo
    result = runner.invoke(app, ["review", str(tmp_path / "in"), "-o", str(tmp_path / "sheet.png")])
    assert result.exit_code == 0, result.output
    assert "1 photos of 1 patients" in result.output and "1 other images not drawn" in result.output


def test_pages_hold_at_most_per_page_photos_and_are_numbered(tmp_path: Path) -> None:
    tiles = [Tile(Path(f"{i}.dcm"), "ANON", "1.2.3", Image.new("RGB", (10, 10))) for i in range(7)]
    pages = sheets(tiles, size=64, columns=2, per_page=3)
    assert len(pages) == 3
    assert pages[0].size[0] == 2 * 64 + 4
    assert pages[-1].size[1] < pages[0].size[1]  # one photo on the last page: one row
    assert page_paths(tmp_path / "r.png", 1) == [tmp_path / "r.png"]
    assert page_paths(tmp_path / "r.png", 3)[2] == tmp_path / "r-3.png"


def test_command_writes_the_sheet_and_exits_1_when_a_file_was_not_shown(tmp_path: Path) -> None:
    _photo(tmp_path / "in" / "a.dcm", BLUE, patient="ANON-A")
    _photo(tmp_path / "in" / "b.dcm", BLUE, patient="ANON-B")
    ok = runner.invoke(app, ["review", str(tmp_path / "in"), "-o", str(tmp_path / "sheet.png")])
    assert ok.exit_code == 0, ok.output
    assert "2 photos of 2 patients (0 with no face replaced, marked in orange) on 1 page(s)" in ok.output
    assert _has(Image.open(tmp_path / "sheet.png"), BLUE)

    _photo(tmp_path / "in" / "orig.dcm", GREEN, patient="MRN00482913", removed=None)
    held = runner.invoke(app, ["review", str(tmp_path / "in"), "-o", str(tmp_path / "sheet.png")])
    assert held.exit_code == 1
    assert "orig.dcm" in held.output and "not de-identified" in held.output
    assert "MRN00482913" not in held.output
    assert not _has(Image.open(tmp_path / "sheet.png"), GREEN)


def _deidentified_record(uid: str, surrogate: str, oval: float, similarity: float) -> dict:
    face = {"surrogate": surrogate, "oval": oval, "identity_similarity": similarity}
    return {"event": "instance_deidentified", "new_sop_uid": uid, "pixels": {"qa": {"faces": [face]}}}


def test_the_audit_trail_says_which_pool_photo_each_face_was_given(tmp_path: Path) -> None:
    photo = _photo(tmp_path / "in" / "a.dcm", BLUE, patient="ANON-A")
    uid = str(pydicom.dcmread(photo).SOPInstanceUID)
    records = [
        {"event": "instance_received", "sop_uid_hash": "x"},
        _deidentified_record(uid, "openpeople-P003-studio_portrait", 1.25, 0.21),
        _deidentified_record("1.2.3", "openpeople-P005-amateur_selfie", 1.0, 0.1),
    ]
    notes = qa_notes(records)
    assert notes[uid] == "P003-studio_portrait oval 1.25 SFace 0.21"
    assert read_tile(photo, qa=notes).qa == notes[uid]
    assert read_tile(photo).qa == ""

    trail = tmp_path / "audit.jsonl"
    trail.write_text("".join(json.dumps(r) + "\n" for r in records) + "a damaged line\n")
    args = ["review", str(tmp_path / "in"), "-o", str(tmp_path / "s.png"), "--trail"]
    assert runner.invoke(app, [*args, str(trail)]).exit_code == 0
    missing = runner.invoke(app, [*args, str(tmp_path / "nope.jsonl")])
    assert missing.exit_code == 2 and "no such file" in missing.output


def test_a_sheet_that_cannot_be_written_is_a_clear_error(tmp_path: Path) -> None:
    _photo(tmp_path / "in" / "a.dcm", BLUE, patient="ANON-A")
    for target, says in (("nowhere/s.png", "there is no folder"), ("s.txt", "ending in .png")):
        result = runner.invoke(app, ["review", str(tmp_path / "in"), "-o", str(tmp_path / target)])
        assert result.exit_code == 2 and says in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
    (tmp_path / "taken.png").mkdir()  # a folder where the sheet should go
    result = runner.invoke(app, ["review", str(tmp_path / "in"), "-o", str(tmp_path / "taken.png")])
    assert result.exit_code == 2 and "cannot write" in result.output


def test_command_with_nothing_to_review_is_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["review", str(tmp_path)])
    assert result.exit_code == 2
    assert "no DICOM files found" in result.output


def test_piped_stderr_gets_no_progress_bar_leftovers(tmp_path: Path) -> None:
    """A review run from cron or a script logs only what it says: rich's bar, when not shown on a
    terminal, used to leave a blank line on stderr."""
    _photo(tmp_path / "in" / "a.dcm", BLUE, patient="ANON-A")
    argv = ["dicom-anon", "review", str(tmp_path / "in"), "-o", str(tmp_path / "sheet.png")]
    script = f"import sys; sys.argv = {argv!r}; from dicom_anon.cli import run; run()"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and "1 photos of 1 patients" in result.stdout


def test_a_new_face_chosen_by_a_guessed_sex_is_named_as_such() -> None:
    """What ``hold_for_review: unsure-sex`` holds: a face given a new person while the header had
    no Patient's Sex and the estimator was unsure (or could not read the face). A header's sex, a
    sure estimate, or a face given no person (blurred) is not a guess."""
    guessed = {
        "where": "frame 1 face 1",
        "person": "p",
        "sex": None,
        "likely_sex": "M",
        "likely_sex_confidence": 0.62,
    }
    unread = {"where": "frame 1 face 2", "person": "p", "sex": None, "estimate": "face too small"}
    known = {"where": "frame 1 face 1", "person": "p", "sex": "F", "sex_from": "header"}
    blurred = {"where": "frame 1 face 1", "sex": None}
    assert unsure_sex({"faces": [guessed]}) == (
        "frame 1 face 1: no Patient's Sex in the header, and the face reads M at only 0.62: "
        "the new face's sex is a guess"
    )
    assert "could not be read (face too small)" in (unsure_sex({"faces": [known, unread]}) or "")
    assert unsure_sex({"faces": [known]}) is None
    assert unsure_sex({"faces": [blurred]}) is None
    assert unsure_sex({}) is None
    assert qa_lines({"faces": [guessed]})[0].endswith(
        "the face reads M at only 0.62: the new face's sex is a guess"
    )
    assert "guess" not in qa_lines({"faces": [known]})[0]
