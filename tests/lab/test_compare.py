"""``dicom-anon eval-compare``: two runs of the same photos, the photos that moved each figure."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dicom_anon.cli import app
from dicom_anon.lab.compare import compare, mcnemar, read_per_photo
from dicom_anon.lab.evaluate import PER_PHOTO_COLUMNS


def run_file(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, PER_PHOTO_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in PER_PHOTO_COLUMNS})
    return path


def photo(name: str, *, held: str = "", person: str = "g-1", rank1: str = "0", dlib: float = 0.8) -> dict:
    forwarded = not held
    return {
        "method": "surrogate",
        "photo": name,
        "refused": held,
        "new_person": person if forwarded else "",
        "sface_to_original": "0.1000" if forwarded else "",
        "sface_rank1": rank1 if forwarded else "",
        "dlib_to_original": f"{dlib:.4f}" if forwarded else "",
        "dlib_rank1": rank1 if forwarded else "",
    }


def test_mcnemar_is_the_exact_two_sided_binomial_test() -> None:
    assert mcnemar(0, 4) == pytest.approx(0.125)  # 2 * (1/2)^4
    assert mcnemar(2, 2) == 1.0 and mcnemar(0, 0) == 1.0
    assert mcnemar(1, 9) == pytest.approx(2 * 11 / 1024)


def test_the_photos_each_run_alone_counts_and_how_likely_the_split_is(tmp_path: Path) -> None:
    first = [photo(f"p{i}") for i in range(10)] + [photo("held-then-not", held="no-surrogate")]
    second = [
        photo(f"p{i}", rank1="1" if i < 4 else "0", person="g-2" if i == 9 else "g-1") for i in range(10)
    ]
    second += [photo("held-then-not"), photo("only-in-second")]
    a, b = run_file(tmp_path / "a.csv", first), run_file(tmp_path / "b.csv", second)
    [c] = compare(read_per_photo(a), read_per_photo(b))
    changes = {ch.measure: ch for ch in c.changes}
    # Held: compared on the 11 photos both runs saw.
    assert (changes["held"].photos, changes["held"].only_first, changes["held"].only_second) == (
        11,
        ("held-then-not",),
        (),
    )
    # The recognisers: on the 10 photos both forwarded.
    rank1 = changes["rank-1 dlib"]
    assert (rank1.photos, rank1.first, rank1.second) == (10, 0, 4)
    assert rank1.only_second == ("p0", "p1", "p2", "p3") and rank1.p_value == pytest.approx(0.125)
    assert changes["re-ID dlib"].second == 0
    assert (c.forwarded_both, c.same_person) == (10, 9)
    result = CliRunner().invoke(app, ["eval-compare", str(a), str(b)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "+p0" in result.output and "0.12" in result.output
    assert "the same new person on 9 of the 10 photos both runs forwarded" in result.output


def test_a_file_that_is_not_a_per_photo_run_is_one_clear_line(tmp_path: Path) -> None:
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    good = run_file(tmp_path / "good.csv", [photo("p0")])
    result = CliRunner().invoke(app, ["eval-compare", str(other), str(good)])
    assert result.exit_code == 2
    assert f"{other}: not an eval --per-photo file" in result.output
    binary = tmp_path / "binary.csv"
    binary.write_bytes(bytes(range(256)))
    garbled = CliRunner().invoke(app, ["eval-compare", str(binary), str(good)])
    assert garbled.exit_code == 2 and f"{binary}: not an eval --per-photo file" in garbled.output
    missing = CliRunner().invoke(app, ["eval-compare", str(tmp_path / "none.csv"), str(good)])
    assert missing.exit_code == 2 and "none.csv" in missing.output and "Traceback" not in missing.output
