"""Routes applied to instances, and ``dicom-anon rules check|test`` as a records officer uses them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from factories import VL_PHOTO, vl_photo, write
from pydicom.dataset import Dataset
from typer.testing import CliRunner

from dicom_anon.cli import app
from dicom_anon.config import PRESETS, Settings
from dicom_anon.rules import Rules

SC = "1.2.840.10008.5.1.4.1.1.7"
runner = CliRunner()

RULES = {
    "destinations": {"teaching": {"ae_title": "T", "host": "127.0.0.1", "port": 104}},
    "routes": [
        {"name": "junk", "match": {"modality": "SR"}, "action": "drop"},
        {
            "name": "ortho",
            "match": {"sop_class": "VLPhotographicImageStorage", "study_description": "(?i)ortho"},
            "profile": "orthodontic",
            "destinations": "teaching",
            "continue": True,
        },
        {
            "name": "derm-from-clinic",
            "match": {
                "calling_ae": "CLINIC",
                "body_part": ["skin", "FACE"],
                "attributes": {"Manufacturer": "^Canon$"},
            },
            "profile": "basic",
            "destinations": "teaching",
        },
        {
            "name": "photos",
            "match": {"sop_class": [VL_PHOTO, "SecondaryCaptureImageStorage"]},
            "profile": "basic",
            "destinations": "teaching",
        },
        {"name": "hold", "match": {"institution": "Elsewhere"}, "action": "quarantine"},
    ],
}


def instance(**attrs: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = attrs.pop("sop", VL_PHOTO)
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


@pytest.fixture
def rules() -> Rules:
    return Rules(Settings.model_validate(RULES))


def names(rules: Rules, ds: Dataset, caller: str = "CLINIC") -> list[str]:
    return [d.route.name for d in rules.decide(ds, caller)]


def test_first_match_ends_the_list(rules):
    assert names(rules, instance(Modality="SR")) == ["junk"]


def test_continue_lets_later_routes_apply(rules):
    assert names(rules, instance(StudyDescription="Ortho pre-treatment")) == ["ortho", "photos"]


def test_all_conditions_must_hold(rules):
    derm = instance(BodyPartExamined="SKIN", Manufacturer="Canon", sop=SC)
    assert names(rules, derm) == ["derm-from-clinic"]
    assert names(rules, derm, caller="OTHER") == ["photos"]
    assert names(rules, instance(BodyPartExamined="SKIN", Manufacturer="Canon Inc", sop=SC)) == ["photos"]


def test_missing_attribute_is_the_empty_value(rules):
    assert names(rules, instance(sop="1.2.840.10008.5.1.4.1.1.2")) == []
    assert names(rules, instance(sop="1.2.840.10008.5.1.4.1.1.2", InstitutionName="St. Elsewhere")) == [
        "hold"
    ]


def test_decisions_carry_the_profile(rules):
    [ortho, photos] = rules.decide(instance(StudyDescription="ortho"), "CLINIC")
    assert ortho.profile.pixels is not None and ortho.profile.pixels.preserve == ["mouth"]
    assert photos.profile.pixels is None and photos.action == "forward"


def test_explain_says_why_a_route_did_not_match(rules):
    reasons = dict(
        (r.name, why) for r, why in rules.explain(instance(StudyDescription="dermatology"), "CLINIC")
    )
    assert "modality" in reasons["junk"]
    assert "study_description does not match" in reasons["ortho"]
    assert reasons["photos"] is None


# --- the commands ---------------------------------------------------------------------------


def write_settings(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    return path


GOOD = """\
ingress:
  allowed_callers: [{ae_title: CLINIC, addresses: [127.0.0.1]}]
destinations:
  teaching: {ae_title: TEACHING, host: 127.0.0.1, port: 11113}
routes:
  - name: photos
    match: {sop_class: VLPhotographicImageStorage}
    profile: orthodontic
    destinations: [teaching]
  - name: other
    action: drop
"""


def photo_file(path: Path, burned_in: str = "NO") -> Path:
    return write(
        vl_photo(charset=None, BurnedInAnnotation=burned_in, PatientID="MRN1", PatientName="Doe^Jane"), path
    )


def test_no_header_value_makes_a_pattern_search_run_away(tmp_path) -> None:
    """``^(\\w+\\s?)+$`` ("words and spaces") backtracks in Python's ``re``: 1 s on 24 characters of
    Study Description, doubling with each one more; a header may hold 64. And ``re`` holds the
    interpreter lock while it searches, so the whole service would freeze. Patterns run on RE2.
    (In a child process, so that a regression fails here instead of freezing the test run.)"""
    settings = {**RULES, "routes": [{**RULES["routes"][1], "match": {"study_description": r"^(\w+\s?)+$"}}]}
    config = tmp_path / "settings.yaml"
    config.write_text(yaml.safe_dump(settings))
    script = (
        "import sys; from pydicom.dataset import Dataset; from dicom_anon.config import load_settings;"
        " from dicom_anon.rules import Rules; rules = Rules(load_settings(sys.argv[1]));"
        " ds = Dataset(); ds.SOPClassUID = sys.argv[2]; ds.StudyDescription = sys.argv[3];"
        " print([d.route.name for d in rules.decide(ds, 'CLINIC')])"
    )
    for text, routes in (("a" * 63 + "!", "[]"), ("ortho pre treatment", "['ortho']")):
        # The timeout is no speed limit: the backtracking search would not end in a lifetime.
        done = subprocess.run(
            [sys.executable, "-c", script, str(config), VL_PHOTO, text],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.stdout.strip() == routes, done.stderr


def test_rules_check_lists_routes_in_order(tmp_path):
    result = runner.invoke(app, ["rules", "check", str(write_settings(tmp_path, GOOD))])
    assert result.exit_code == 0, result.output
    assert "photos" in result.output and "OK" in result.output
    assert result.output.index("photos") < result.output.index("other")


def test_rules_check_says_which_routes_hold_for_review(tmp_path):
    text = GOOD.replace(
        "    destinations: [teaching]\n", "    destinations: [teaching]\n    hold_for_review: true\n"
    )
    result = runner.invoke(app, ["rules", "check", str(write_settings(tmp_path, text))], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "teaching, held for review" in result.output
    plain = runner.invoke(app, ["rules", "check", str(write_settings(tmp_path, GOOD))], terminal_width=200)
    assert "held for review" not in plain.output
    unsure = text.replace("hold_for_review: true", "hold_for_review: unsure-sex")
    result = runner.invoke(app, ["rules", "check", str(write_settings(tmp_path, unsure))], terminal_width=250)
    assert "teaching, held for review where a new face's sex is a guess" in result.output, result.output


def test_rules_check_does_not_import_pydicom(tmp_path):
    """``rules check`` reads SOP class and attribute names from pydicom's tables without importing
    pydicom (numpy, the pixel handlers) or pynetdicom, which was most of the command's start-up."""
    text = GOOD.replace(
        "match: {sop_class: VLPhotographicImageStorage}",
        "match:\n      sop_class: [VLPhotographicImageStorage, SecondaryCaptureImageStorage]\n"
        "      attributes: {Manufacturer: Canon}\n      view: [intraoral]",
    )
    settings = write_settings(tmp_path, text)
    script = (
        "import sys\n"
        f"sys.argv = ['dicom-anon', 'rules', 'check', {str(settings)!r}]\n"
        "from dicom_anon.cli import run\n"
        "try:\n    run()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "print(sorted(m for m in ('pydicom', 'pynetdicom', 'numpy') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "VLPhotographicImageStorage" in result.stdout and "SecondaryCaptureImageStorage" in result.stdout
    assert result.stdout.splitlines()[-1] == "[]"


def test_rules_check_fails_with_line_and_fix(tmp_path):
    result = runner.invoke(
        app, ["rules", "check", str(write_settings(tmp_path, GOOD.replace("[teaching]", "[x]")))]
    )
    assert result.exit_code == 1
    assert "rules.yaml:9:" in result.output and "unknown destination 'x'" in result.output
    assert "Traceback" not in result.output


def test_rules_test_shows_route_and_outcome(tmp_path):
    settings = write_settings(tmp_path, GOOD.replace("profile: orthodontic", "profile: basic"))
    ok = photo_file(tmp_path / "ok.dcm")
    burned = photo_file(tmp_path / "burned.dcm", burned_in="YES")
    result = runner.invoke(app, ["rules", "test", str(settings), str(ok), str(burned)], terminal_width=200)
    assert result.exit_code == 0, result.output
    ok_part, burned_part = result.output.split("burned.dcm")
    assert "route photos: de-identify (basic" in ok_part and "teaching" in ok_part
    assert "quarantine, the profile refuses it" in burned_part and "burned-in" in burned_part.lower()


def test_rules_test_runs_a_photo_profiles_face_pipeline(tmp_path):
    """As the service would: a photo route's file without pixels is held by the face stage, not forwarded
    (tests/web/test_console_rules_test.py tries real face photos)."""
    result = runner.invoke(
        app,
        ["rules", "test", str(write_settings(tmp_path, GOOD)), str(photo_file(tmp_path / "ok.dcm"))],
        terminal_width=200,
    )
    assert result.exit_code == 0, result.output
    assert "=> route photos: quarantine, the face pipeline holds it (undecodable-pixels)" in result.output


def test_rules_test_with_another_caller(tmp_path):
    text = GOOD.replace("match: {sop_class: VLPhotographicImageStorage}", "match: {calling_ae: CLINIC}")
    settings = write_settings(tmp_path, text)
    result = runner.invoke(
        app,
        ["rules", "test", str(settings), str(photo_file(tmp_path / "a.dcm")), "--calling-ae", "OTHER"],
        terminal_width=200,
    )
    assert "=> route other: drop" in result.output


def test_every_example_in_docs_rules_md_is_valid():
    """The records officers' guide must not teach settings that the service refuses."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "rules.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    assert len(blocks) >= 5
    for block in blocks:
        raw = {
            "destinations": {n: {"ae_title": "A", "host": "h", "port": 1} for n in ("teaching", "research")},
            "profiles": {"research-dates": {"options": ["retain-modified-dates"]}},
        }
        parsed = yaml.safe_load(block)
        for key, value in parsed.items():
            raw[key] = {**raw[key], **value} if isinstance(value, dict) and key in raw else value
        settings = Settings.model_validate(raw)
        for route in settings.routes:
            assert route.profile is None or route.profile in settings.profiles or route.profile in PRESETS
            assert set(route.destinations) <= set(settings.destinations)
