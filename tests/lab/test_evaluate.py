"""``dicom-anon eval``: the table's figures, dlib as its second judge, consistency, and its CLI errors."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from dicom_anon.config import PixelSettings
from dicom_anon.faces.judge import DLIB_SAME_PERSON
from dicom_anon.faces.pipeline import get_pipeline
from dicom_anon.lab import evaluate as ev
from dicom_anon.lab.evaluate import EvalImage, consistency


def _unit(i: int) -> np.ndarray:
    v = np.zeros(128)
    v[i] = 1.0
    return v


def test_different_patients_apart_counts_pairs_of_different_people_only() -> None:
    gallery = ev.Gallery(sface=[("a", _unit(0)), ("b1", _unit(1)), ("b2", _unit(2))], judge=[])
    outcomes = [
        # a and b1 came out as one new person; b2 is another photo of b, so (b1, b2) is no pair.
        ev.Outcome("a", person="a", probe=_unit(5)),
        ev.Outcome("b1", person="b", probe=_unit(5)),
        ev.Outcome("b2", person="b", probe=_unit(6)),
        ev.Outcome("held", person="c", refused="no-surrogate"),
    ]
    row = ev.MethodReport("surrogate", gallery, outcomes).row()
    assert row["different patients apart"] == "50.0% (originals 100.0%)"


def test_different_patients_apart_needs_two_people() -> None:
    gallery = ev.Gallery(sface=[("a1", _unit(0)), ("a2", _unit(1))], judge=[])
    one = [ev.Outcome("a1", person="a", probe=_unit(0)), ev.Outcome("a2", person="a", probe=_unit(1))]
    assert ev.MethodReport("surrogate", gallery, one).row()["different patients apart"] == "-"
    assert ev.MethodReport("surrogate", gallery, one[:1]).row()["different patients apart"] == "-"


def test_two_photos_of_one_patient_show_one_new_person(face_a, face_b, lenient) -> None:
    # A second photo of patient A, framed differently: its measured tone and embedding move a little.
    again = np.ascontiguousarray(face_a[10:, 6:])
    photos = [EvalImage("a1", face_a, "A"), EvalImage("a2", again, "A"), EvalImage("b", face_b, "B")]
    c = consistency(get_pipeline(lenient, "surrogate"), photos)
    assert c.photos == 3 and not c.refused
    assert (c.same_pairs, c.different_pairs) == (1, 2)
    assert c.original_same == 1.0 and c.original_separated == 1.0
    assert c.same_surrogate == 1.0 and c.same_consistent == 1.0


def test_eval_settings_errors_are_one_clear_line(tmp_path, face_a) -> None:
    from PIL import Image
    from typer.testing import CliRunner

    from dicom_anon.cli import app

    Image.fromarray(face_a).save(tmp_path / "face.png")
    args = ["eval", str(tmp_path / "face.png"), "--method", "surrogate", "--identity", "pool"]
    args += ["--pool", str(tmp_path / "none")]
    result = CliRunner().invoke(app, [*args, "--no-consistency"])
    assert result.exit_code == 2, result.output
    assert "cannot read the surrogate pool" in result.output
    assert f"build-surrogates --from DIR --licence TEXT -o {tmp_path / 'none'}" in result.output
    wrong = CliRunner().invoke(app, ["eval", str(tmp_path / "face.png"), "--same-new-face", "always"])
    assert wrong.exit_code == 2 and "--same-new-face: Input should be 'prefer' or 'require'" in wrong.output
    typo = CliRunner().invoke(app, ["eval", str(tmp_path / "face.png"), str(tmp_path / "fcaes")])
    assert typo.exit_code == 2 and f"{tmp_path / 'fcaes'}: no such file or folder" in typo.output
    # An output that cannot be written is found before the run, not after it.
    (tmp_path / "a-file").write_text("")
    unwritable = CliRunner().invoke(
        app, ["eval", str(tmp_path / "face.png"), "--per-photo", str(tmp_path / "a-file" / "photos.csv")]
    )
    assert (
        unwritable.exit_code == 2 and f"--per-photo: cannot create {tmp_path / 'a-file'}" in unwritable.output
    )


def test_shares_of_photos_carry_their_95_percent_interval() -> None:
    """Wilson's interval: 5 of 87 (a rank-1 figure of the judged runs) spans 2.5-12.8%, so a run
    with 4 and one with 8 such photos are not told apart; none of 87 is not "zero" but under 4.2%."""
    assert ev.rate(5, 87) == "5.7% [2.5-12.8]"
    assert ev.rate(0, 87) == "0.0% [0.0-4.2]"
    assert ev.rate(87, 87) == "100.0% [95.8-100.0]"
    assert ev.rate(0, 0) == "-"
    held = [ev.Outcome(str(i), refused="no-surrogate") for i in range(2)] + [ev.Outcome("x")]
    refused = ev.MethodReport("surrogate", ev.Gallery(sface=[], judge=[]), held).row()["refused"]
    assert refused == "66.7% [20.8-93.9] (no-surrogate 2)"


def test_judge_chance_is_the_share_of_originals_it_confuses() -> None:
    near = np.zeros(128)
    gallery = ev.Gallery(sface=[], judge=[("a", near), ("b", near + 0.01), ("c", near + 1.0)])
    # a~b is one confusion among the three pairs.
    assert gallery.judge_chance() == pytest.approx(1 / 3)


def test_eval_shows_the_judge_finds_people_behind_an_eye_bar(portraits, tmp_path) -> None:
    images = [portraits["P003_studio_portrait"], portraits["P005_studio_portrait"]]
    evaluator = ev.Evaluator(PixelSettings(preserve=["mouth"], device="cpu"), ["eyebar"])
    reports, _ = evaluator.run(images)
    row = reports["eyebar"].row()
    assert row[f"re-ID (dlib<{DLIB_SAME_PERSON})"] == "100.0% [34.2-100.0] (chance 0.0%)"
    assert row["rank-1 (dlib)"] == "100.0% [34.2-100.0] (chance 50.0%)"
    assert all(
        o.judge_distance is not None and o.judge_distance < DLIB_SAME_PERSON
        for o in reports["eyebar"].outcomes
    )
    # The per-photo file names the photos behind those figures.
    with ev.write_per_photo(reports, tmp_path / "photos.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["method"], r["photo"], r["refused"]) for r in rows] == [
        ("eyebar", "P003_studio_portrait", ""),
        ("eyebar", "P005_studio_portrait", ""),
    ]
    assert all(float(r["dlib_to_original"]) < DLIB_SAME_PERSON and r["dlib_rank1"] == "1" for r in rows)
    assert all(float(r["sface_to_original"]) > 0 for r in rows)


def test_eval_marks_dlib_gated_when_the_route_gates_on_it() -> None:
    gallery = ev.Gallery(sface=[("a", np.ones(128))], judge=[("a", np.zeros(128)), ("b", np.ones(128))])
    done = ev.Outcome("a", output=np.zeros((2, 2, 3), np.uint8), judge_distance=0.7)
    column = f"re-ID (dlib<{DLIB_SAME_PERSON})"
    assert (
        ev.MethodReport("surrogate", gallery, [done], judge_gated=True).row()[column]
        == "0.0% [0.0-79.3] (chance 0.0%; gated)"
    )
    assert ev.MethodReport("surrogate", gallery, [done]).row()[column] == "0.0% [0.0-79.3] (chance 0.0%)"


def test_eval_cli_gates_on_dlib_unless_told_not_to(tmp_path, face_a) -> None:
    from PIL import Image
    from typer.testing import CliRunner

    from dicom_anon.cli import app

    Image.fromarray(face_a).save(tmp_path / "face.png")
    base = ["eval", str(tmp_path / "face.png"), "--method", "surrogate", "--no-consistency"]
    for flag, gated in (([], True), (["--no-second-recognizer"], False)):
        report = tmp_path / f"report{len(flag)}.md"
        args = [*base, *flag, "--sheet", str(tmp_path / "sheet.png"), "--report", str(report)]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        assert ("; gated)" in report.read_text()) is gated


def test_eval_without_the_second_recognizer_is_one_clear_error(tmp_path, face_a, monkeypatch) -> None:
    from PIL import Image
    from typer.testing import CliRunner

    from dicom_anon.cli import app
    from dicom_anon.faces.judge import JudgeUnavailable

    def missing():
        raise JudgeUnavailable("the 'dlib-bin' package is not installed")

    monkeypatch.setattr(ev, "get_judge", missing)
    Image.fromarray(face_a).save(tmp_path / "face.png")
    args = ["eval", str(tmp_path / "face.png"), "--method", "blur", "--no-consistency"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "second recogniser (dlib) cannot run: the 'dlib-bin' package is not installed" in result.output


def test_skip_passes_over_a_folders_first_images_before_limit_counts(tmp_path, face_a) -> None:
    from PIL import Image

    for name in ("c", "a", "b", "d"):
        Image.fromarray(face_a).save(tmp_path / f"{name}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    assert [i.stem for i in ev.collect([str(tmp_path)], limit=2)] == ["a", "b"]
    assert [i.stem for i in ev.collect([str(tmp_path)], skip=2)] == ["c", "d"]
    assert [i.stem for i in ev.collect([str(tmp_path)], limit=1, skip=1)] == ["b"]


def test_face_skin_change_is_measured_over_the_replaced_skin_only(portraits) -> None:
    from dicom_anon.faces.detect import get_detector

    img = portraits["P003_studio_portrait"].rgb
    face = get_detector("cpu").detect([img])[0][0]
    x0, y0, x1, y1 = (int(v) for v in face.box)
    replaced = np.zeros(img.shape[:2], bool)
    replaced[y0:y1, x0:x1] = True
    assert ev.face_skin_change(img, img, face, replaced) == 0.0
    greyed = img.copy()
    greyed[y0:y1, x0:x1] = (greyed[y0:y1, x0:x1] * 0.5).astype(np.uint8)
    assert ev.face_skin_change(img, greyed, face, replaced) > 20.0
    # The same change where nothing was replaced is not the new face's.
    elsewhere = np.zeros_like(replaced)
    elsewhere[: max(1, y0 - 10)] = True
    assert ev.face_skin_change(img, greyed, face, elsewhere) in (None, 0.0)
