"""Which pool person a patient gets.

The candidates are pool people who suit the patient (sex, age band, skin tone, pose, beard),
ordered by rendezvous hashing over an HMAC of the patient pseudonym under the site key: the
same patient gets the same new face in every photo and on every machine with the same key, a
different key gives a different face, and a candidate dropping out of the filter does not
reshuffle the others. Nobody the patient resembles is ever offered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from ..headers.pseudonyms import SiteKey
from .detect import MOUTH_LEFT, MOUTH_RIGHT, landmark_eye_distance
from .embed import cosine
from .pool import ADULT_AGE_YEARS, MAX_SKIN_GAIN, Pool, Surrogate, child_band, skin_gain

# A pool person whose embedding is at least this close to the patient's is never used:
# SFace calls 0.363 "same person"; we keep a margin below it.
EXCLUDE_SIMILARITY = 0.30
# Skin tones further apart than this (CIELAB delta E) are not offered while closer ones exist.
MAX_SKIN_DELTA_E = 22.0
AGE_TOLERANCE_YEARS = 10.0
# An age estimated from the photo (faces/attributes.py) reads older adults about ten years young.
ESTIMATED_AGE_TOLERANCE_YEARS = 15.0
# Below ADULT_AGE_YEARS (pool.py) an adult's features look absurd (orthodontic patients are
# mostly children): a child gets only a pool person within the age tolerance, or none, and the
# photo is held.
# Faces change fast in childhood: a child's surrogate must be this close in age (years).
CHILD_AGE_TOLERANCE_YEARS = 4.0
MAX_YAW_DIFFERENCE = 25.0
# Choosing among one person's photos: this much mouth width (in eye distances) weighs as much as
# ten degrees of yaw. A smiling selfie's cheek folds round a patient's closed, kept mouth read
# as a grimace; the mouth widens by ~0.2 eye distances from neutral to a smile.
SMILE_PER_10_DEGREES = 0.1
# A surrogate with a full beard (beard_cover above BEARDED) suits only a patient with one too:
# the new face leaves the beard out, so on a shaven patient its edge showed as a dark patch.
# Stubble and hard side light put a shaven patient at up to ~0.85, hence the higher bar there.
BEARDED = 0.85
PATIENT_BEARDED = 0.9


@dataclass(frozen=True)
class PatientContext:
    """What the header and the photo tell us about the person being replaced."""

    pseudonym: str
    key: SiteKey
    sex: str | None = None
    # The estimator's likelier sex where it is unsure and the header is silent (``sex`` is None).
    likely_sex: str | None = None
    age_years: float | None = None
    skin_lab: np.ndarray | None = None
    yaw: float = 0.0
    embedding: np.ndarray | None = None
    exclude_people: frozenset[str] = frozenset()
    # The pool person this patient was given before (the service remembers it per pseudonym).
    remembered: str | None = None
    # The remembered person, when QA turned it down on this photo: a generated identity source
    # offers variants of it before anyone new, and nobody new with ``variants_only``
    # (``same_new_face: require``).
    passed_over: str | None = None
    variants_only: bool = False
    # The variant of the remembered person that passed on an earlier photo (0: none), offered
    # first.
    preferred_variant: int = 0
    age_tolerance: float = AGE_TOLERANCE_YEARS
    # The age is the estimator's reading of the photo, not the header's: a candidate read by the
    # same estimator shares its bias, so a generated person can be held to a narrower band.
    age_estimated: bool = False
    # Mouth width over eye distance: about 0.85 for a closed mouth, 1.0-1.2 for a smile.
    smile: float | None = None
    # pool.beard_cover of the patient's face.
    beard: float | None = None
    # How far the patient's lips part (``mouth``); None where the identity source does not look.
    mouth_open: float | None = None
    # SFace embeddings of the new people other patients of the site were given (generated
    # identities are kept apart from them).
    taken: np.ndarray | None = None


def smile(landmarks: np.ndarray) -> float:
    """Mouth width over eye distance (5-point landmarks): how broadly the face smiles."""
    return float(np.linalg.norm(landmarks[MOUTH_RIGHT] - landmarks[MOUTH_LEFT])) / max(
        landmark_eye_distance(landmarks), 1e-6
    )


def _photo_cost(photo: Surrogate, ctx: PatientContext) -> float:
    """How far one photo of a pool person is from the patient's pose and expression."""
    cost = abs(photo.yaw - ctx.yaw) / 10.0
    if ctx.smile is not None:
        cost += abs(smile(photo.landmarks) - ctx.smile) / SMILE_PER_10_DEGREES
    return cost


def parse_age(value: object) -> float | None:
    """Patient's Age (AS, e.g. ``034Y``, ``006M``) in years, or None."""
    text = str(value or "").strip().upper()
    if len(text) != 4 or not text[:3].isdigit() or text[3] not in "DWMY":
        return None
    return int(text[:3]) / {"D": 365.25, "W": 52.18, "M": 12.0, "Y": 1.0}[text[3]]


def parse_sex(value: object) -> str | None:
    text = str(value or "").strip().upper()
    return text if text in ("M", "F") else None


def _rendezvous(ctx: PatientContext, person: str) -> bytes:
    return ctx.key.digest("surrogate", f"{ctx.pseudonym}\x00{person}")


def _age_gap(band: tuple[int, int] | None, age: float | None) -> float:
    if band is None or age is None:
        return 0.0
    lo, hi = band
    return max(0.0, lo - age, age - hi)


def _light_enough(photo: Surrogate, ctx: PatientContext, gain_limit: float | None) -> bool:
    return gain_limit is None or ctx.skin_lab is None or skin_gain(ctx.skin_lab, photo.skin_lab) <= gain_limit


def candidates(pool: Pool, ctx: PatientContext, gain_limit: float | None = MAX_SKIN_GAIN) -> list[Surrogate]:
    """Suitable surrogates, in this patient's keyed order; every photo of each person, the one
    closest in pose and expression first.

    The best-suited people come first (sex, age band, skin tone, pose, beard, each filter falling
    back to the unfiltered set when it would leave nobody), then the rest of the people of
    the patient's sex, each group in keyed order: when the QA gate turns the best-suited
    down, a less well matched face is tried before the photo is refused, but never one of
    the other sex, nor an adult for a child or a child for an adult (empty list: the photo is
    held). The exclusion of look-alikes never falls back, nor that of photos whose skin is too
    dark to be relit to the patient's (``gain_limit``; None: no limit). The person this patient
    was given before comes first whatever this photo's measured skin tone, age or pose say
    (they wobble from photo to photo, the patient does not), unless this photo makes them a
    look-alike.
    """
    people = {
        person: bright
        for person, photos in pool.people().items()
        if person not in ctx.exclude_people
        and not (
            ctx.embedding is not None
            and any(cosine(ctx.embedding, p.embedding) >= EXCLUDE_SIMILARITY for p in photos)
        )
        and (bright := [p for p in photos if _light_enough(p, ctx, gain_limit)])
    }

    def narrow(keep: Callable[[list[Surrogate]], bool]) -> None:
        kept = {k: v for k, v in people.items() if keep(v)}
        if kept:
            people.clear()
            people.update(kept)

    def keyed(names: Iterable[str]) -> list[str]:
        return sorted(names, key=lambda person: _rendezvous(ctx, person), reverse=True)

    eligible = dict(people)
    # Before the filters: the remembered person leads whatever this photo measures.
    remembered = ctx.remembered if ctx.remembered in people else None
    if ctx.sex:
        # Strict, unlike the filters below: with every man in the pool a look-alike, a bearded
        # patient was given a woman's face inside his own beard.
        for person in [k for k, v in people.items() if v[0].sex not in (None, ctx.sex)]:
            del people[person]
    if ctx.age_years is not None:
        # Strict across childhood both ways: never an adult's face for a child, nor a child's
        # for an adult (a site pool of SFHQ faces gave a bearded old man a toddler's face
        # once his best-suited people had failed QA).
        child = ctx.age_years < ADULT_AGE_YEARS
        for person in [
            k
            for k, v in people.items()
            if (child or child_band(v[0].age_band))
            and _age_gap(v[0].age_band, ctx.age_years) > CHILD_AGE_TOLERANCE_YEARS
        ]:
            del people[person]
    same_sex = dict(people)
    if ctx.age_years is not None:
        narrow(lambda photos: _age_gap(photos[0].age_band, ctx.age_years) <= ctx.age_tolerance)
    if ctx.skin_lab is not None:

        def skin_ok(photos: list[Surrogate]) -> bool:
            tone = np.mean([p.skin_lab for p in photos], axis=0)
            return float(np.linalg.norm(tone - ctx.skin_lab)) <= MAX_SKIN_DELTA_E

        narrow(skin_ok)
    narrow(lambda photos: any(abs(p.yaw - ctx.yaw) <= MAX_YAW_DIFFERENCE for p in photos))
    if ctx.beard is not None and ctx.beard < PATIENT_BEARDED:
        narrow(lambda photos: min(p.beard for p in photos) < BEARDED)
    order = keyed(people) + keyed(set(same_sex) - set(people))
    if remembered is not None:
        # Another photo of the same person is a smaller change to the patient's series than
        # another person.
        order = [remembered, *(p for p in order if p != remembered)]
    # Every photo of each person, the best-matched first: where one photo of a person still
    # looks like the patient, their other photo often does not (13 of the 27 SFHQ faces that
    # were held as look-alikes with one photo a person passed both recognisers with the other).
    return [s for p in order for s in sorted(eligible[p], key=lambda s: (_photo_cost(s, ctx), s.id))]
