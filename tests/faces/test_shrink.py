"""The fast shrink keeps positions exact and stays within a few levels of OpenCV's one-step area resize."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from dicom_anon.faces.shrink import shrink


@pytest.mark.parametrize("scale", [0.9, 0.5, 0.256, 0.075, 1 / 3])
def test_a_shrunk_copy_is_the_area_average_of_the_part_it_keeps(scale) -> None:
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur((rng.random((3000, 4000, 3)) * 255).astype(np.uint8), (0, 0), 3)
    copy, (kw, kh) = shrink(image, scale)
    assert 4000 - kw < 1 / scale and 3000 - kh < 1 / scale  # less than a copy's pixel dropped
    assert copy.shape[:2] == (round(kh * scale), round(kw * scale))
    one_step = cv2.resize(image[:kh, :kw], copy.shape[1::-1], interpolation=cv2.INTER_AREA)
    diff = np.abs(copy.astype(int) - one_step)
    assert diff.max() <= 12 and diff.mean() < 2


def test_a_point_maps_back_through_the_kept_part() -> None:
    """A bright square far from the origin lands where kept / copy size says: what the detector
    and the screening copy rely on to carry landmarks between the copy and the photo."""
    image = np.zeros((3001, 4003), np.float32)
    image[2500:2540, 3600:3640] = 1.0  # centre (3620, 2520)
    copy, (kw, kh) = shrink(image, 0.0731)
    ys, xs = np.nonzero(copy > 0)
    weights = copy[ys, xs]
    cx = (np.average(xs, weights=weights) + 0.5) * kw / copy.shape[1]
    cy = (np.average(ys, weights=weights) + 0.5) * kh / copy.shape[0]
    assert abs(cx - 3620) < 1.0 and abs(cy - 2520) < 1.0
