"""The read-outs' calibration (lab/directions/learn.py): what the service's screen reads an age through."""

from __future__ import annotations

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
