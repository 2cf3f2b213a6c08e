"""dlib's recogniser as the QA gate's second recogniser (default on); as the evaluation's judge: tests/lab."""

from __future__ import annotations

import numpy as np
import pytest

from dicom_anon.faces.detect import get_detector
from dicom_anon.faces.judge import DLIB_SAME_PERSON, distance, get_judge
from dicom_anon.lab.evaluate import EvalImage


def _describe(img: EvalImage) -> np.ndarray:
    face = get_detector("cpu").detect([img.rgb])[0][0]
    return get_judge().describe(img.rgb, face)


def test_judge_tells_one_person_from_another(portraits) -> None:
    studio, selfie = _describe(portraits["P003_studio_portrait"]), _describe(portraits["P003_amateur_selfie"])
    other = _describe(portraits["P005_studio_portrait"])
    # Measured: about 0.4 between P003's two photos, about 1.0 from P003 to P005 (an older man).
    assert distance(studio, selfie) < DLIB_SAME_PERSON < distance(studio, other)


def _gate(portraits, before: str, after: str):
    from dicom_anon.faces.embed import get_recognizer
    from dicom_anon.faces.qa import SecondOpinion, check

    patient, shown = portraits[before].rgb, portraits[after].rgb
    face = get_detector("cpu").detect([patient])[0][0]
    second = SecondOpinion(get_judge(), patient, face)
    nothing_kept = np.zeros(patient.shape[:2], bool)
    embedding = get_recognizer().embed(patient, face)
    # SFace's limit is out of reach here (above 1), so only the second recogniser can refuse.
    return check(
        patient,
        shown,
        nothing_kept,
        face,
        embedding,
        get_detector("cpu"),
        get_recognizer(),
        1.01,
        second=second,
    )


def test_second_recognizer_refuses_a_face_dlib_still_takes_for_the_patient(portraits) -> None:
    verdict = _gate(portraits, "P003_studio_portrait", "P003_studio_portrait")
    assert verdict.code == "qa-identity-too-similar"
    assert verdict.second_distance is not None and verdict.second_distance < 0.1
    assert verdict.figures()["second_recognizer_distance"] == round(verdict.second_distance, 4)


def test_second_recognizer_passes_another_person(portraits) -> None:
    # Someone of about P003's skin (cheeks 4.8 delta E apart), or the gate's skin check holds it first.
    verdict = _gate(portraits, "P003_studio_portrait", "P010_studio_portrait")
    assert verdict.code is None and verdict.second_distance > DLIB_SAME_PERSON


def test_route_with_a_second_recognizer_records_its_distance(face_a, lenient, site_key) -> None:
    from facekit import photo_dataset

    from dicom_anon.faces.pipeline import process_photo

    assert lenient.second_recognizer  # the default
    result = process_photo(photo_dataset(face_a[None]), lenient, "ANONPATIENT0001", site_key)
    face = result.qa_figures["faces"][0]
    assert face["second_recognizer_distance"] >= DLIB_SAME_PERSON
    sface_only = lenient.model_copy(update={"second_recognizer": False})
    plain = process_photo(photo_dataset(face_a[None]), sface_only, "ANONPATIENT0001", site_key)
    assert "second_recognizer_distance" not in plain.qa_figures["faces"][0]


def test_a_missing_second_recognizer_holds_the_photo(face_a, lenient, site_key, monkeypatch) -> None:
    from facekit import photo_dataset

    from dicom_anon.faces import pipeline
    from dicom_anon.faces.judge import JudgeUnavailable
    from dicom_anon.headers.errors import Refused

    def missing():
        raise JudgeUnavailable("the 'dlib-bin' package is not installed")

    monkeypatch.setattr(pipeline, "get_judge", missing)
    # A settings value no other test uses, so the cached pipeline of another test is not reused.
    settings = lenient.model_copy(update={"max_candidates": 7})
    with pytest.raises(Refused) as refused:
        pipeline.process_photo(photo_dataset(face_a[None]), settings, "ANONPATIENT0001", site_key)
    assert refused.value.code == "method-unavailable"
    assert "second recogniser cannot run: the 'dlib-bin' package is not installed" in str(refused.value)
