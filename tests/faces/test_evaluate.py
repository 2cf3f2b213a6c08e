"""The eval table's figures that compare outputs with each other."""

from __future__ import annotations

import numpy as np

from dicom_anon.faces import evaluate as ev


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
