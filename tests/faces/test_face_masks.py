"""Preserved and replaced areas from landmarks: presets, boxes, and where the feather may fall."""

from __future__ import annotations

import numpy as np
import pytest

from dicom_anon.faces import masks as M
from dicom_anon.faces.detect import Face

SHAPE = (600, 500, 3)


def face(scale: float = 3.0, dx: float = 80.0, dy: float = 60.0) -> Face:
    """A frontal face: the template landmarks scaled to ~105 px between the eyes."""
    lm = M.TEMPLATE * scale + [dx, dy]
    return Face(box=np.array([dx, dy, dx + 112 * scale, dy + 112 * scale]), landmarks=lm, score=0.99)


def at(fm: M.FaceMasks, mask: np.ndarray, point: np.ndarray) -> bool:
    x, y = np.round(point).astype(int)
    return bool(mask[y - fm.roi[1], x - fm.roi[0]])


def test_each_preset_covers_its_feature_and_not_the_others() -> None:
    f = face()
    le, re, nose, ml, mr = f.landmarks
    mouth_mid = (ml + mr) / 2
    chin = mouth_mid + np.array([0.0, 45.0])
    cases = {
        M.Preset.MOUTH: ([mouth_mid, ml, mr], [le, re, nose]),
        M.Preset.LOWER_FACE: ([mouth_mid, chin], [le, re, nose]),
        M.Preset.NOSE: ([nose], [le, re, mouth_mid]),
        M.Preset.EYES: ([le, re], [nose, mouth_mid]),
    }
    for preset, (inside, outside) in cases.items():
        fm = M.build(f, SHAPE, [preset])
        assert all(at(fm, fm.preserved, p) for p in inside), preset
        assert not any(at(fm, fm.preserved, p) for p in outside), preset


def test_presets_combine_as_a_union() -> None:
    f = face()
    mouth = M.build(f, SHAPE, [M.Preset.MOUTH]).preserved
    eyes = M.build(f, SHAPE, [M.Preset.EYES]).preserved
    both = M.build(f, SHAPE, [M.Preset.MOUTH, M.Preset.EYES]).preserved
    assert np.array_equal(both, mouth | eyes)


@pytest.mark.parametrize("presets", [[M.Preset.MOUTH], [M.Preset.LOWER_FACE, M.Preset.NOSE]])
def test_feather_never_enters_the_preserved_area(presets) -> None:
    fm = M.build(face(), SHAPE, presets)
    assert fm.preserved.any()
    assert (fm.alpha[fm.preserved] == 0).all()
    soft = (fm.alpha > 0) & (fm.alpha < 1)
    assert soft.any()  # there is a feathered seam ...
    assert not (soft & fm.preserved).any()  # ... and all of it is on the replaced side
    assert fm.alpha.max() == pytest.approx(1.0)


def test_image_and_face_relative_lesion_boxes() -> None:
    f = face()
    image_box = M.LesionBox(10, 20, 30, 40, "image")
    frame_mask = M.image_box_mask(SHAPE, [image_box])
    assert frame_mask[20:60, 10:40].all() and frame_mask.sum() == 30 * 40
    # Left cheek, in fractions of the aligned 112x112 face frame.
    cheek = M.LesionBox(0.2, 0.6, 0.15, 0.1, "face")
    fm = M.build(f, SHAPE, [M.Preset.LESION_BOXES], [cheek])
    centre = M.apply(M.invert(M.face_to_template(f)), np.array([[0.275 * 112, 0.65 * 112]]))[0]
    assert at(fm, fm.preserved, centre)
    assert fm.preserved.sum() == pytest.approx((0.15 * 112 * 3) * (0.1 * 112 * 3), rel=0.1)


def test_larger_oval_and_head_replace_grow_the_region() -> None:
    f = face()
    sizes = [M.build(f, SHAPE, [], oval_scale=s).oval.sum() for s in (1.0, 1.25)]
    head = M.build(f, SHAPE, [], surroundings=M.Surroundings.REPLACE)
    assert sizes[0] < sizes[1] < head.oval.sum() and head.head


def test_standard_oval_replaces_high_brows_fully() -> None:
    # Brows sit about 0.3-0.65 eye distances above the eyes; the highest must be replaced fully,
    # not half (a half-transparent pair of the patient's own brows above the new ones).
    f = face()
    fm = M.build(f, SHAPE, [M.Preset.MOUTH])
    eyes = (f.landmarks[0] + f.landmarks[1]) / 2
    for above in (0.3, 0.65):
        x, y = np.round(eyes - [0.0, above * f.eye_distance]).astype(int)
        assert fm.alpha[y - fm.roi[1], x - fm.roi[0]] > 0.99, above


def test_paint_fills_the_union_of_overlapping_polygons() -> None:
    mask = np.zeros((100, 100), np.uint8)
    M.paint(
        mask,
        np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
        [M.ellipse(40, 50, 20, 20), M.ellipse(60, 50, 20, 20)],
    )
    assert mask[50, 50] == 1  # the overlap (cv2.fillPoly's even-odd rule left it empty)
    assert mask[50, 25] == 1 and mask[50, 75] == 1 and mask[10, 50] == 0
