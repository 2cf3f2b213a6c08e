"""Choosing and verifying surrogates; the QA checks on their own (building a pool: tests/lab)."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys

import numpy as np
import pytest
from facekit import load_face, photo_dataset

from dicom_anon.config import PixelSettings
from dicom_anon.faces import masks as M
from dicom_anon.faces import pool as P
from dicom_anon.faces.attributes import Attributes, estimate
from dicom_anon.faces.choice import PatientContext, candidates, parse_age, smile
from dicom_anon.faces.detect import Face, get_detector
from dicom_anon.faces.embed import get_recognizer
from dicom_anon.faces.identities import InMemoryIdentities
from dicom_anon.faces.pipeline import FacePipeline, Patient, get_pipeline, process_photo
from dicom_anon.faces.qa import MAX_SKIN_CHANGE, Looks, check, looks_changed
from dicom_anon.faces.warp import MAX_FEATURE_SHIFT, feature_landmarks
from dicom_anon.headers.errors import Refused
from dicom_anon.headers.pseudonyms import SiteKey

PSEUDONYMS = [f"ANONPATIENT{i:04d}" for i in range(8)]


@pytest.fixture
def lenient(lenient: PixelSettings) -> PixelSettings:
    """This file is about the pool: its people, their keyed order, the memory of them."""
    return lenient.model_copy(update={"identity": "pool"})


def chosen(key: SiteKey, pseudonym: str, **kw) -> str:
    return candidates(P.get_pool(), PatientContext(pseudonym=pseudonym, key=key, **kw))[0].person


def test_choice_is_stable_across_runs_and_processes(site_key) -> None:
    here = [chosen(site_key, p) for p in PSEUDONYMS]
    assert here == [chosen(site_key, p) for p in PSEUDONYMS]
    code = (
        "from dicom_anon.faces.pool import get_pool\n"
        "from dicom_anon.faces.choice import PatientContext, candidates\n"
        "from dicom_anon.headers.pseudonyms import SiteKey\n"
        f"key = SiteKey({site_key.secret!r})\n"
        f"ctx = [PatientContext(pseudonym=p, key=key) for p in {PSEUDONYMS!r}]\n"
        "print([candidates(get_pool(), c)[0].person for c in ctx])"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == repr(here)


def test_different_secrets_and_patients_get_different_faces(site_key, other_site_key) -> None:
    mine = [chosen(site_key, p) for p in PSEUDONYMS]
    theirs = [chosen(other_site_key, p) for p in PSEUDONYMS]
    assert mine != theirs
    assert len(set(mine)) >= 3  # patients spread over the pool, not all on one face


def test_header_sex_and_age_filter_the_pool(site_key) -> None:
    pool = P.get_pool()
    for p in PSEUDONYMS:
        men = candidates(pool, PatientContext(pseudonym=p, key=site_key, sex="M"))
        assert men and all(s.sex == "M" for s in men)
    older = candidates(pool, PatientContext(pseudonym="x", key=site_key, age_years=parse_age("060Y")))
    suited = [s.age_band[1] >= 50 for s in older]
    # The best-suited first; the others follow only as fallbacks for the QA gate.
    assert suited[0] and suited == sorted(suited, reverse=True)
    assert parse_age("006M") == 0.5 and parse_age("bad") is None


def test_a_man_never_gets_a_womans_face_when_every_man_is_excluded(site_key) -> None:
    # The sex filter does not fall back: with the pool's men all look-alikes (excluded), a man
    # was given a woman's face inside his own beard. No candidate: the photo is held.
    pool = P.get_pool()
    men = frozenset(p for p, photos in pool.people().items() if photos[0].sex == "M")
    ctx = PatientContext(pseudonym="x", key=site_key, sex="M", exclude_people=men)
    assert candidates(pool, ctx) == []
    assert candidates(pool, PatientContext(pseudonym="x", key=site_key, exclude_people=men))


def test_a_child_never_gets_an_adults_face(site_key) -> None:
    pool = P.get_pool()  # openpeople: 18 to 65 years
    assert candidates(pool, PatientContext(pseudonym="x", key=site_key, age_years=parse_age("008Y"))) == []
    teen = candidates(pool, PatientContext(pseudonym="x", key=site_key, age_years=parse_age("016Y")))
    assert teen and all(s.age_band[0] <= 20 for s in teen)


def test_an_adult_never_gets_a_childs_face(site_key) -> None:
    # A site pool may hold children (SFHQ has toddlers); make one openpeople person a child.
    base = P.get_pool()
    young = base.surrogates[0].person
    pool = dataclasses.replace(
        base,
        surrogates=tuple(
            dataclasses.replace(s, age_band=(3, 8)) if s.person == young else s for s in base.surrogates
        ),
    )
    for age in ("070Y", "030Y"):
        ctx = PatientContext(pseudonym="x", key=site_key, age_years=parse_age(age))
        assert young not in {s.person for s in candidates(pool, ctx)}
    ctx = PatientContext(pseudonym="x", key=site_key, age_years=parse_age("006Y"))
    assert {s.person for s in candidates(pool, ctx)} == {young}


def test_the_photo_whose_expression_matches_the_patients_is_chosen(site_key) -> None:
    # Each openpeople person has a neutral studio portrait and a smiling selfie; a smile's cheek
    # folds round a patient's closed (kept) mouth look like a grimace, and the reverse looks flat.
    # Each person's other photo follows theirs, for the QA gate: it may not look like the patient.
    pool = P.get_pool()
    neutral = candidates(pool, PatientContext(pseudonym="x", key=site_key, smile=0.85))
    assert [s.person for s in neutral[::2]] == [s.person for s in neutral[1::2]]
    assert all(p.id.endswith("studio_portrait") for p in neutral[::2]), [p.id for p in neutral]
    smiling = candidates(pool, PatientContext(pseudonym="x", key=site_key, smile=1.15))[::2]
    selfies = [p for p in smiling if p.id.endswith("amateur_selfie")]
    # P005's selfie barely smiles (0.89) and is turned 8 degrees: his studio portrait stays.
    assert [p.person for p in smiling if p not in selfies] == ["openpeople-P005"]
    assert all(smile(p.landmarks) > 0.9 for p in selfies)


def test_a_bearded_surrogate_is_only_a_fallback_for_a_shaven_patient(site_key) -> None:
    # The new face leaves a surrogate's beard out; on a shaven patient its edge showed as a dark
    # patch. P005 is the default pool's one full beard.
    pool = P.get_pool()
    assert all(s.beard > 0.85 for s in pool.people()["openpeople-P005"])
    assert all(s.beard < 0.85 for p, ss in pool.people().items() if p != "openpeople-P005" for s in ss)
    for pseudonym in PSEUDONYMS:
        shaven = candidates(pool, PatientContext(pseudonym=pseudonym, key=site_key, sex="M", beard=0.2))
        assert [s.person for s in shaven][-1] == "openpeople-P005", pseudonym
        # A bearded patient's order is the keyed order, as if the beard were not measured.
        bearded = candidates(pool, PatientContext(pseudonym=pseudonym, key=site_key, sex="M", beard=0.95))
        unmeasured = candidates(pool, PatientContext(pseudonym=pseudonym, key=site_key, sex="M"))
        assert [s.id for s in bearded] == [s.id for s in unmeasured]
    assert [s.person for s in unmeasured] != [s.person for s in shaven]


def test_never_a_surrogate_that_looks_like_the_patient(site_key) -> None:
    pool = P.get_pool()
    twin = pool.surrogates[0]
    picks = candidates(pool, PatientContext(pseudonym="x", key=site_key, embedding=twin.embedding))
    assert twin.person not in {s.person for s in picks}


def test_remembered_person_comes_first_whatever_this_photo_measures(site_key) -> None:
    pool = P.get_pool()
    # A pale photo's skin tone puts the pool's lighter-skinned people first ...
    tone = np.array([80.0, 16.0, 23.0])
    near = [s.person for s in candidates(pool, PatientContext(pseudonym="x", key=site_key, skin_lab=tone))]
    far = near[-1]
    assert np.linalg.norm(np.mean([s.skin_lab for s in pool.people()[far]], axis=0) - tone) > 22
    # ... but the person this patient was given before still leads, with both of their photos
    # (another photo of them before another person), and the others keep their order.
    ctx = PatientContext(pseudonym="x", key=site_key, skin_lab=tone, remembered=far)
    picks = candidates(pool, ctx)
    assert [s.person for s in picks] == [far, far, *near[:-2]]
    assert picks[0].id != picks[1].id
    # Never when this photo makes them a look-alike of the patient.
    twin = pool.people()[far][0]
    alike = PatientContext(pseudonym="x", key=site_key, embedding=twin.embedding, remembered=far)
    assert far not in {s.person for s in candidates(pool, alike)}
    # A remembered person who is not in this pool (another route's pool) is ignored.
    gone = PatientContext(pseudonym="x", key=site_key, skin_lab=tone, remembered="elsewhere-P1")
    assert [s.person for s in candidates(pool, gone)] == near


def test_pipeline_remembers_the_patients_first_new_face(face_a, lenient) -> None:
    memory = InMemoryIdentities()
    pipe = get_pipeline(lenient, "surrogate")
    first = pipe.process_frames(face_a[None], Patient("ANONMEM", SiteKey(b"k" * 32), memory=memory))
    person = first.faces[0]["person"]
    assert memory.surrogate_for("ANONMEM") == person and not first.faces[0]["remembered"]
    # Another photo of the patient, framed differently, is given the remembered person.
    again = pipe.process_frames(
        np.ascontiguousarray(face_a[12:, 8:])[None], Patient("ANONMEM", SiteKey(b"k" * 32), memory=memory)
    )
    assert again.faces[0]["person"] == person and again.faces[0]["remembered"]


def test_a_route_may_require_one_new_face_per_patient(lenient) -> None:
    import openpeople
    from PIL import Image

    # The patient is pool person P001 and has been given P001 before (as if the pool had
    # changed): on this photo P001 is a look-alike and is never offered.
    p001 = next(p for p in openpeople.curated.list() if p.person_id == "P001")
    img = Image.open(p001.asset_path("studio_portrait")).convert("RGB")
    img.thumbnail((384, 384))
    photo = np.asarray(img)[None]

    def run(same_new_face: str) -> tuple[str | None, str | None]:
        memory = InMemoryIdentities()
        memory.remember_surrogate("ANONREQ", "openpeople-P001")
        settings = lenient.model_copy(update={"same_new_face": same_new_face})
        try:
            res = get_pipeline(settings, "surrogate").process_frames(
                photo, Patient("ANONREQ", SiteKey(b"r" * 32), memory=memory)
            )
        except Refused as exc:
            return None, f"{exc.code}: {exc.reason}"
        return res.faces[0]["person"], None

    person, _ = run("prefer")
    assert person is not None and person != "openpeople-P001"
    person, refused = run("require")
    assert person is None and refused.startswith("no-surrogate")
    assert "openpeople-P001" in refused and "same_new_face: require" in refused


def test_a_required_new_face_that_fails_qa_holds_the_photo(face_a, lenient) -> None:
    memory = InMemoryIdentities()
    first = get_pipeline(lenient, "surrogate").process_frames(
        face_a[None], Patient("ANONQA", SiteKey(b"q" * 32), memory=memory)
    )
    person = first.faces[0]["person"]
    strict = lenient.model_copy(update={"same_new_face": "require", "max_identity_similarity": 0.01})
    with pytest.raises(Refused) as exc:
        get_pipeline(strict, "surrogate").process_frames(
            face_a[None], Patient("ANONQA", SiteKey(b"q" * 32), memory=memory)
        )
    assert exc.value.code == "qa-identity-too-similar"
    assert f"only the patient's new face ({person}) was tried" in exc.value.reason
    # Each of that person's photos at each oval size, nobody else.
    tries = int(exc.value.reason.split(" tries")[0].rsplit(" ", 1)[1])
    assert tries <= 2 * len(M.OVAL_LADDER)


def test_pool_checksums_are_verified(tmp_path) -> None:
    shutil.copytree(P.DEFAULT_POOL, tmp_path / "pool")
    assert len(P.load(tmp_path / "pool").surrogates) == len(P.get_pool().surrogates)
    victim = next((tmp_path / "pool").glob("*.jpg"))
    victim.write_bytes(victim.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(P.PoolError, match="checksum"):
        P.load(tmp_path / "pool")


def _refused_with_pool_of(tmp_path, person: np.ndarray, patient: np.ndarray, site_key) -> Refused:
    """Why ``patient``'s photo is held by a pool built from the one photo ``person``."""
    from PIL import Image

    (tmp_path / "src").mkdir()
    Image.fromarray(person).save(tmp_path / "src" / "person.png")
    from dicom_anon.lab.pool_build import build, folder_sources, write_manifest

    sources = folder_sources(tmp_path / "src", "test")
    entries, _ = build(sources, tmp_path / "pool", get_detector("cpu"), get_recognizer())
    write_manifest(tmp_path / "pool", entries, ["test"])
    settings = PixelSettings(preserve=["mouth"], device="cpu", identity="pool", pool=tmp_path / "pool")
    with pytest.raises(Refused) as exc:
        process_photo(photo_dataset(patient[None]), settings, "ANONX", site_key)
    return exc.value


def test_no_surrogate_when_the_only_pool_person_is_the_patient(tmp_path, face_a, site_key) -> None:
    assert _refused_with_pool_of(tmp_path, face_a, face_a, site_key).code == "no-surrogate"


def test_no_pool_photo_too_dark_to_be_relit_to_a_pale_patient(site_key) -> None:
    pool = P.get_pool()
    # A fair, pale patient (SFHQ_sample_3x6_015's cheeks): the pool's selfies, lit darker than its
    # studio portraits, would need more than twice the blue to reach that skin.
    pale = np.array([84.7, 7.9, 8.9])
    ctx = PatientContext(pseudonym="x", key=site_key, skin_lab=pale)
    offered = candidates(pool, ctx)
    unlimited = candidates(pool, ctx, gain_limit=None)
    assert offered and len(offered) < len(unlimited) == len(pool.surrogates)
    assert all(P.skin_gain(pale, s.skin_lab) <= P.MAX_SKIN_GAIN for s in offered)
    dropped = {s.id for s in unlimited} - {s.id for s in offered}
    assert "openpeople-P008-amateur_selfie" in dropped
    # Darkening has no limit: a dark-skinned patient is offered every photo.
    dark = PatientContext(pseudonym="x", key=site_key, skin_lab=np.array([22.0, 12.0, 3.0]))
    assert len(candidates(pool, dark)) == len(pool.surrogates)
    assert P.skin_gain(np.array([22.0, 12.0, 3.0]), pool.surrogates[0].skin_lab) < 1.0


def test_no_surrogate_names_a_pool_too_dark_for_a_pale_patient(tmp_path, face_a, site_key) -> None:
    from PIL import Image

    # The pool's only person is someone else photographed far darker than the patient.
    other = np.asarray(Image.open(P.DEFAULT_POOL / "openpeople-P003-studio_portrait.jpg").convert("RGB"))
    refused = _refused_with_pool_of(tmp_path, (other * 0.4).astype(np.uint8), face_a, site_key)
    assert refused.code == "no-surrogate"
    assert "lighter skin" in refused.reason


def _face_of(img: np.ndarray) -> Face:
    return get_detector("cpu").detect([img])[0][0]


def _gate(before: np.ndarray, after: np.ndarray, keep: np.ndarray | None = None):
    """The QA gate on ``after`` for the face of ``before`` (nothing kept unless ``keep``), SFace at 0.3."""
    face = _face_of(before)
    kept = np.zeros(before.shape[:2], bool) if keep is None else keep
    emb = get_recognizer().embed(before, face)
    return check(before, after, kept, face, emb, get_detector("cpu"), get_recognizer(), 0.3)


def test_qa_catches_a_changed_preserved_area(face_a) -> None:
    keep = np.zeros(face_a.shape[:2], bool)
    keep[100:110, 100:110] = True
    after = face_a.copy()
    after[105, 105, 0] ^= 1
    v = _gate(face_a, after, keep)
    assert v.code == "qa-preserved-area-changed" and v.preserved_max_abs_diff == 1


def test_qa_catches_a_lost_face(face_a) -> None:
    face = _face_of(face_a)
    after = face_a.copy()
    x0, y0, x1, y1 = (int(v) for v in face.box)
    after[max(0, y0 - 20) : y1 + 20, max(0, x0 - 20) : x1 + 20] = 128
    v = _gate(face_a, after)
    assert v.code == "qa-face-not-found"


def test_qa_passes_the_untouched_photo_only_on_identity(face_a) -> None:
    v = _gate(face_a, face_a)
    assert v.face_found and v.identity_similarity > 0.9 and v.code == "qa-identity-too-similar"
    assert v.skin_change == 0.0 and v.figures()["skin_delta_e"] == 0.0


def test_qa_turns_down_a_face_whose_skin_changed_colour(face_a) -> None:
    """A relighting that leaves a grey or pale mask on the patient's face is held at the gate,
    before the recognisers are asked; a change of light within the limit is not."""

    def verdict(gain: tuple[float, float, float]):
        return _gate(face_a, np.clip(face_a * np.array(gain), 0, 255).astype(np.uint8))

    greyed = verdict((0.45, 0.5, 0.55))
    assert greyed.code == "qa-skin-colour-changed" and greyed.identity_similarity is None
    assert greyed.skin_change > MAX_SKIN_CHANGE
    # Still the patient under a slightly dimmer light: judged on identity, as before.
    dimmer = verdict((0.95, 0.95, 0.95))
    assert dimmer.code == "qa-identity-too-similar" and 0 < dimmer.skin_change < MAX_SKIN_CHANGE


def _skin_limit(monkeypatch, limit: float) -> None:
    """The gate's skin limit (the full check and the pipeline's screen both read ``qa``'s)."""
    from dicom_anon.faces import qa

    monkeypatch.setattr(qa, "MAX_SKIN_CHANGE", limit)


def _count_renders(monkeypatch) -> list[str]:
    """The surrogate picture of every render the pipeline makes (the real render, counted)."""
    rendered: list[str] = []
    apply = FacePipeline._apply

    def counted(cand, *args):
        rendered.append(cand.info["surrogate"])
        return apply(cand, *args)

    monkeypatch.setattr(FacePipeline, "_apply", staticmethod(counted))
    return rendered


def test_a_photo_whose_every_new_face_changes_the_skin_is_held_with_the_reason(
    face_a, lenient, monkeypatch
) -> None:
    # With no change allowed, every candidate's relit cheeks differ from the patient's.
    _skin_limit(monkeypatch, 0.0)
    rendered = _count_renders(monkeypatch)
    with pytest.raises(Refused) as exc:
        patient = Patient("ANONSKIN", SiteKey(b"s" * 32))
        get_pipeline(lenient, "surrogate").process_frames(face_a[None], patient)
    assert exc.value.code == "qa-skin-colour-changed"
    assert "the cheeks' colour changed by at least" in exc.value.reason and "(limit 0)" in exc.value.reason
    # A picture that changed the skin is not tried again at a larger oval (a look-alike is).
    assert len(rendered) >= 2 and len(set(rendered)) == len(rendered)
    assert f"after {len(rendered)} tries" in exc.value.reason


def _read(rgb: np.ndarray) -> tuple[Face, Attributes]:
    face = _face_of(rgb)
    return face, estimate(rgb, face)


def test_qa_turns_down_a_new_face_that_reads_as_the_other_sex(portraits, monkeypatch) -> None:
    """A new face the estimator reads as the other sex is turned down before the recognisers
    are asked, unless the patient's own photo reads that way too (the estimator's bias on this
    patient, which must not hold their photos)."""
    from dicom_anon.faces import qa

    monkeypatch.setattr(qa, "MAX_SKIN_CHANGE", 1e9)  # another person's photo: any skin passes
    woman, man = portraits["P001_studio_portrait"].rgb, portraits["P005_studio_portrait"].rgb
    (w_face, w_read), (_, m_read) = _read(woman), _read(man)
    assert w_read.trusted_sex() == "F" and m_read.trusted_sex() == "M"
    emb = get_recognizer().embed(woman, w_face)
    kept = np.zeros(woman.shape[:2], bool)

    def verdict(looks: Looks):
        # An identity limit loose enough that two people pass it: the looks alone are judged here.
        return check(woman, man, kept, w_face, emb, get_detector("cpu"), get_recognizer(), 0.9, looks=looks)

    changed = verdict(Looks(sex="F", adult=True, patient=w_read))
    assert changed.code == "qa-sex-changed" and changed.identity_similarity is None
    assert changed.figures()["read_sex"] == "M" and changed.figures()["read_sex_confidence"] >= 0.95
    # A woman the estimator takes for a man (her header says F): her new faces may read as men.
    biased = verdict(Looks(sex="F", adult=True, patient=m_read))
    assert biased.code is None and biased.identity_similarity is not None
    # Asked for a man, or for either sex: judged on identity alone.
    assert verdict(Looks(sex="M", adult=True, patient=w_read)).code is None
    assert verdict(Looks(sex=None, adult=True, patient=w_read)).code is None


def test_qa_turns_down_a_childs_face_on_an_adult(testdata, portraits) -> None:
    """A new face on an adult that reads as a small child's is turned down; on a patient whose
    own photo reads as a child, or on a child, it is not."""
    child = load_face(testdata, "SFHQ_variability_age_060.jpg", 512)
    c_face, c_read = _read(child)
    _, adult = _read(portraits["P001_studio_portrait"].rgb)
    assert c_read.age_years < 13 <= 20 <= adult.age_years
    code, read = looks_changed(child, c_face, Looks(sex=None, adult=True, patient=adult))
    assert code == "qa-age-changed" and read is not None and read.age_years == c_read.age_years
    assert looks_changed(child, c_face, Looks(sex=None, adult=True, patient=c_read))[0] is None
    assert looks_changed(child, c_face, Looks(sex=None, adult=False, patient=adult))[0] is None


def test_a_photo_whose_every_new_face_reads_as_the_other_sex_is_held_with_the_reason(
    face_a, lenient, monkeypatch
) -> None:
    from dicom_anon.faces import qa

    # Any skin passes: this test is about the sex, which the gate judges after the skin.
    _skin_limit(monkeypatch, 1e9)
    patient_read = estimate(face_a, _face_of(face_a))
    assert patient_read.trusted_sex() == "F"
    # The estimator, asked about each new face (not the patient's photo), reads a man.
    monkeypatch.setattr(qa, "estimate", lambda rgb, face: Attributes("M", 0.99, 40.0))
    rendered = _count_renders(monkeypatch)
    with pytest.raises(Refused) as exc:
        patient = Patient("ANONSEX", SiteKey(b"x" * 32), sex="F", age_years=70.0)
        get_pipeline(lenient, "surrogate").process_frames(face_a[None], patient)
    assert exc.value.code == "qa-sex-changed"
    assert "the new faces read as M (asked for F; the patient's photo reads F)" in exc.value.reason
    # A picture whose face read as the other sex is not tried again at a larger oval.
    assert len(rendered) >= 2 and len(set(rendered)) == len(rendered)


def _face_at(landmarks: np.ndarray) -> Face:
    lo, hi = landmarks.min(axis=0) - 60, landmarks.max(axis=0) + 60
    return Face(np.concatenate([lo, hi]), landmarks, 0.99)


# A patient with close-set eyes and a long nose; the surrogate's proportions differ from them.
_PATIENT = np.array([[170.0, 200.0], [230.0, 200.0], [200.0, 250.0], [175.0, 290.0], [225.0, 290.0]])
_SURROGATE = np.array([[60.0, 100.0], [140.0, 100.0], [100.0, 140.0], [70.0, 180.0], [130.0, 180.0]])


def test_new_eyes_and_nose_take_the_surrogates_proportions_within_a_limit() -> None:
    face = _face_at(_PATIENT)
    masks = M.build(face, (500, 500, 3), [M.Preset.MOUTH])
    moved = feature_landmarks(_SURROGATE, face, masks)
    shift = np.linalg.norm(moved - _PATIENT, axis=1) / face.eye_distance
    assert np.array_equal(moved[3:], _PATIENT[3:])  # the mouth corners are the patient's
    assert (shift[:2] > 0.05).all() and (shift <= MAX_FEATURE_SHIFT + 1e-9).all()
    # Moved towards the surrogate's wider-set eyes.
    assert moved[1, 0] - moved[0, 0] > _PATIENT[1, 0] - _PATIENT[0, 0]


def test_preserved_eyes_stay_where_the_patients_are() -> None:
    face = _face_at(_PATIENT)
    masks = M.build(face, (500, 500, 3), [M.Preset.MOUTH, M.Preset.EYES])
    moved = feature_landmarks(_SURROGATE, face, masks)
    assert np.array_equal(moved[:2], _PATIENT[:2])
    assert np.array_equal(moved[3:], _PATIENT[3:])
