"""A pool photo made ready to paste: where it shows its face, its shine taken down, and hair at its
temples painted over.

Worked out once per photo and process (GrabCut and inpainting take about half a second a photo), and
once more when a pool is built, to turn away crops that would paste hair or a mirrored chin.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

import cv2
import numpy as np
import torch

from . import blend
from .detect import NOSE, landmark_eye_distance
from .masks import OVAL_LADDER, TEMPLATE, ellipse, face_outline, paint, similarity
from .pool import Surrogate, skin_mask

# Brows, eyes and nose, and the lips (template units): a surrogate's features that are not
# skin-coloured but belong to its face. The brow band reaches the brows' outer ends (cut short,
# the patient's own brow ends showed above the new ones); the lips stop short of where a
# moustache grows.
FEATURES = ellipse(56.0, 57.0, 36.0, 22.0)
BROWS = ellipse(56.0, 43.0, 40.0, 10.0)
LIPS = ellipse(56.1, 94.0, 16.5, 7.5)
# The eyes with their lids (template units).
EYES = (ellipse(38.3, 51.7, 10.0, 6.0), ellipse(73.5, 51.5, 10.0, 6.0))
# Beside the brows' outer ends (template units): where a curly or low hairline hangs into the
# area that always counts as the surrogate's face.
_TEMPLES = (ellipse(21.0, 47.0, 7.0, 14.0), ellipse(91.0, 47.0, 7.0, 14.0))


# Shine on a pool photo's skin (a studio light's sheen, a selfie's sun on the forehead) is light
# the patient's photo did not have. Relit to a pale patient's skin it came out as a white blotch
# on the new forehead (P006 and P010 on fair or grey-haired women). What is more than SHINE_START
# (L*) lighter than the skin round it (measured over SHINE_SIGMA eye distances), and paler, keeps
# SHINE_KEEP of its excess and takes on that skin's colour; eyes and mouth keep their own.
SHINE_START = 6.0
SHINE_KEEP = 0.4
# Shine is also paler than the skin: it counts in full where its chroma is this share below the skin's.
SHINE_PALER = 0.25
SHINE_SIGMA = 0.35
# Eyes (catchlights, the whites) and mouth (teeth) in template units: bright, but not shine.
_NOT_SHINE = (*EYES, ellipse(56.1, 93.0, 18.0, 9.0))

# The surrogate's skin is segmented at this fraction of its photo's size: GrabCut's cost grows
# with the pixels, its colour models do not need them. Every surrogate is an 828 px crop with 180 px
# between the eyes, so 45 px here. At a quarter, GrabCut took 0.16 s a face instead of 0.60 s (a
# new patient's draw runs it two or three times), and the face areas of 46 generated people
# matched those found at half size (intersection over union in the pasted oval: median 0.994,
# lowest 0.92, a few strands at the edge of long hair).
_SEGMENT_SCALE = 0.25
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
    """A pool photo made ready to paste: the photo itself, its shine taken down and its temples'
    hair painted over, and where it shows its face (float32 0-1)."""

    photo: np.ndarray
    valid: np.ndarray


# Bounded: generated identities bring a new surrogate with every new patient.
_PREPARED: OrderedDict[str, Prepared] = OrderedDict()
_PREPARED_MAX = 64


def prepare(surrogate: Surrogate) -> Prepared:
    """The surrogate's ``Prepared`` photo, worked out once per process for the last
    ``_PREPARED_MAX`` surrogates used (GrabCut and inpainting take about half a second a photo)."""
    cached = _PREPARED.get(surrogate.sha256)
    if cached is None:
        a = _surrogate_areas(surrogate)
        shine_down = _take_down_shine(surrogate.image, surrogate.landmarks, a.valid, a.bare)
        cached = _PREPARED[surrogate.sha256] = Prepared(
            _paint_temples(shine_down, surrogate.landmarks, a.skin, a.always), a.valid
        )
        while len(_PREPARED) > _PREPARED_MAX:
            _PREPARED.popitem(last=False)
    else:
        _PREPARED.move_to_end(surrogate.sha256)
    return cached


def surrogate_problem(surrogate: Surrogate) -> str | None:
    """``pool_photo_problem`` for a surrogate made on the fly (a generated face): its GrabCut
    (about 0.16 s) is kept for ``prepare``, which needs the same areas if the face is taken."""
    inside = np.ones(surrogate.image.shape[:2], bool)
    return pool_photo_problem(
        surrogate.image, surrogate.landmarks, surrogate.skin_lab, inside, lambda: _surrogate_areas(surrogate)
    )


# GrabCut's areas of the last surrogates checked or prepared, by their pixels' hash. Only a draw's
# own renders need them again (the face it takes is prepared right after its check; a later photo
# of the patient finds it in _PREPARED), so few are kept: at 64, like _PREPARED, the areas of faces
# a draw turned down held about 270 MB of a service drawing new people (benchmarks/bench_memory.py).
_AREAS: OrderedDict[str, _Areas] = OrderedDict()
_AREAS_MAX = 8


def _surrogate_areas(surrogate: Surrogate) -> _Areas:
    cached = _AREAS.get(surrogate.sha256)
    if cached is None:
        cached = _AREAS[surrogate.sha256] = _areas(surrogate.image, surrogate.landmarks, surrogate.skin_lab)
        while len(_AREAS) > _AREAS_MAX:
            _AREAS.popitem(last=False)
    else:
        _AREAS.move_to_end(surrogate.sha256)
    return cached


class _Areas(NamedTuple):
    """Where a pool photo shows skin, its ``bare`` skin in the oval, the area that ``always`` counts
    as face, and the face area that is pasted (``valid``)."""

    skin: np.ndarray
    bare: np.ndarray
    always: np.ndarray
    valid: np.ndarray


def _areas(img: np.ndarray, landmarks: np.ndarray, tone: np.ndarray) -> _Areas:
    skin = _face_skin(img, landmarks, tone)
    bare = _bare_skin(skin, landmarks)
    always = np.zeros_like(bare)
    paint(always, similarity(TEMPLATE, landmarks), [FEATURES, BROWS])
    always &= _skin_hull(bare)
    return _Areas(skin, bare, always, _face_area(landmarks, bare, always))


# A pool photo whose pasted face area holds more than this share of pixels far from its cheek
# tone (outside eyes, brows and lips) shows hair or something else over its face. Measured on
# 96 SFHQ faces and the 20 openpeople crops: the openpeople crops reach 0.09 (a moustache);
# above 0.12 were a green or a white fringe over the forehead, a blonde cap, strands across a
# cheek, a mirrored chin below a face at the photo's edge, and a goatee.
MAX_FOREIGN_SHARE = 0.12
# Just above the brows (template units: brows at y ~39, the smallest oval's top at 20): where a
# fringe, a hat's brim or hair swept across the forehead shows.
FOREHEAD = np.array([[38.0, 24.0], [74.0, 24.0], [74.0, 34.0], [38.0, 34.0]])
# A face whose forehead strip is darker than its cheeks by more than FOREHEAD_DARKER (L*) over
# more than this share wears hair or a hat over its forehead. On 79 generated faces (seed 1) every
# one above 0.2 did (bangs, hats, hair swept across); below, a side parting's shadow read 0.14;
# the strands pasted onto a patient in the v3 run (docs/research/generated-identities.md) read
# 0.28, and passed the pasted-area check: GrabCut left them out of the face area, while the brow
# band and the blending still took them in.
MAX_FOREHEAD_DARK = 0.2
FOREHEAD_DARKER = 20.0
# Below the eyes, left and right (template units): smooth skin to compare the forehead's with.
_CHEEK_PATCHES = (
    np.array([[30.0, 62.0], [46.0, 62.0], [46.0, 74.0], [30.0, 74.0]]),
    np.array([[66.0, 62.0], [82.0, 62.0], [82.0, 74.0], [66.0, 74.0]]),
)
# Hair of any colour across the forehead shows as strands: edges across the strip (the
# lightness's horizontal gradient) far stronger than on the cheeks, where wrinkles run along it.
# On the 79 generated faces of seed 1 the ratio was 2.1-6.2 on every face with a fringe, a hat's
# brim or swept hair (three the darkness test missed: a blonde fringe, a boy's thin fringe, hair
# swept over one brow), at most 1.3 on a bare forehead; openpeople's 20 photos read 0.3-0.9.
# The blonde fringe pasted onto a dark-skinned man in the judged run read 3.3 (dark share 0).
MAX_FOREHEAD_STRANDS = 2.0
# The cheeks' edge strength is taken as at least this (L* per pixel at the measuring scale), so
# airbrushed cheeks do not make an ordinary forehead look stranded.
_MIN_CHEEK_EDGES = 1.0
# Share of that area that may lie past the source photo's edge (mirrored in the crop): a sliver
# of the jaw or the cheek at the edge (SFHQ crops: 1-3%), not a mirrored chin (5-51%).
MAX_MIRRORED_SHARE = 0.04


def forehead_problem(img: np.ndarray, landmarks: np.ndarray, tone: np.ndarray) -> str | None:
    """A fringe, a hat's brim or hair swept across the forehead, or None: GrabCut leaves such
    hair out of the face area, so the pasted-area check below does not see it, while the brow
    band and the blend still carry it into the output. Dark hair shows as darkness; blonde or
    white hair, which colour cannot tell from lit skin, as strands."""
    to_img = similarity(TEMPLATE, landmarks)
    strip, cheeks = np.zeros(img.shape[:2], np.uint8), np.zeros(img.shape[:2], np.uint8)
    paint(strip, to_img, [FOREHEAD])
    paint(cheeks, to_img, _CHEEK_PATCHES)
    if not strip.any():
        return None
    # Lightness worked out once, in the box round the strip and the cheeks only.
    x, y, w, h = cv2.boundingRect((strip | cheeks).astype(np.uint8))
    box = np.s_[y : y + h, x : x + w]
    strip, cheeks = strip[box] > 0, cheeks[box] > 0
    light = cv2.cvtColor(img[box].astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)[..., 0]
    dark = float((light[strip] < tone[0] - FOREHEAD_DARKER).mean())
    if dark > MAX_FOREHEAD_DARK:
        return (
            f"{dark:.0%} of the forehead above the brows is far darker than the skin (a fringe, "
            f"a hat or hair across it; limit {MAX_FOREHEAD_DARK:.0%})"
        )
    strands = _strands(light, strip, cheeks, landmark_eye_distance(landmarks))
    if strands <= MAX_FOREHEAD_STRANDS:
        return None
    return (
        f"the forehead above the brows shows strands ({strands:.1f}x the cheeks' edges across it; "
        f"limit {MAX_FOREHEAD_STRANDS:.1f}x): a fringe or hair across it"
    )


def _strands(light: np.ndarray, strip: np.ndarray, cheeks: np.ndarray, eye_distance: float) -> float:
    """Mean horizontal gradient of ``light`` in ``strip`` over that in ``cheeks`` (at least
    _MIN_CHEEK_EDGES), at a scale of a hundredth of the eye distance."""
    if not cheeks.any():
        return 0.0
    sigma = max(0.8, 0.01 * eye_distance)
    across = np.abs(cv2.Sobel(cv2.GaussianBlur(light, (0, 0), sigma), cv2.CV_32F, 1, 0, ksize=3)) / sigma
    return float(across[strip].mean()) / max(float(across[cheeks].mean()), _MIN_CHEEK_EDGES)


def pool_photo_problem(
    img: np.ndarray,
    landmarks: np.ndarray,
    tone: np.ndarray,
    inside: np.ndarray,
    areas: Callable[[], _Areas] | None = None,
) -> str | None:
    """Why a candidate pool crop would paste badly, or None; ``pool.build`` skips it then.
    ``inside`` is True where the crop shows the source photo, False where it was mirrored
    past the photo's edge.

    The render takes whatever the crop's face area (``Prepared.valid``) holds, and that area
    is found by colour and shape: a light or dyed fringe, or hair across a cheek, is taken
    into it (on a site pool of SFHQ faces a green fringe was pasted onto an old woman's
    forehead), and so is the mirror image of a chin cut by the photo's edge. Checked once,
    when the pool is built, so the hot path does not pay for it. ``areas`` gives the GrabCut
    areas when the caller keeps them; asked for only past the forehead check, which needs none.
    """
    hair = forehead_problem(img, landmarks, tone)
    if hair is not None:
        return hair
    # Only the face area counts here: the shine and the temples' paint would be thrown away.
    valid = (areas() if areas is not None else _areas(img, landmarks, tone)).valid > 0.5
    mirrored = float((valid & ~inside).sum()) / max(1, int(valid.sum()))
    if mirrored > MAX_MIRRORED_SHARE:
        return (
            f"the face runs off the photo's edge ({mirrored:.0%} of its area lies past it); "
            "pool photos need room round the face"
        )
    to_img = similarity(TEMPLATE, landmarks)
    zone = np.zeros(img.shape[:2], np.uint8)
    paint(zone, to_img, [face_outline(max(OVAL_LADDER))])
    paint(zone, to_img, [FEATURES, BROWS, LIPS], 0)
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


def _take_down_shine(
    img: np.ndarray, landmarks: np.ndarray, valid: np.ndarray, bare: np.ndarray
) -> np.ndarray:
    """``img`` with the shine on its face (``valid``) taken down towards its ``bare`` skin round it.

    Done once on the pool photo, in CIELAB, rather than in the render: the render's relight is a
    per-channel gain from skin to skin, right for the face's light but not for a sheen that is
    paler than the skin it lies on. Shine is what is both lighter and paler than that skin: lit
    skin keeps its colour, and flattening all of it took the face's modelling away. The skin's
    level is a normalised Gaussian blur, measured again without what the first pass found far
    lighter or darker (the shine itself, the shade under the brows and nose).
    """
    face = (valid > 0.5).astype(np.float32)
    not_shine = np.zeros(face.shape, np.uint8)
    paint(not_shine, similarity(TEMPLATE, landmarks), _NOT_SHINE)
    face[not_shine > 0] = 0.0
    lab = cv2.cvtColor(img.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    sigma = SHINE_SIGMA * landmark_eye_distance(landmarks)

    channels = torch.from_numpy(np.ascontiguousarray(lab.transpose(2, 0, 1)))[None]

    def level(weight: np.ndarray) -> np.ndarray:
        # The render's normalised blur, worked out on a coarse grid (a full-size blur with this
        # wide a kernel took half a second a photo).
        smooth = blend.masked_blur(channels, torch.from_numpy(weight)[None, None], sigma)
        return smooth[0].permute(1, 2, 0).numpy()

    skin_w = bare.astype(np.float32) * face
    skin = level(skin_w)
    offset = lab[..., 0] - skin[..., 0]
    skin = level(skin_w * (np.abs(offset) < SHINE_START))
    chroma = np.hypot(lab[..., 1], lab[..., 2])
    skin_chroma = np.maximum(np.hypot(skin[..., 1], skin[..., 2]), 1.0)
    paler = np.clip((skin_chroma - chroma) / (SHINE_PALER * skin_chroma), 0.0, 1.0)
    excess = np.clip(lab[..., 0] - skin[..., 0] - SHINE_START, 0.0, None) * paler * face
    if not excess.any():
        return img
    out = lab.copy()
    out[..., 0] -= excess * (1.0 - SHINE_KEEP)
    # The brighter the shine, the more of the skin's colour it takes (all of it 8 L* above the start).
    share = np.clip(excess / 8.0, 0.0, 1.0)[..., None]
    out[..., 1:] += share * (skin[..., 1:] - lab[..., 1:])
    rgb = np.clip(cv2.cvtColor(out, cv2.COLOR_LAB2RGB) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    # Only the shine is written back: the CIELAB round trip moves other pixels by a level.
    shine = excess > 0
    result = img.copy()
    result[shine] = rgb[shine]
    return result


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
    paint(lips, similarity(TEMPLATE, landmarks), [LIPS])
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
