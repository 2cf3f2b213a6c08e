"""Training crops: faces aligned into the generator's frame with the pipeline's own mouth mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dicom_anon.faces.masks import Preset
from dicom_anon.lab.training.facesets import list_images, load_faces


@pytest.fixture(scope="module")
def sfhq(testdata: Path) -> list[Path]:
    return list_images(testdata / "faces" / "sfhq")


def test_faces_are_aligned_to_64px_with_the_mouth_mask_where_the_mouth_is(sfhq: list[Path]) -> None:
    faces, skipped = load_faces(sfhq[:3], 64, [Preset.MOUTH], device="cpu")
    assert len(faces) == 3 and skipped == []
    assert faces.images.shape == (3, 3, 64, 64) and faces.masks.shape == (3, 1, 64, 64)
    assert faces.images.min() >= -1 and faces.images.max() <= 1
    for mask in faces.masks[:, 0].numpy().astype(bool):
        ys, xs = np.nonzero(mask)
        assert 0.03 < mask.mean() < 0.2
        assert 0.7 * 64 < ys.mean() < 0.9 * 64  # ArcFace template: mouth at y = 92/112
        assert 0.4 * 64 < xs.mean() < 0.6 * 64


def test_the_eyes_preset_lands_in_the_upper_half(sfhq: list[Path]) -> None:
    faces, _ = load_faces(sfhq[:1], 64, [Preset.EYES], device="cpu")
    ys, _ = np.nonzero(faces.masks[0, 0].numpy())
    assert ys.mean() < 32


def test_an_image_without_a_detectable_face_is_left_out(sfhq: list[Path]) -> None:
    close_up = [p for p in sfhq if p.name == "SFHQ_sample_3x6_026.jpg"]
    if not close_up:
        pytest.skip("the close-up sample is not in this copy of the test data")
    faces, skipped = load_faces(close_up, 64, [Preset.MOUTH], device="cpu")
    assert len(faces) == 0 and skipped == close_up
