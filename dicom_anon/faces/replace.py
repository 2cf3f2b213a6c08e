"""Identity replacement: the backend interface, the surrogate backend and the comparison baselines.

A backend turns one face (its region of the frame, its masks) into candidate
renderings, best first; the pipeline's QA gate takes the first that passes. The
surrogate backend's candidates are pool people who suit the patient (sex, age band,
skin tone, pose), ordered by rendezvous hashing over an HMAC of the patient pseudonym
under the site key: the same patient gets the same new face in every photo and on
every machine with the same key, a different key gives a different face, and a
candidate dropping out of the filter does not reshuffle the others.

Blur, pixelation and the eye bar exist only so evaluations can show them side by side;
they are not offered to routes (blur can be reversed, an eye bar leaves the face known).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np
import torch

from ..headers.pseudonyms import SiteKey
from . import blend
from .detect import LEFT_EYE, MOUTH_LEFT, MOUTH_RIGHT, NOSE, RIGHT_EYE, Face, landmark_eye_distance
from .embed import cosine
from .masks import OVAL_LADDER, TEMPLATE, FaceMasks, ellipse, face_outline, paint, similarity
from .pool import ADULT_AGE_YEARS, Pool, Surrogate, child_band, skin_lab, skin_mask

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

# The new face's eyes and nose move at most this far (eye distances) from the patient's towards
# the surrogate's own proportions (half the pool/test pairs need 0.1, 5% more than 0.23).
MAX_FEATURE_SHIFT = 0.2
# A landmark with preserved pixels this close (eye distances) stays where the patient's is.
_PINNED_RADIUS = 0.1

# Shading broader than this (in eye distances) is the patient's light, finer detail the surrogate's face.
LIGHT_SIGMA = 1.0
# Skin texture (pores, fine lines) is detail finer than this (in eye distances); the surrogate's is
# softened to the patient's strength.
DETAIL_SIGMA = 0.03
# Features (brows, eyes, make-up, sockets) are log-luma detail finer than this (in eye distances);
# the surrogate's are softened to the patient's strength.
CONTRAST_SIGMA = 0.25

# Brows, eyes and nose, and the lips (template units): a surrogate's features that are not
# skin-coloured but belong to its face. The brow band reaches the brows' outer ends (cut short,
# the patient's own brow ends showed above the new ones); the lips stop short of where a
# moustache grows.
_FEATURES = ellipse(56.0, 57.0, 36.0, 22.0)
_BROWS = ellipse(56.0, 43.0, 40.0, 10.0)
_LIPS = ellipse(56.1, 94.0, 16.5, 7.5)
# Where brows grow, from just above the upper lid to high brows (template units): the band the
# surrogate's brows are measured and faded in.
_BROW_PAIR = (ellipse(38.3, 39.0, 14.0, 8.0), ellipse(73.5, 39.0, 14.0, 8.0))
# Where a moustache grows: below the nostrils to the upper lip, less the lips.
_UPPER_LIP = (ellipse(56.0, 81.0, 17.0, 6.0),)
# Zones whose dark hair is faded to the patient's, each measured on its own (polygons, less polygons).
_FADED = ((_BROW_PAIR, ()), (_UPPER_LIP, (_LIPS,)))
# Beside the brows' outer ends (template units): where a curly or low hairline hangs into the
# area that always counts as the surrogate's face.
_TEMPLES = (ellipse(21.0, 47.0, 7.0, 14.0), ellipse(91.0, 47.0, 7.0, 14.0))


@dataclass(frozen=True)
class PatientContext:
    """What the header and the photo tell us about the person being replaced."""

    pseudonym: str
    key: SiteKey
    sex: str | None = None
    age_years: float | None = None
    skin_lab: np.ndarray | None = None
    yaw: float = 0.0
    embedding: np.ndarray | None = None
    exclude_people: frozenset[str] = frozenset()
    # The pool person this patient was given before (the service remembers it per pseudonym).
    remembered: str | None = None
    age_tolerance: float = AGE_TOLERANCE_YEARS
    # Mouth width over eye distance: about 0.85 for a closed mouth, 1.0-1.2 for a smile.
    smile: float | None = None
    # pool.beard_cover of the patient's face.
    beard: float | None = None


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


def candidates(pool: Pool, ctx: PatientContext) -> list[Surrogate]:
    """Suitable surrogates, in this patient's keyed order; every photo of each person, the one
    closest in pose and expression first.

    The best-suited people come first (sex, age band, skin tone, pose, beard, each filter falling
    back to the unfiltered set when it would leave nobody), then the rest of the people of
    the patient's sex, each group in keyed order: when the QA gate turns the best-suited
    down, a less well matched face is tried before the photo is refused, but never one of
    the other sex, nor an adult for a child or a child for an adult (empty list: the photo is
    held). The exclusion of look-alikes never falls back. The person this patient was given
    before comes first whatever this photo's measured skin tone, age or pose say (they wobble
    from photo to photo, the patient does not), unless this photo makes them a look-alike.
    """
    people = {
        person: photos
        for person, photos in pool.people().items()
        if person not in ctx.exclude_people
        and not (
            ctx.embedding is not None
            and any(cosine(ctx.embedding, p.embedding) >= EXCLUDE_SIMILARITY for p in photos)
        )
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


# --- geometry --------------------------------------------------------------------------


def _tps_kernel(d2: np.ndarray) -> np.ndarray:
    """The thin-plate spline's radial function r^2 log r, written in terms of r^2."""
    return np.where(d2 > 0, 0.5 * d2 * np.log(np.maximum(d2, 1e-12)), 0.0)


def warp_maps(
    src_lm: np.ndarray, dst_lm: np.ndarray, roi: tuple[int, int, int, int], eye_distance: float
) -> tuple[np.ndarray, np.ndarray]:
    """Inverse maps for cv2.remap that carry the surrogate's landmarks ``src_lm`` exactly onto
    ``dst_lm`` (the patient's, or where ``feature_landmarks`` moved them).

    A thin-plate spline from the destination landmarks to the surrogate's: an affine part (which
    takes up a turned face's foreshortening) plus the smoothest bend that puts eyes, nose and
    mouth corners where the destination has them. It replaced a similarity plus Gaussian radial
    bases, whose weights, solved on five close points, overshot between them: on faces turned
    10-15 degrees the field moved up to 0.5 eye distances where no landmark had moved half as
    much, and the eyes came out stretched diagonally. Written out (an 8x8 solve) because the
    OpenCV wheel has no shape module and scipy is not otherwise needed. Evaluated on a coarse
    grid and upsampled: the field is smooth by construction.
    """
    # In eye distances, so the kernel's log does not depend on the photo's resolution.
    c = dst_lm / eye_distance
    n = len(c)
    system = np.zeros((n + 3, n + 3))
    system[:n, :n] = _tps_kernel(((c[:, None] - c[None]) ** 2).sum(-1))
    system[:n, n] = system[n, :n] = 1.0
    system[:n, n + 1 :] = c
    system[n + 1 :, :n] = c.T
    rhs = np.zeros((n + 3, 2))
    rhs[:n] = src_lm
    coef = np.linalg.solve(system, rhs)
    x0, y0, x1, y1 = roi
    step = 8
    gx = np.arange(x0, x1 + step, step, dtype=np.float64)
    gy = np.arange(y0, y1 + step, step, dtype=np.float64)
    px, py = np.meshgrid(gx, gy)
    q = np.stack([px.ravel(), py.ravel()], 1) / eye_distance
    src_pts = _tps_kernel(((q[:, None] - c[None]) ** 2).sum(-1)) @ coef[:n] + coef[n] + q @ coef[n + 1 :]
    mx = src_pts[:, 0].reshape(px.shape).astype(np.float32)
    my = src_pts[:, 1].reshape(px.shape).astype(np.float32)
    # Upsample the coarse grid so that grid node i lands exactly on pixel x0 + i*step.
    full = (mx.shape[1] - 1) * step + 1, (mx.shape[0] - 1) * step + 1
    mx = cv2.resize(mx, full, interpolation=cv2.INTER_LINEAR)[: y1 - y0, : x1 - x0]
    my = cv2.resize(my, full, interpolation=cv2.INTER_LINEAR)[: y1 - y0, : x1 - x0]
    return np.ascontiguousarray(mx), np.ascontiguousarray(my)


def feature_landmarks(surrogate_lm: np.ndarray, face: Face, masks: FaceMasks) -> np.ndarray:
    """Where the new face's five landmarks go in the frame: the patient's mouth corners, and the
    eyes and nose where the surrogate's own proportions put them (its landmarks laid on the
    patient's by the closest similarity), at most ``MAX_FEATURE_SHIFT`` eye distances away.

    Warped onto the patient's own eyes and nose, the new face kept the patient's proportions,
    which a recogniser reads as identity: taking the surrogate's held 6 fewer of the 217 test
    faces as look-alikes (31 against 37). A landmark in or next to the preserved area stays
    where it is, so the clinical area and its surroundings are never pulled out of place.
    """
    lm = face.landmarks
    # Least squares over all five points (every point an inlier): a robust fit would lay some
    # landmarks exactly on the patient's and put all of the difference into the others.
    fit, _ = cv2.estimateAffinePartial2D(
        surrogate_lm.astype(np.float32), lm.astype(np.float32), ransacReprojThreshold=1e9
    )
    if fit is None:
        return lm
    shift = surrogate_lm @ fit[:, :2].T + fit[:, 2] - lm
    ed = face.eye_distance
    length = np.linalg.norm(shift, axis=1, keepdims=True)
    shift *= np.minimum(1.0, MAX_FEATURE_SHIFT * ed / np.maximum(length, 1e-9))
    x0, y0 = masks.roi[:2]
    r = max(1, round(_PINNED_RADIUS * ed))
    out = lm.astype(np.float64).copy()
    for i in (LEFT_EYE, RIGHT_EYE, NOSE):
        cx, cy = np.round(lm[i] - [x0, y0]).astype(int)
        near = masks.preserved[max(0, cy - r) : max(0, cy + r + 1), max(0, cx - r) : max(0, cx + r + 1)]
        if not near.any():
            out[i] += shift[i]
    return out


def _fade_zones(size: tuple[int, int], landmarks: np.ndarray, eye_distance: float) -> np.ndarray:
    """Soft masks (one per entry of ``_FADED``) of a ``size`` (width, height) image whose face has
    these ``landmarks``: where the surrogate's brows and stubble are faded."""
    zones = np.zeros((len(_FADED), size[1], size[0]), np.float32)
    to_img = similarity(TEMPLATE, landmarks)
    soft = 0.08 * eye_distance
    margin = int(3 * soft) + 1
    for zone, (polys, cut) in zip(zones, _FADED, strict=True):
        paint(zone, to_img, polys, 1.0)
        paint(zone, to_img, cut, 0.0)
        # Feathered within the zone's box and a margin only: over the whole face the blur cost
        # 0.1 s a render.
        x, y, w, h = cv2.boundingRect((zone > 0).astype(np.uint8))
        box = np.s_[max(0, y - margin) : y + h + margin, max(0, x - margin) : x + w + margin]
        zone[box] = cv2.GaussianBlur(zone[box], (0, 0), soft)
    return zones


# The surrogate's skin is segmented at this fraction of its photo's size: GrabCut's cost grows
# with the pixels, its colour models do not need them.
_SEGMENT_SCALE = 0.5
# Pixels this much darker (L*) than the cheek tone and off its hue are hair, never skin.
_HAIR_DARKER = 20.0


def _face_skin(img: np.ndarray, landmarks: np.ndarray, tone: np.ndarray) -> np.ndarray:
    """float32 1 where a pool photo shows the face's skin: GrabCut (OpenCV) seeded with the skin
    that is sure (close to the cheek ``tone``), probable inside the largest replaced oval,
    probable background in a band round it, background beyond; dark pixels off the skin's hue
    (beard, hair) are never skin.

    A fixed test against the cheek tone alone (``skin_mask``) missed highlights and the
    shaded half of the selfies lit from one side; cut off from the face, those parts counted
    as background and the patient's own cheek or temple stayed in the new face (up to half
    of it). GrabCut learns the face's own colours, highlights and shade included. Seeded
    with a fixed RNG state so every process draws the same mask.
    """
    h, w = img.shape[:2]
    size = (round(w * _SEGMENT_SCALE), round(h * _SEGMENT_SCALE))
    small = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    lm = landmarks * _SEGMENT_SCALE
    to_img = similarity(TEMPLATE, lm)
    oval = np.zeros(small.shape[:2], np.uint8)
    paint(oval, to_img, [face_outline(max(OVAL_LADDER))])
    band = np.zeros_like(oval)
    paint(band, to_img, [face_outline(1.15 * max(OVAL_LADDER))])
    sure = skin_mask(small, tone, light=25.0, chroma=10.0).astype(np.uint8) & oval
    sure = cv2.morphologyEx(sure, cv2.MORPH_OPEN, _opening_kernel(lm))
    seeds = np.full(small.shape[:2], cv2.GC_BGD, np.uint8)
    seeds[band > 0] = cv2.GC_PR_BGD
    seeds[oval > 0] = cv2.GC_PR_FGD
    seeds[sure > 0] = cv2.GC_FGD
    cv2.setRNGSeed(0)
    cv2.grabCut(small, seeds, None, np.zeros((1, 65)), np.zeros((1, 65)), 4, cv2.GC_INIT_WITH_MASK)
    skin = (seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD)
    lab = cv2.cvtColor(small.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    hair = (lab[..., 0] < tone[0] - _HAIR_DARKER) & (np.linalg.norm(lab[..., 1:] - tone[1:], axis=-1) > 12.0)
    skin = (skin & ~hair).astype(np.uint8)
    return cv2.resize(skin, (w, h), interpolation=cv2.INTER_NEAREST).astype(np.float32)


class Prepared(NamedTuple):
    """A pool photo made ready to paste: the photo itself, its temples' hair painted over, and
    where it shows its face (float32 0-1)."""

    photo: np.ndarray
    valid: np.ndarray


_PREPARED: dict[str, Prepared] = {}


def prepare(surrogate: Surrogate) -> Prepared:
    """The surrogate's ``Prepared`` photo, worked out once per process (GrabCut and inpainting
    take about a second a photo)."""
    cached = _PREPARED.get(surrogate.sha256)
    if cached is None:
        cached = _PREPARED[surrogate.sha256] = _prepare(
            surrogate.image, surrogate.landmarks, surrogate.skin_lab
        )
    return cached


def _prepare(img: np.ndarray, landmarks: np.ndarray, tone: np.ndarray) -> Prepared:
    skin = _face_skin(img, landmarks, tone)
    bare = _bare_skin(skin, landmarks)
    always = np.zeros_like(bare)
    paint(always, similarity(TEMPLATE, landmarks), [_FEATURES, _BROWS])
    always &= _skin_hull(bare)
    return Prepared(_paint_temples(img, landmarks, skin, always), _face_area(landmarks, bare, always))


# A pool photo whose pasted face area holds more than this share of pixels far from its cheek
# tone (outside eyes, brows and lips) shows hair or something else over its face. Measured on
# 96 SFHQ faces and the 20 openpeople crops: the openpeople crops reach 0.09 (a moustache);
# above 0.12 were a green or a white fringe over the forehead, a blonde cap, strands across a
# cheek, a mirrored chin below a face at the photo's edge, and a goatee.
MAX_FOREIGN_SHARE = 0.12
# Share of that area that may lie past the source photo's edge (mirrored in the crop): a sliver
# of the jaw or the cheek at the edge (SFHQ crops: 1-3%), not a mirrored chin (5-51%).
MAX_MIRRORED_SHARE = 0.04


def pool_photo_problem(
    img: np.ndarray, landmarks: np.ndarray, tone: np.ndarray, inside: np.ndarray
) -> str | None:
    """Why a candidate pool crop would paste badly, or None; ``pool.build`` skips it then.
    ``inside`` is True where the crop shows the source photo, False where it was mirrored
    past the photo's edge.

    The render takes whatever the crop's face area (``Prepared.valid``) holds, and that area
    is found by colour and shape: a light or dyed fringe, or hair across a cheek, is taken
    into it (on a site pool of SFHQ faces a green fringe was pasted onto an old woman's
    forehead), and so is the mirror image of a chin cut by the photo's edge. Checked once,
    when the pool is built, so the hot path does not pay for it.
    """
    valid = _prepare(img, landmarks, tone).valid > 0.5
    mirrored = float((valid & ~inside).sum()) / max(1, int(valid.sum()))
    if mirrored > MAX_MIRRORED_SHARE:
        return (
            f"the face runs off the photo's edge ({mirrored:.0%} of its area lies past it); "
            "pool photos need room round the face"
        )
    to_img = similarity(TEMPLATE, landmarks)
    zone = np.zeros(img.shape[:2], np.uint8)
    paint(zone, to_img, [face_outline(max(OVAL_LADDER))])
    paint(zone, to_img, [_FEATURES, _BROWS, _LIPS], 0)
    area = valid & (zone > 0)
    if not area.any():
        return "no face skin found where the face would be pasted"
    # Looser than the sure-skin test of _face_skin: shade and highlights are still skin here.
    foreign = 1.0 - float(skin_mask(img, tone, light=45.0, chroma=20.0)[area].mean())
    if foreign > MAX_FOREIGN_SHARE:
        return (
            f"{foreign:.0%} of the face area that would be pasted is not skin (hair over the "
            f"forehead or a cheek, a hand, a beard; limit {MAX_FOREIGN_SHARE:.0%})"
        )
    return None


def _opening_kernel(landmarks: np.ndarray) -> np.ndarray:
    """Specks and strands narrower than this (0.12 eye distances) are not face."""
    return cv2.getStructuringElement(
        cv2.MORPH_ELLIPSE, (max(3, round(0.12 * landmark_eye_distance(landmarks))) | 1,) * 2
    )


def _bare_skin(skin: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """uint8 1 where the face's ``skin`` lies within the largest replaced oval, specks removed."""
    oval = np.zeros(skin.shape, np.uint8)
    paint(oval, similarity(TEMPLATE, landmarks), [face_outline(max(OVAL_LADDER))])
    return cv2.morphologyEx(skin.astype(np.uint8) & oval, cv2.MORPH_OPEN, _opening_kernel(landmarks))


def _skin_hull(bare: np.ndarray) -> np.ndarray:
    """uint8 1 inside the convex hull of the ``bare`` skin.

    The area that always counts as face (brows, eyes, nose) is cut to it: on a narrow face
    that area reached past the temples into the hair, which was pasted as dark bars or,
    painted over, as flat skin-coloured wings.
    """
    hull = np.zeros_like(bare)
    points = cv2.findNonZero(bare)
    if points is not None:
        cv2.fillConvexPoly(hull, cv2.convexHull(points), 1)
    return hull


def _face_area(landmarks: np.ndarray, bare: np.ndarray, always: np.ndarray) -> np.ndarray:
    """Where the surrogate photo shows its face, not hair, beard, a hand or background.

    Its ``bare`` skin, plus the area that ``always`` counts as face (brows, eyes and nose,
    within the skin's hull) and the lips, all in the piece of face connected to the nose,
    with its holes (highlights, freckles) filled. A beard or a moustache is left out: on a
    clean-shaven patient it showed as a dark block over the lip.
    """
    lips = np.zeros_like(bare)
    paint(lips, similarity(TEMPLATE, landmarks), [_LIPS])
    face = cv2.morphologyEx(bare | always | lips, cv2.MORPH_CLOSE, _opening_kernel(landmarks))
    _, labels = cv2.connectedComponents(face)
    nose = np.round(landmarks[NOSE]).astype(int)
    face = (labels == labels[nose[1], nose[0]]).astype(np.uint8)
    # Fill holes: flood the background from the border; whatever it cannot reach is inside.
    outside = np.pad(1 - face, 1, constant_values=1)
    cv2.floodFill(outside, None, (0, 0), 2)
    face = (outside[1:-1, 1:-1] != 2).astype(np.float32)
    return cv2.GaussianBlur(face, (0, 0), 0.06 * landmark_eye_distance(landmarks))


def _paint_temples(
    img: np.ndarray, landmarks: np.ndarray, skin: np.ndarray, always: np.ndarray
) -> np.ndarray:
    """``img`` with the hair at its temples, where it falls inside the area that ``always`` counts
    as face, painted over from the skin round it.

    The brows' area always counts as the surrogate's face (``_face_area``), so the locks of a
    curly-haired surrogate that hang beside the brows' outer ends were pasted too, as dark
    bars beside the new eyes. Leaving them out of the face let the patient's own temples
    through and held 7-10 more of the 217 test faces as look-alikes; painted over (OpenCV's
    Telea inpainting), the surrogate's skin stays there. The hair round them is painted
    too before the copy is taken, so the paint comes from skin, not from the hair beyond.
    """
    temples = np.zeros_like(always)
    paint(temples, similarity(TEMPLATE, landmarks), _TEMPLES)
    hair = (temples & always).astype(bool) & (skin == 0)
    if not hair.any():
        return img
    ed = landmark_eye_distance(landmarks)
    grow = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (max(3, round(0.3 * ed)) | 1,) * 2)
    around = cv2.dilate(hair.astype(np.uint8), grow).astype(bool) & (skin == 0)
    painted = cv2.inpaint(img, (around | hair).astype(np.uint8), 0.05 * ed, cv2.INPAINT_TELEA)
    out = img.copy()
    take = cv2.dilate(hair.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    out[take] = painted[take]
    return out


# --- backends ---------------------------------------------------------------------------


class Candidate:
    """One way to replace a face (a surrogate person, a blur...); rendered as often as the pipeline asks
    (a cheap screening copy first, the full-resolution photo once it passes)."""

    def __init__(
        self,
        info: dict,
        render: Callable[[np.ndarray, Face, FaceMasks], np.ndarray],
        landmarks: Callable[[Face, FaceMasks], np.ndarray] | None = None,
    ) -> None:
        self.info = info
        self._render = render
        self._landmarks = landmarks

    def render(self, frame: np.ndarray, face: Face, masks: FaceMasks) -> np.ndarray:
        """New pixels for ``masks.roi`` of ``frame``."""
        return self._render(frame, face, masks)

    def landmarks(self, face: Face, masks: FaceMasks) -> np.ndarray:
        """Where the rendered face's landmarks lie (the patient's, unless the backend moves them)."""
        return face.landmarks if self._landmarks is None else self._landmarks(face, masks)


class ReplacementBackend:
    """Offers candidates for one face, best first. ``for_routes`` says whether routes may use it."""

    name: str = ""
    for_routes: bool = False

    def candidates(self, ctx: PatientContext) -> list[Candidate]:
        raise NotImplementedError


class SurrogateBackend(ReplacementBackend):
    """Features of a synthetic pool person, aligned, harmonised and blended in torch."""

    name = "surrogate"
    for_routes = True
    # The new face is worked out with its eyes at most this many times as far apart as in the
    # surrogate photo: finer adds no detail, only pixels to process. At 1:1 with a cubic warp
    # the result looked the same at full size as at 2x (lashes, pores), and a 12 MP photo's
    # full render took 0.5 s instead of 0.9 s.
    detail = 1.0

    def __init__(self, pool: Pool, device: torch.device, max_candidates: int = 4) -> None:
        self.pool = pool
        self.device = device
        self.max_candidates = max_candidates

    def render(self, frame: np.ndarray, face: Face, masks: FaceMasks, surrogate: Surrogate) -> np.ndarray:
        """New pixels for ``masks.roi``: the surrogate's face worked out at a resolution that keeps all
        of its detail (``detail`` times its own eye distance), then blended in at full resolution.

        Working at the photo's resolution would only interpolate the surrogate further while
        the colour, light and membrane work grew with the square of the face's size (a face
        with 700 px between the eyes costs ~15x what one at 180 px does).
        """
        x0, y0, x1, y1 = masks.roi
        patient = frame[y0:y1, x0:x1]
        h, w = patient.shape[:2]
        src_eyes = landmark_eye_distance(surrogate.landmarks)
        work = min(1.0, self.detail * src_eyes / max(face.eye_distance, 1e-6))
        size = (max(8, round(w * work)), max(8, round(h * work))) if work < 1.0 else (w, h)
        full = size == (w, h)
        sx, sy = size[0] / w, size[1] / h
        # Pixel centres of the working grid, as cv2.resize places them.
        landmarks = (feature_landmarks(surrogate.landmarks, face, masks) - [x0, y0] + 0.5) * [sx, sy] - 0.5
        eye_distance = face.eye_distance * (sx + sy) / 2
        mx, my = warp_maps(surrogate.landmarks, landmarks, (0, 0, *size), eye_distance)
        patient_w = patient if full else cv2.resize(patient, size, interpolation=cv2.INTER_AREA)
        alpha_w = masks.alpha if full else cv2.resize(masks.alpha, size, interpolation=cv2.INTER_AREA)
        preserved_w = (
            masks.preserved
            if full
            else cv2.resize(masks.preserved.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0.5
        )
        ready = prepare(surrogate)
        valid = cv2.remap(ready.valid, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        # Where the surrogate shows hair or background, the patient's own pixels stay.
        keep_surrogate = np.ones_like(valid) if masks.head else np.clip((valid - 0.5) * 2.0, 0.0, 1.0)
        scale = eye_distance / max(1e-6, src_eyes)
        # Cubic, not linear, near 1:1 too: linear interpolation at sub-pixel shifts averages
        # neighbours and visibly softened lashes and pores.
        interp = cv2.INTER_AREA if scale < 0.5 else cv2.INTER_CUBIC
        warped = cv2.remap(ready.photo, mx, my, interp, borderMode=cv2.BORDER_REFLECT)
        skin = skin_mask(patient_w, skin_lab(frame, face))
        surrogate_skin = skin_mask(warped, surrogate.skin_lab)
        fade = _fade_zones(size, landmarks, eye_distance)
        # The membrane is pinned only where both photos show skin: pinned where the surrogate
        # shows beard or hair next to the patient's skin, it lifted the whole new face by that
        # difference (+35 L* on a dark-skinned man given a bearded surrogate).
        trusted = (skin > 0.5) & (surrogate_skin > 0.5)
        with torch.inference_mode():
            new = blend.new_face(
                blend.to_tensor(patient_w, self.device),
                blend.to_tensor(warped, self.device),
                torch.from_numpy(alpha_w * keep_surrogate).to(self.device),
                torch.from_numpy(preserved_w).to(self.device),
                light_sigma=LIGHT_SIGMA * eye_distance,
                patient_skin=torch.from_numpy(skin).to(self.device),
                trusted=torch.from_numpy(trusted).to(self.device),
                detail_sigma=max(1.0, DETAIL_SIGMA * eye_distance),
                surrogate_skin=torch.from_numpy(surrogate_skin).to(self.device),
                contrast_sigma=CONTRAST_SIGMA * eye_distance,
                fade=torch.from_numpy(fade).to(self.device),
            )
            new = blend.to_uint8(new)
        if not full:
            new = cv2.resize(new, (w, h), interpolation=cv2.INTER_CUBIC)
            keep_surrogate = cv2.resize(keep_surrogate, (w, h), interpolation=cv2.INTER_LINEAR)
        alpha = np.ascontiguousarray(masks.alpha * keep_surrogate, dtype=np.float32)
        # (new * alpha + patient * (1 - alpha)) rounded, in one OpenCV pass over the region.
        return cv2.blendLinear(new, np.ascontiguousarray(patient), alpha, 1.0 - alpha)

    def candidates(self, ctx: PatientContext) -> list[Candidate]:
        def make(s: Surrogate) -> Candidate:
            return Candidate(
                {"surrogate": s.id, "person": s.person},
                lambda frame, face, masks: self.render(frame, face, masks, s),
                lambda face, masks: feature_landmarks(s.landmarks, face, masks),
            )

        chosen = candidates(self.pool, ctx)
        # max_candidates counts people, each with every photo of theirs.
        people = list(dict.fromkeys(s.person for s in chosen))[: self.max_candidates]
        return [make(s) for s in chosen if s.person in people]


def _blur(frame: np.ndarray, face: Face, masks: FaceMasks) -> np.ndarray:
    x0, y0, x1, y1 = masks.roi
    roi = frame[y0:y1, x0:x1]
    blurred = cv2.GaussianBlur(roi, (0, 0), 0.25 * face.eye_distance)
    a = masks.alpha[..., None]
    return (roi * (1 - a) + blurred * a + 0.5).astype(np.uint8)


def _pixelate(frame: np.ndarray, face: Face, masks: FaceMasks) -> np.ndarray:
    x0, y0, x1, y1 = masks.roi
    roi = frame[y0:y1, x0:x1]
    block = max(2, round(face.eye_distance / 4))
    small = cv2.resize(
        roi, (max(1, roi.shape[1] // block), max(1, roi.shape[0] // block)), interpolation=cv2.INTER_AREA
    )
    mosaic = cv2.resize(small, (roi.shape[1], roi.shape[0]), interpolation=cv2.INTER_NEAREST)
    out = roi.copy()
    out[masks.region] = mosaic[masks.region]
    return out


def _eyebar(frame: np.ndarray, face: Face, masks: FaceMasks) -> np.ndarray:
    x0, y0, x1, y1 = masks.roi
    out = frame[y0:y1, x0:x1].copy()
    le, re = face.landmarks[LEFT_EYE], face.landmarks[RIGHT_EYE]
    centre = (le + re) / 2 - np.array([x0, y0])
    angle = math.degrees(math.atan2(*(re - le)[::-1]))
    size = (1.9 * face.eye_distance, 0.55 * face.eye_distance)
    box = cv2.boxPoints((tuple(centre), size, angle)).astype(np.int32)
    bar = np.zeros(out.shape[:2], np.uint8)
    cv2.fillPoly(bar, [box], 1)
    out[bar.astype(bool) & ~masks.preserved] = 0
    return out


class BaselineBackend(ReplacementBackend):
    """Blur, pixelation or an eye bar: shown beside the surrogate in evaluations, never offered to
    routes (blur can be reversed, an eye bar leaves the face recognisable)."""

    def __init__(self, name: str, render: Callable[[np.ndarray, Face, FaceMasks], np.ndarray]) -> None:
        self.name = name
        self._render = render

    def candidates(self, ctx: PatientContext) -> list[Candidate]:
        return [Candidate({}, self._render)]


# --- registry --------------------------------------------------------------------------

BackendFactory = Callable[[Pool | None, torch.device], ReplacementBackend]
_REGISTRY: dict[str, BackendFactory] = {
    "surrogate": lambda pool, device: SurrogateBackend(pool, device) if pool else _no_pool(),
    "blur": lambda pool, device: BaselineBackend("blur", _blur),
    "pixelate": lambda pool, device: BaselineBackend("pixelate", _pixelate),
    "eyebar": lambda pool, device: BaselineBackend("eyebar", _eyebar),
    "gan": lambda pool, device: _gan(pool, device),
}


def _gan(pool: Pool | None, device: torch.device) -> ReplacementBackend:
    """The area-preserving GAN inversion backend, imported on use: it loads a generator and an encoder."""
    from .gan.backend import create_backend

    return create_backend(pool, device)


BASELINES = frozenset({"blur", "pixelate", "eyebar"})


def _no_pool() -> ReplacementBackend:
    raise ValueError("the surrogate method needs a surrogate pool")


def register_method(name: str, factory: BackendFactory) -> None:
    """Add a backend (the GAN inversion backend registers itself as ``gan``)."""
    _REGISTRY[name] = factory


def methods() -> list[str]:
    return sorted(_REGISTRY)


def make_backend(name: str, pool: Pool | None, device: torch.device) -> ReplacementBackend:
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose from: {', '.join(methods())}") from None
    return factory(pool, device)
