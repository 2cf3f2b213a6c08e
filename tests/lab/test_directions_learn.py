"""The read-outs' calibration (lab/directions/learn.py): what the service's screen reads an age through."""

from __future__ import annotations

import json

import numpy as np

from dicom_anon.lab.directions.learn import calibration


def test_calibration_undoes_a_read_out_shrunk_towards_the_middle() -> None:
    rng = np.random.default_rng(0)
    age = rng.uniform(5, 85, 2000)
    read_out = 35 + 0.6 * (age - 35) + rng.normal(0, 2, len(age))
    cal = calibration(read_out, age)
    knots, expected = np.array(cal["read_out"]), np.array(cal["expected"])
    assert len(knots) == 20 and np.all(np.diff(knots) > 0) and np.all(np.diff(expected) >= 0)
    # Taken at its word the top read-out says ~75; the calibration gives what the faces are.
    top = read_out > np.quantile(read_out, 0.95)
    assert abs(expected[-1] - age[top].mean()) < 1.5 and expected[-1] > knots[-1] + 5


def test_a_screen_read_out_written_leaves_the_other_screens(tmp_path) -> None:
    """mouth.py and child.py (through fit_screen) each write their own screen into the same
    file; the read-outs loaded from it hold both, and the steering read-outs are untouched."""
    from dicom_anon.faces.identities import DIRECTIONS, load_directions
    from dicom_anon.lab.directions.learn import write_screen

    path = tmp_path / "directions.json"
    out = json.loads(DIRECTIONS.read_text())
    before = load_directions(DIRECTIONS)
    w = np.linspace(-1, 1, len(out["mean"]))
    write_screen(path, out, "trial", w, 0.5, 1.25, {"samples": 3})
    d = load_directions(path)
    assert set(d.screen_weights) == set(before.screen_weights) | {"trial"}
    assert d.screen_reject_above["trial"] == 1.25 and d.screen_bias["trial"] == 0.5
    for name in before.screen_weights:
        assert np.array_equal(d.screen_weights[name], before.screen_weights[name])
    assert d.version == before.version and all(
        np.array_equal(d.weights[k], before.weights[k]) for k in d.weights
    )
    assert json.loads(path.read_text())["screen"]["sources"]["trial"] == {"samples": 3}
