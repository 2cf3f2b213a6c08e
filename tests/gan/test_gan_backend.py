"""The GAN backend's contract: exact preserved area, a new face around it, one face per patient."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dicom_anon.faces import masks as M
from dicom_anon.faces.choice import PatientContext
from dicom_anon.faces.detect import Face
from dicom_anon.faces.gan.backend import GanBackend, context_seed
from dicom_anon.faces.gan.encoder import Encoder
from dicom_anon.faces.gan.generators import FaceGenerator
from dicom_anon.headers.pseudonyms import SiteKey


def _photo() -> tuple[np.ndarray, Face]:
    """A textured 'photo' with a face whose landmarks sit on the template, 3x its size."""
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (480, 400, 3), dtype=np.uint8)
    landmarks = M.TEMPLATE * 3.0 + np.array([30.0, 60.0])
    box = np.array([*landmarks.min(0) - 40, *landmarks.max(0) + 40])
    return frame, Face(box=box, landmarks=landmarks, score=0.99)


@pytest.fixture
def backend(tiny_generator: FaceGenerator) -> GanBackend:
    torch.manual_seed(0)
    encoder = Encoder(64, tiny_generator.latent_dim, width=8)
    return GanBackend(tiny_generator, encoder, max_candidates=2)


def _ctx(key: SiteKey, pseudonym: str = "PAT-1") -> PatientContext:
    return PatientContext(pseudonym=pseudonym, key=key)


def test_preserved_area_is_bit_identical_and_the_face_around_it_is_new(
    backend: GanBackend, site_key: SiteKey
) -> None:
    frame, face = _photo()
    fm = M.build(face, frame.shape, [M.Preset.MOUTH])
    x0, y0, x1, y1 = fm.roi
    original = frame[y0:y1, x0:x1].copy()
    candidates = backend.candidates(_ctx(site_key))
    assert len(candidates) == 2
    rois = [c.render(frame, face, fm) for c in candidates]
    for candidate, roi in zip(candidates, rois, strict=True):
        assert roi.shape == original.shape and roi.dtype == np.uint8
        assert fm.preserved.any()
        assert np.array_equal(roi[fm.preserved], original[fm.preserved])
        untouched = fm.alpha == 0
        assert np.array_equal(roi[untouched], original[untouched])
        core = fm.alpha > 0.99
        changed = np.abs(roi[core].astype(int) - original[core].astype(int)).mean()
        assert changed > 20
        assert candidate.info["generator"] == "tiny-dcgan" and candidate.info["context"] == "generator"
        assert np.array_equal(candidate.render(frame, face, fm), roi)  # rendered again: the same
    assert not np.array_equal(rois[0], rois[1])
    assert np.array_equal(frame[y0:y1, x0:x1], original)  # the input frame is not written to


def test_one_patient_gets_the_same_face_and_another_patient_a_different_one(
    backend: GanBackend, site_key: SiteKey
) -> None:
    frame, face = _photo()
    fm = M.build(face, frame.shape, [M.Preset.MOUTH])
    first = backend.candidates(_ctx(site_key))[0].render(frame, face, fm)
    again = backend.candidates(_ctx(site_key))[0].render(frame, face, fm)
    other = backend.candidates(_ctx(site_key, "PAT-2"))[0].render(frame, face, fm)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_the_context_face_is_keyed_by_the_site_secret(site_key: SiteKey, other_site_key: SiteKey) -> None:
    assert context_seed(_ctx(site_key), 0) == context_seed(_ctx(site_key), 0)
    assert context_seed(_ctx(site_key), 0) != context_seed(_ctx(other_site_key), 0)
    assert context_seed(_ctx(site_key), 0) != context_seed(_ctx(site_key), 1)


def test_lesion_boxes_and_lower_face_stay_exact_too(backend: GanBackend, site_key: SiteKey) -> None:
    frame, face = _photo()
    image_boxes = M.image_box_mask(frame.shape, [M.LesionBox(150, 180, 30, 20)])
    fm = M.build(face, frame.shape, [M.Preset.LOWER_FACE], image_preserved=image_boxes)
    x0, y0, x1, y1 = fm.roi
    roi = backend.candidates(_ctx(site_key))[0].render(frame, face, fm)
    assert np.array_equal(roi[fm.preserved], frame[y0:y1, x0:x1][fm.preserved])


def test_an_encoder_for_another_latent_space_is_refused(tiny_generator: FaceGenerator) -> None:
    from dicom_anon.faces.gan.registry import ModelCardError

    with pytest.raises(ModelCardError, match="expects 4"):
        GanBackend(tiny_generator, Encoder(64, 100, width=8))


def test_pool_contexts_are_different_people(tiny_generator: FaceGenerator, site_key: SiteKey) -> None:
    # The pool offers every photo of each person; a context is an identity, so one photo a person.
    from dicom_anon.faces.pool import get_pool

    torch.manual_seed(0)
    pool_backend = GanBackend(tiny_generator, Encoder(64, 4, width=8), pool=get_pool(), max_candidates=3)
    infos = [info for _, info, _, _ in pool_backend.contexts(_ctx(site_key))]
    people = [info["person"] for info in infos]
    assert len(infos) == 3 and len(set(people)) == 3 and all(i["context"] == "pool" for i in infos)


def test_contexts_are_the_identity_sources_people_and_are_remembered(
    tiny_generator: FaceGenerator, site_key: SiteKey
) -> None:
    """The context is the person the route's identity source gives the patient (the transplant's
    person), and the candidate carries it so the pipeline remembers it once it passes QA."""
    from dicom_anon.faces.identities import PoolIdentities
    from dicom_anon.faces.pool import get_pool

    identities = PoolIdentities(get_pool())
    torch.manual_seed(0)
    backend = GanBackend(tiny_generator, Encoder(64, 4, width=8), identities=identities, max_candidates=2)
    ctx = _ctx(site_key)
    chosen = list(dict.fromkeys(s.person for s in identities.people(ctx)))[:2]
    candidates = backend.candidates(ctx)
    assert [c.info["person"] for c in candidates] == chosen
    assert all(c.surrogate is not None and c.surrogate.person == c.info["person"] for c in candidates)
    assert all(c.info["context"] == identities.name for c in candidates)
    frame, face = _photo()
    fm = M.build(face, frame.shape, [M.Preset.MOUTH])
    x0, y0, x1, y1 = fm.roi
    roi = candidates[0].render(frame, face, fm)
    assert np.array_equal(roi[fm.preserved], frame[y0:y1, x0:x1][fm.preserved])
