"""Identity replacement: the backend interface, the surrogate backend and the comparison baselines.

A backend turns one face (its region of the frame, its masks) into candidate
renderings, best first; the pipeline's QA gate takes the first that passes. The
surrogate backend offers the pool people ``choice.candidates`` picks for the patient, each
photo warped (``warp``) and prepared (``prepare``) here, then harmonised and blended
(``blend``) into the patient's face.

Blur, pixelation and the eye bar exist only so evaluations can show them side by side;
they are not offered to routes (blur can be reversed, an eye bar leaves the face known).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import cv2
import numpy as np
import torch

from . import blend
from .choice import PatientContext
from .detect import LEFT_EYE, RIGHT_EYE, Face, landmark_eye_distance
from .identities import IdentitySource, PoolIdentities
from .masks import TEMPLATE, FaceMasks, ellipse, paint, similarity
from .pool import Pool, Surrogate, skin_lab, skin_mask
from .prepare import EYES, LIPS, prepare
from .warp import feature_landmarks, warp_maps

# Shading broader than this (in eye distances) is the patient's light, finer detail the surrogate's face.
LIGHT_SIGMA = 1.0
# Skin texture (pores, fine lines) is detail finer than this (in eye distances); the surrogate's is
# softened to the patient's strength.
DETAIL_SIGMA = 0.03
# The membrane is pinned only where both faces show skin this far (in eye distances) from
# anything else.
PIN_EROSION = 0.08
# Features (brows, eyes, make-up, sockets) are log-luma detail finer than this (in eye distances);
# the surrogate's are softened to the patient's strength.
CONTRAST_SIGMA = 0.25

# Where brows grow, from just above the upper lid to high brows (template units): the band the
# surrogate's brows are measured and faded in.
_BROW_PAIR = (ellipse(38.3, 39.0, 14.0, 8.0), ellipse(73.5, 39.0, 14.0, 8.0))
# Where a moustache grows: below the nostrils to the upper lip, less the lips.
_UPPER_LIP = (ellipse(56.0, 81.0, 17.0, 6.0),)
# Zones whose dark hair is faded to the patient's, each measured on its own (polygons, less polygons).
_FADED = ((_BROW_PAIR, ()), (_UPPER_LIP, (LIPS,)))
# The cheeks below the eyes, beside the nose and the mouth, down to the jaw: where an older
# surrogate's folds and hollows are softened to the patient's own cheeks.
_CHEEKS = ((ellipse(33.0, 88.0, 16.0, 24.0), ellipse(79.0, 88.0, 16.0, 24.0)), (LIPS,))


def _zones(
    size: tuple[int, int], landmarks: np.ndarray, eye_distance: float, zones: Sequence[tuple[tuple, tuple]]
) -> np.ndarray:
    """Soft masks, one per (polygons, less polygons) entry of ``zones`` (template units), of a
    ``size`` (width, height) image whose face has these ``landmarks``."""
    out = np.zeros((len(zones), size[1], size[0]), np.float32)
    to_img = similarity(TEMPLATE, landmarks)
    soft = 0.08 * eye_distance
    margin = int(3 * soft) + 1
    for zone, (polys, cut) in zip(out, zones, strict=True):
        paint(zone, to_img, polys, 1.0)
        paint(zone, to_img, cut, 0.0)
        # Feathered within the zone's box and a margin only: over the whole face the blur cost
        # 0.1 s a render.
        x, y, w, h = cv2.boundingRect((zone > 0).astype(np.uint8))
        box = np.s_[max(0, y - margin) : y + h + margin, max(0, x - margin) : x + w + margin]
        zone[box] = cv2.GaussianBlur(zone[box], (0, 0), soft)
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
        surrogate: Surrogate | None = None,
    ) -> None:
        self.info = info
        self._render = render
        self._landmarks = landmarks
        # The person lending the face, for the identity source to remember once it passes QA.
        self.surrogate = surrogate

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


def transplant(
    frame: np.ndarray,
    face: Face,
    masks: FaceMasks,
    surrogate: Surrogate,
    device: torch.device,
    detail: float = 1.0,
) -> np.ndarray:
    """New pixels for ``masks.roi``: the surrogate's face warped onto the patient's, given the
    patient's light, skin and contrast, and blended in. The GAN backend pastes its generated face
    through here too: a generated face carries its own light and hair just as a pool photo does.

    The face is worked out at a resolution that keeps all of its detail (``detail`` times its own
    eye distance), then blended in at full resolution.

    Working at the photo's resolution would only interpolate the surrogate further while
    the colour, light and membrane work grew with the square of the face's size (a face
    with 700 px between the eyes costs ~15x what one at 180 px does).
    """
    x0, y0, x1, y1 = masks.roi
    patient = frame[y0:y1, x0:x1]
    h, w = patient.shape[:2]
    src_eyes = landmark_eye_distance(surrogate.landmarks)
    work = min(1.0, detail * src_eyes / max(face.eye_distance, 1e-6))
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
    zones = _zones(size, landmarks, eye_distance, (*_FADED, _CHEEKS, (EYES, ())))
    fade, cheeks, eyes = zones[: len(_FADED)], zones[len(_FADED)], zones[len(_FADED) + 1]
    # The eyes keep their own hue under the patient's light: with the skin's colour gain a
    # fair patient's new face got blue-grey irises from the pool's brown ones. The lids,
    # being skin, take the skin's colour.
    own_hue = eyes * (1.0 - surrogate_skin)
    # The membrane is pinned only where both photos show skin: pinned where the surrogate
    # shows beard or hair next to the patient's skin, it lifted the whole new face by that
    # difference (+35 L* on a dark-skinned man given a bearded surrogate).
    # Only solid skin pins it: skin seen between strands of the patient's hair, or at the edge
    # of a lock over the cheek, took the strands' difference and spread it as a bright blob or
    # streak across the new cheek (the relit face itself had none).
    both = ((skin > 0.5) & (surrogate_skin > 0.5)).astype(np.uint8)
    r = max(1, round(PIN_EROSION * eye_distance))
    trusted = cv2.erode(both, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))) > 0
    with torch.inference_mode():
        new = blend.new_face(
            blend.to_tensor(patient_w, device),
            blend.to_tensor(warped, device),
            torch.from_numpy(alpha_w * keep_surrogate).to(device),
            torch.from_numpy(preserved_w).to(device),
            light_sigma=LIGHT_SIGMA * eye_distance,
            patient_skin=torch.from_numpy(skin).to(device),
            trusted=torch.from_numpy(trusted).to(device),
            detail_sigma=max(1.0, DETAIL_SIGMA * eye_distance),
            surrogate_skin=torch.from_numpy(surrogate_skin).to(device),
            contrast_sigma=CONTRAST_SIGMA * eye_distance,
            fade=torch.from_numpy(fade).to(device),
            own_hue=torch.from_numpy(own_hue).to(device),
            cheeks=torch.from_numpy(cheeks).to(device),
        )
        new = blend.to_uint8(new)
    if not full:
        new = cv2.resize(new, (w, h), interpolation=cv2.INTER_CUBIC)
        keep_surrogate = cv2.resize(keep_surrogate, (w, h), interpolation=cv2.INTER_LINEAR)
    alpha = np.ascontiguousarray(masks.alpha * keep_surrogate, dtype=np.float32)
    # (new * alpha + patient * (1 - alpha)) rounded, in one OpenCV pass over the region.
    return cv2.blendLinear(new, np.ascontiguousarray(patient), alpha, 1.0 - alpha)


class SurrogateBackend(ReplacementBackend):
    """Features of a synthetic person (generated, or from the pool), aligned, harmonised and
    blended in torch."""

    name = "surrogate"
    for_routes = True
    # The new face is worked out with its eyes at most this many times as far apart as in the
    # surrogate photo: finer adds no detail, only pixels to process. At 1:1 with a cubic warp
    # the result looked the same at full size as at 2x (lashes, pores), and a 12 MP photo's
    # full render took 0.5 s instead of 0.9 s.
    detail = 1.0

    def __init__(self, identities: IdentitySource, device: torch.device, max_candidates: int = 4) -> None:
        self.identities = identities
        self.device = device
        self.max_candidates = max_candidates

    def render(self, frame: np.ndarray, face: Face, masks: FaceMasks, surrogate: Surrogate) -> np.ndarray:
        """New pixels for ``masks.roi``: ``surrogate``'s face transplanted (``transplant``)."""
        return transplant(frame, face, masks, surrogate, self.device, self.detail)

    def candidates(self, ctx: PatientContext) -> list[Candidate]:
        def make(s: Surrogate) -> Candidate:
            return Candidate(
                {"surrogate": s.id, "person": s.person, "identity": self.identities.name},
                lambda frame, face, masks: self.render(frame, face, masks, s),
                lambda face, masks: feature_landmarks(s.landmarks, face, masks),
                s,
            )

        chosen = self.identities.people(ctx)
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

# A factory gets the pool (or None), the device and the route's identity source (or None).
BackendFactory = Callable[[Pool | None, torch.device, IdentitySource | None], ReplacementBackend]


def _surrogate(
    pool: Pool | None, device: torch.device, identities: IdentitySource | None
) -> ReplacementBackend:
    """The surrogate backend, drawing its people from ``identities``, else from the pool."""
    if identities is None:
        if pool is None:
            raise ValueError("the surrogate method needs a surrogate pool")
        identities = PoolIdentities(pool)
    return SurrogateBackend(identities, device)


def _gan(pool: Pool | None, device: torch.device, identities: IdentitySource | None) -> ReplacementBackend:
    """The area-preserving GAN inversion backend, imported on use: it loads a generator and an encoder.
    Its context faces are the identity source's people (or the pool's, or the generator's)."""
    from .gan.backend import create_backend

    return create_backend(pool, device, identities)


_REGISTRY: dict[str, BackendFactory] = {
    "surrogate": _surrogate,
    "blur": lambda pool, device, identities: BaselineBackend("blur", _blur),
    "pixelate": lambda pool, device, identities: BaselineBackend("pixelate", _pixelate),
    "eyebar": lambda pool, device, identities: BaselineBackend("eyebar", _eyebar),
    "gan": _gan,
}
BASELINES = frozenset({"blur", "pixelate", "eyebar"})


def register_method(name: str, factory: BackendFactory) -> None:
    """Add a backend (the GAN inversion backend registers itself as ``gan``)."""
    _REGISTRY[name] = factory


def methods() -> list[str]:
    return sorted(_REGISTRY)


def make_backend(
    name: str, pool: Pool | None, device: torch.device, identities: IdentitySource | None = None
) -> ReplacementBackend:
    """The backend ``name``; the surrogate backend draws its people from ``identities`` when given,
    else from ``pool``, and the gan backend its context faces."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose from: {', '.join(methods())}") from None
    return factory(pool, device, identities)
