"""The generators' frame: images to tensors in the generators' range and back."""

from __future__ import annotations

import numpy as np

from dicom_anon.faces.gan.frame import to_rgb8, to_tensor


def test_tensor_conversion_round_trips_8_bit_pixels() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    assert np.array_equal(to_rgb8(to_tensor(rgb)), rgb)
