"""Table E.1-1 as loaded from package data, and the rule that resolves a row to one action."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dicom_anon.headers.options import Option
from dicom_anon.headers.table import Row, choose_combined, load_table, resolve

STANDARD_JSON = (
    Path(__file__).resolve().parents[2].parent / "shared/standard/confidentiality_profile_attributes.json"
)


COPY_ROWS = 621  # the 2024 table as copied
ADDED_ROWS = 33  # data/profile_additions.json


def test_the_copy_and_the_later_editions_rows_all_load():
    assert len(load_table()) == COPY_ROWS + ADDED_ROWS


def test_package_copy_matches_the_shared_standard_file():
    if not STANDARD_JSON.is_file():
        pytest.skip("../shared/standard is absent")
    shared = json.loads(STANDARD_JSON.read_text(encoding="utf-8"))
    assert [r["tag"] for r in shared] == [row.tag for row in load_table().rows[:COPY_ROWS]]


def test_rows_added_by_later_editions_are_not_in_the_copy():
    """Once a newer copy of the table holds one of them, its row leaves profile_additions.json."""
    rows = load_table().rows
    copied = {row.tag for row in rows[:COPY_ROWS]}
    added = [row.tag for row in rows[COPY_ROWS:]]
    assert not copied & set(added)
    assert len(set(added)) == len(added)


@pytest.mark.parametrize(
    ("tag", "name"),
    [
        (0x00102161, "Ethnic Group Code Sequence"),
        (0x00181010, "Secondary Capture Device ID"),
        (0x00100012, "Name to Use"),
    ],
)
def test_later_editions_rows_resolve_to_remove(tag, name):
    row = load_table().lookup(tag)
    assert row.name == name
    assert resolve(row, frozenset(), vr="LO", keyword="x").code == "X"
    # No option column is known for them: an option that keeps their siblings removes them.
    keeps = frozenset({Option.RETAIN_PATIENT_CHARACTERISTICS, Option.RETAIN_DEVICE_IDENTITY})
    assert resolve(row, keeps, vr="LO", keyword="x").code == "X"


def test_exact_tags_resolve_to_their_row():
    table = load_table()
    assert table.lookup(0x0040A123).basic == "D"  # Person Name
    assert table.lookup(0x00080018).basic == "U"  # SOP Instance UID
    assert table.lookup(0x00080060) is None  # Modality: not in the table, kept


def test_overlay_wildcard_matches_every_even_60xx_group():
    table = load_table()
    for group in (0x6000, 0x6002, 0x601E):
        assert table.lookup((group << 16) | 0x3000).name == "Overlay Data"
        assert table.lookup((group << 16) | 0x4000).name == "Overlay Comments"
    assert table.lookup(0x60200000 | 0x3000) is None  # outside the repeating range
    assert table.lookup(0x60000010) is None  # Overlay Rows: not a table row (removed by the engine)


def test_curve_wildcard_matches_any_element_of_even_50xx_groups():
    table = load_table()
    assert table.lookup(0x50000010).name == "Curve Data"
    assert table.lookup(0x501E3000).name == "Curve Data"


def test_odd_groups_resolve_to_the_private_row_even_in_repeating_ranges():
    table = load_table()
    for tag in (0x00091001, 0x00330010, 0x60013000):
        row = table.lookup(tag)
        assert row is table.private
        assert row.basic == "X"
        assert row.option_codes == {Option.RETAIN_SAFE_PRIVATE: "C"}


def test_option_column_overrides_the_basic_action():
    row = load_table().lookup(0x00080020)  # Study Date: Z
    assert resolve(row, frozenset(), vr="DA", keyword="StudyDate").code == "Z"
    full = resolve(row, frozenset({Option.RETAIN_FULL_DATES}), vr="DA", keyword="StudyDate")
    assert (full.code, full.option) == ("K", Option.RETAIN_FULL_DATES)
    modified = resolve(row, frozenset({Option.RETAIN_MODIFIED_DATES}), vr="DA", keyword="StudyDate")
    assert (modified.code, modified.option) == ("C", Option.RETAIN_MODIFIED_DATES)


def test_options_without_a_column_entry_leave_the_basic_action():
    row = load_table().lookup(0x0040A123)  # Person Name: D, no option column
    assert resolve(row, frozenset(Option), vr="PN", keyword="PersonName").code == "D"


def test_clean_wins_over_keep_when_two_options_disagree():
    row = load_table().lookup(0x00181200)  # Date of Last Calibration: device K, modified dates C
    both = frozenset({Option.RETAIN_DEVICE_IDENTITY, Option.RETAIN_MODIFIED_DATES})
    resolved = resolve(row, both, vr="DA", keyword="DateOfLastCalibration")
    assert (resolved.code, resolved.option) == ("C", Option.RETAIN_MODIFIED_DATES)
    alone = resolve(row, frozenset({Option.RETAIN_DEVICE_IDENTITY}), vr="DA", keyword="DateOfLastCalibration")
    assert alone.code == "K"


@pytest.mark.parametrize(
    ("code", "vr", "keyword", "expected"),
    [
        ("X/Z", "DA", "AcquisitionDate", "Z"),
        ("X/D", "DA", "SeriesDate", "D"),
        ("Z/D", "DA", "ContentDate", "D"),
        ("X/Z/D", "SH", "StationName", "D"),
        ("X/Z/U*", "SQ", "ReferencedImageSequence", "U"),
        ("X/Z", "SQ", "AcquisitionContextSequence", "Z"),  # Type 2 in image IODs
        ("X/Z", "SQ", "ReferencedStudySequence", "X"),  # Type 3
        ("X/Z/D", "SQ", "InstitutionCodeSequence", "X"),
        ("X/D", "SQ", "OperatorIdentificationSequence", "X"),
    ],
)
def test_combined_codes_in_standard_iods_keep_the_most_conformant_form(code, vr, keyword, expected):
    assert choose_combined(code, in_std_iod=True, vr=vr, keyword=keyword) == expected


@pytest.mark.parametrize("code", ["X/Z", "X/D", "X/Z/D", "X/Z/U*"])
def test_combined_codes_of_attributes_no_standard_iod_uses_are_removed(code):
    assert choose_combined(code, in_std_iod=False, vr="LO", keyword="Whatever") == "X"


def test_every_table_row_resolves_under_every_option_set():
    table = load_table()
    for options in (frozenset(), frozenset(Option) - {Option.RETAIN_FULL_DATES}):
        for row in table.rows:
            for vr in ("SQ", "LO"):
                assert resolve(row, options, vr=vr, keyword="").code in {"X", "Z", "D", "K", "C", "U"}


def test_unknown_code_is_an_error_not_a_guess():
    row = Row(tag="(0001,0001)", name="bogus", in_std_iod=True, basic="Q")
    with pytest.raises(ValueError, match="unknown action code"):
        resolve(row, frozenset(), vr="LO", keyword="")
