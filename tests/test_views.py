"""Routing a clinic's photo set by view: what the codes and descriptions say, which route each view
takes, and what ``rules check|test`` show a records officer."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
import yaml
from dentalkit import DENTAL_ROUTES, HEAD, MOUTH, RIGHT_LATERAL, ROUTE_OF, coded, sample_set, uncoded
from factories import vl_photo, write
from typer.testing import CliRunner

from dicom_anon.cli import app
from dicom_anon.config import ConfigError, Settings, load_settings
from dicom_anon.rules import Rules, route_lines
from dicom_anon.views import VIEW_NAMES, covers, recognise

runner = CliRunner()
DESTINATIONS = {"teaching": {"ae_title": "T", "host": "127.0.0.1", "port": 104}}


@pytest.fixture(scope="module")
def samples(testdata) -> dict:
    return sample_set(testdata)


@pytest.fixture
def dental() -> Settings:
    return Settings.model_validate({"destinations": DESTINATIONS, "routes": DENTAL_ROUTES})


def test_each_view_of_the_set_is_recognised_coded_and_uncoded(samples):
    for name, (ds, view) in samples.items():
        found = recognise(ds)
        assert found.name == view, (name, found)
        assert found.source.startswith("from codes") == ("-coded" in name), name


def test_each_view_takes_its_route(samples, dental):
    rules = Rules(dental)
    for name, (ds, view) in samples.items():
        assert [d.route.name for d in rules.decide(ds, "CLINIC")] == [ROUTE_OF[view]], name


def test_codes_outrank_the_description():
    # A face photo coded as the head from the side, whose series says "intraoral": the codes stand.
    ds = coded(vl_photo(), HEAD, RIGHT_LATERAL)
    ds.SeriesDescription = "intraoral"
    assert recognise(ds).name == "profile-right"
    # Codes that place it in the mouth keep it there whatever the words: no description moves a
    # photo between intraoral and extraoral.
    mouth = coded(vl_photo(), MOUTH)
    mouth.SeriesDescription = "Frontal smile"
    assert recognise(mouth).name == "intraoral"
    # General head codes and a description that says more: the description refines them.
    head = coded(vl_photo(), HEAD)
    head.SeriesDescription = "smile"
    assert recognise(head).name == "smile" and "Series Description says 'smil'" in recognise(head).source


def test_nothing_recognised_matches_no_view_route():
    ds = uncoded(vl_photo(), "Clinical photo")
    assert recognise(ds).name is None
    assert not covers(["intraoral", "extraoral"], None)


def test_descriptions_never_echo_the_patient():
    ds = uncoded(vl_photo(), "Right profile of Jane Doe-Mueller")
    found = recognise(ds)
    assert found.name == "profile-right" and "Doe" not in found.source


def test_groups_cover_their_views():
    assert covers(["intraoral"], "occlusal-lower") and covers(["profile"], "profile-left")
    assert not covers(["intraoral"], "frontal") and not covers(["frontal"], "smile")
    assert set(VIEW_NAMES["extraoral"]) >= {"frontal", "smile", "profile-right", "oblique-left"}


def test_unknown_view_names_its_line_and_the_close_one(tmp_path):
    text = yaml.safe_dump({"destinations": DESTINATIONS, "routes": DENTAL_ROUTES}, sort_keys=False)
    bad = tmp_path / "settings.yaml"
    bad.write_text(text.replace("view: intraoral", "view: intraorl"))
    with pytest.raises(ConfigError) as exc:
        load_settings(bad)
    line = next(i for i, t in enumerate(bad.read_text().splitlines(), 1) if "intraorl" in t)
    assert f"settings.yaml:{line}:" in str(exc.value) and "did you mean intraoral?" in str(exc.value)


def test_reason_only_on_a_quarantine_route():
    routes = [{**DENTAL_ROUTES[1], "reason": "profile-view"}]
    with pytest.raises(ValueError, match="use it with action: quarantine"):
        Settings.model_validate({"destinations": DESTINATIONS, "routes": routes})


def test_route_table_names_views_and_what_happens(dental):
    lines = {line.name: line for line in route_lines(dental)}
    assert lines["profiles"].matches == "view in profile, oblique"
    assert lines["profiles"].does == "quarantine (profile-view)"
    assert "pixels: unchanged, held if a face or eyes are found" in lines["intraoral"].does


def test_rules_test_prints_the_view_and_why(samples, dental, tmp_path):
    config = tmp_path / "settings.yaml"
    config.write_text(yaml.safe_dump({"destinations": DESTINATIONS, "routes": DENTAL_ROUTES}))
    files = []
    for name in ("profile-coded", "profile-uncoded"):
        files.append(write(samples[name][0], tmp_path / f"{name}.dcm"))
    result = runner.invoke(app, ["rules", "test", str(config), *map(str, files)], terminal_width=250)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "view: profile-right (from codes: Anatomic Region SCT 774007" in out
    assert "View Code SCT 399198007" in out
    assert "view: profile-right (Series Description says 'profile' and 'right')" in out
    assert out.count("route profiles: matches") == 2
    assert "route intraoral: no: view profile-right is not one of ['intraoral']" in out
    # The quarantine route's reason is what a records officer reads (it was a bare "quarantine").
    assert out.count("=> route profiles: quarantine (profile-view)") == 2


def test_example_config_routes_the_set(samples):
    example = Path(__file__).resolve().parents[1] / "config" / "dicom-anon.yaml"
    rules = Rules(load_settings(example))
    routes = {name: rules.decide(ds, "CLINIC")[0].route.name for name, (ds, _) in samples.items()}
    assert {routes[n] for n in routes if n.startswith("profile")} == {"dental-profiles"}
    intraoral = [n for n in routes if n.startswith(("intraoral", "buccal", "occlusal", "face-coded"))]
    assert {routes[n] for n in intraoral} == {"dental-intraoral"}
    assert {routes[n] for n in routes if n.startswith(("frontal", "smile"))} == {"photos"}


def test_the_demo_examples_take_their_routes():
    root = Path(__file__).resolve().parents[1]
    rules = Rules(load_settings(root / "config" / "dicom-anon.yaml"))
    want = {"face": "photos", "intraoral": "dental-intraoral", "profile": "dental-profiles"}
    examples = sorted((root / "examples").glob("*.dcm"))
    assert len(examples) == 8
    for path in examples:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        [decision] = rules.decide(ds, "CLINIC")
        assert decision.route.name == want[path.name.split("_")[2]], path.name


def test_image_comments_refine_a_general_series(testdata):
    """dicom4ortho's way: 'Orthodontic Extraoral Series', and the view in Image Comments ('EV01^Right
    Profile ... Centric Occlusion'): a profile, not an occlusal view (occlusion is the bite)."""
    ds = pydicom.dcmread(testdata / "dicom" / "dicom4ortho" / "test.dcm", stop_before_pixels=True)
    for keyword in ("AnatomicRegionSequence", "ViewCodeSequence", "PrimaryAnatomicStructureSequence"):
        delattr(ds, keyword)
    found = recognise(ds)
    assert found.name == "profile-right" and found.source.startswith("Image Comments says")
