"""The intraoral preset: pixels leave exactly as received, and only when no detector finds a face or
eyes; a photo that says intraoral and shows a face is held (face-in-intraoral)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from dentalkit import sample_set
from pydicom.uid import ExplicitVRLittleEndian

from dicom_anon.config import PRESETS
from dicom_anon.faces.detect import get_detector
from dicom_anon.faces.intraoral import eye_pairs, findings
from dicom_anon.faces.pipeline import process_photo
from dicom_anon.headers.errors import Refused
from dicom_anon.pixels import decode

KEEP = PRESETS["intraoral"].pixels


@pytest.fixture(scope="module")
def samples(testdata) -> dict:
    return sample_set(testdata)


@pytest.mark.parametrize("name", ["intraoral-coded", "buccal-right-uncoded"])
def test_intraoral_photo_leaves_with_its_pixels(samples, site_key, name):
    ds = samples[name][0]
    result = process_photo(ds, KEEP, "PSEUDO", site_key)
    assert result.dataset.PixelData == ds.PixelData
    assert result.options_cleaned == frozenset()  # nothing was cleaned, so nothing is claimed
    [check] = result.qa_figures["no_face_check"]
    assert not any(check.values()), check


def test_face_coded_as_intraoral_is_held(samples, site_key):
    with pytest.raises(Refused) as refused:
        process_photo(samples["face-coded-as-intraoral"][0], KEEP, "PSEUDO", site_key)
    assert refused.value.code == "face-in-intraoral"
    assert "mtcnn faces: 1" in refused.value.reason and "yunet faces: 1" in refused.value.reason


def test_eyes_without_a_face_are_held(samples, site_key):
    """A band across the eyes only: MTCNN finds nothing there, the other detectors do."""
    ds = copy.deepcopy(samples["face-coded-as-intraoral"][0])
    frame = decode(ds).frames[0]
    face = get_detector("cpu").detect([frame])[0][0]
    (lx, ly), (rx, _) = face.landmarks[0], face.landmarks[1]
    span = rx - lx
    band = np.ascontiguousarray(
        frame[int(ly - 0.6 * span) : int(ly + 0.5 * span), int(lx - 0.8 * span) : int(rx + 0.8 * span)]
    )
    assert findings(band, "cpu")["mtcnn_faces"] == 0
    ds.Rows, ds.Columns = band.shape[:2]
    ds.PixelData = band.tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    with pytest.raises(Refused) as refused:
        process_photo(ds, KEEP, "PSEUDO", site_key)
    assert refused.value.code == "face-in-intraoral" and "haar eye pairs" in refused.value.reason


def test_eye_pairs_need_two_alike_side_by_side():
    assert eye_pairs(np.array([[10, 10, 20, 20], [50, 12, 21, 20]])) == 1
    assert eye_pairs(np.array([[10, 10, 20, 20], [50, 60, 20, 20]])) == 0  # one above the other
    assert eye_pairs(np.array([[10, 10, 20, 20], [50, 10, 60, 60]])) == 0  # sizes far apart
    assert eye_pairs(np.array([[10, 10, 20, 20]])) == 0


def test_a_photo_too_small_to_check_is_held(samples, site_key):
    ds = copy.deepcopy(samples["intraoral-coded"][0])
    small = np.ascontiguousarray(decode(ds).frames[0][:20, :24])
    ds.Rows, ds.Columns = small.shape[:2]
    ds.PixelData = small.tobytes()
    with pytest.raises(Refused) as refused:
        process_photo(ds, KEEP, "PSEUDO", site_key)
    assert refused.value.code == "too-small-to-check"
