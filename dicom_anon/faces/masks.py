"""Preserved-area and replace-area masks, drawn from the five landmarks.

Shapes are defined in the ArcFace 112x112 template frame (eyes at y~52, mouth at
y~92) and mapped onto each face with the least-squares similarity that carries the
template landmarks onto the detected ones, so one set of numbers fits every face
size, position and tilt. The mouth uses the detected mouth corners themselves, since
a smile widens the mouth far beyond the template's.

The replace alpha is 0 on every preserved pixel: feathering happens only on the side
that is being replaced, never inside the clinical area.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

import cv2
import numpy as np

from .detect import LEFT_EYE, MOUTH_LEFT, MOUTH_RIGHT, NOSE, RIGHT_EYE, Face

TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)
TEMPLATE_EYE_DISTANCE = 35.24

# The replaced face in template units: an egg from above the brows to the chin, narrowing
# towards the jaw. Its top clears high brows too: a top just above average brows put a high-browed
# patient's own brows in the feather, a faint second pair above the new ones. Kept inside the face
# outline so that little of the patient's or the surrogate's hair, ears or background falls inside.
FACE_OVAL = (56.0, 66.0, 35.0, 46.0, 45.0)  # centre x, centre y, half width, half height up, down
_JAW_TAPER = 0.3
# Face oval sizes the pipeline tries in turn: the inner face, one reaching the face outline, one
# past it (where the surrogate shows hair the patient's own pixels stay, see SurrogateBackend._valid).
OVAL_LADDER = (1.0, 1.25, 1.5)
# With hair/ears/background "replace", the replaced head region grows to this much of the box.
HEAD_SCALE = 1.7


class Preset(StrEnum):
    """A named clinical area that must come out exactly as taken."""

    MOUTH = "mouth"
    LOWER_FACE = "lower-face"
    NOSE = "nose"
    EYES = "eyes"
    LESION_BOXES = "lesion-boxes"


class Surroundings(StrEnum):
    """What happens to hair, ears and background around the replaced face."""

    KEEP = "keep"
    BLUR = "blur"
    REPLACE = "replace"


@dataclass(frozen=True)
class LesionBox:
    """A rectangle to keep exactly: image pixels, or fractions of the aligned 112x112 face frame."""

    x: float
    y: float
    width: float
    height: float
    relative_to: str = "image"  # "image" or "face"


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2x3 least-squares similarity (Umeyama) carrying ``src`` points onto ``dst``.

    Hand-written because OpenCV's estimateAffinePartial2D is a robust (RANSAC/LMEDS)
    estimator that drops points; with five landmarks we want all of them in the fit.
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    ms, md = src.mean(0), dst.mean(0)
    s, d = src - ms, dst - md
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt))])
    rot = u @ sign @ vt
    scale = np.trace(np.diag(sig) @ sign) / max((s**2).sum() / len(src), 1e-12)
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = md - m[:, :2] @ ms
    return m


def apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return np.asarray(pts, np.float64) @ m[:, :2].T + m[:, 2]


def invert(m: np.ndarray) -> np.ndarray:
    return cv2.invertAffineTransform(m)


def ellipse(cx: float, cy: float, ax: float, ay: float, n: int = 72) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + ax * np.cos(t), cy + ay * np.sin(t)], axis=1)


def paint(mask: np.ndarray, to_img: np.ndarray, polys: Sequence[np.ndarray], value: float = 1) -> None:
    """Fill template-unit ``polys``, mapped by the 2x3 ``to_img``, into ``mask`` with ``value``
    (whole pixels: for the preserved area's exact edge see ``_fill``); overlapping polygons fill
    their union.

    One ``cv2.fillPoly`` call per polygon: given several at once it fills by the even-odd rule,
    which left the overlap of the brows' and the features' areas empty.
    """
    for p in polys:
        cv2.fillPoly(mask, [np.round(apply(to_img, p)).astype(np.int32)], value)


def face_outline(scale: float = 1.0, n: int = 96) -> np.ndarray:
    """The replaced-face outline in template units; ``scale`` grows it about its centre."""
    cx, cy, ax, up, down = FACE_OVAL
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    s = np.sin(t)
    x = cx + scale * ax * np.cos(t) * (1 - _JAW_TAPER * np.clip(s, 0, None) ** 2)
    y = cy + scale * np.where(s > 0, down, up) * s
    return np.stack([x, y], axis=1)


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64)


@dataclass(frozen=True)
class FaceMasks:
    """Masks of one face inside its region of interest ``roi`` = (x0, y0, x1, y1) of the frame."""

    roi: tuple[int, int, int, int]
    preserved: np.ndarray  # bool, True = must stay bit-identical
    alpha: np.ndarray  # float32 in [0, 1]: how much of the new face each pixel takes
    oval: np.ndarray  # bool, the face oval before the preserved area was cut out
    head: bool = False  # hair and ears are replaced too (surroundings "replace")

    @property
    def region(self) -> np.ndarray:
        return self.alpha > 0


def face_to_template(face: Face) -> np.ndarray:
    """2x3 map from image pixels to template units for this face."""
    return similarity(face.landmarks, TEMPLATE)


def roi_for(
    face: Face, shape: Sequence[int], surroundings: Surroundings = Surroundings.KEEP, oval_scale: float = 1.0
) -> tuple[int, ...]:
    """A box around the face big enough for the oval (or the head) and the feather, clipped to the frame."""
    to_img = invert(face_to_template(face))
    scale = HEAD_SCALE if surroundings is Surroundings.REPLACE else 1.15 * oval_scale
    corners = apply(to_img, face_outline(scale, 32))
    pad = 0.15 * face.eye_distance
    h, w = shape[:2]
    x0 = int(max(0, np.floor(corners[:, 0].min() - pad)))
    y0 = int(max(0, np.floor(corners[:, 1].min() - pad)))
    x1 = int(min(w, np.ceil(corners[:, 0].max() + pad)))
    y1 = int(min(h, np.ceil(corners[:, 1].max() + pad)))
    return x0, y0, x1, y1


def preset_polygons(
    face: Face, presets: Iterable[Preset], boxes: Sequence[LesionBox] = ()
) -> list[np.ndarray]:
    """Polygons (template units) of the preserved areas of one face."""
    to_tpl = face_to_template(face)
    lm = apply(to_tpl, face.landmarks)
    polys: list[np.ndarray] = []
    for preset in presets:
        if preset is Preset.MOUTH:
            ml, mr = lm[MOUTH_LEFT], lm[MOUTH_RIGHT]
            mw = float(np.linalg.norm(mr - ml))
            c = (ml + mr) / 2
            # Lips, teeth and an open smile sit mostly below the corner line.
            polys.append(ellipse(c[0], c[1] + 0.12 * mw, 0.5 * mw * 1.25, 0.5 * mw * 0.85))
        elif preset is Preset.LOWER_FACE:
            cut = lm[NOSE][1] + 0.45 * ((lm[MOUTH_LEFT][1] + lm[MOUTH_RIGHT][1]) / 2 - lm[NOSE][1])
            polys.append(_rect(-400, cut, 512, 600))
        elif preset is Preset.NOSE:
            eye_y = (lm[LEFT_EYE][1] + lm[RIGHT_EYE][1]) / 2
            top, bottom = eye_y - 2, lm[NOSE][1] + 8
            polys.append(ellipse(lm[NOSE][0], (top + bottom) / 2, 12.0, (bottom - top) / 2))
        elif preset is Preset.EYES:
            for eye in (lm[LEFT_EYE], lm[RIGHT_EYE]):
                polys.append(ellipse(eye[0], eye[1], 12.5, 8.0))
        elif preset is Preset.LESION_BOXES:
            for b in boxes:
                if b.relative_to == "face":
                    polys.append(_rect(b.x * 112, b.y * 112, (b.x + b.width) * 112, (b.y + b.height) * 112))
    return polys


def _fill(mask: np.ndarray, poly_img: np.ndarray, origin: tuple[int, int]) -> None:
    shift = 4  # sub-pixel precision: 1/16 px
    pts = np.round((poly_img - np.array(origin)) * (1 << shift)).astype(np.int32)
    cv2.fillPoly(mask, [pts], 1, lineType=cv2.LINE_8, shift=shift)


def image_box_mask(shape: Sequence[int], boxes: Sequence[LesionBox]) -> np.ndarray:
    """Image-coordinate lesion boxes as a full-frame bool mask (they apply whether or not a face is found)."""
    mask = np.zeros(shape[:2], bool)
    h, w = shape[:2]
    for b in boxes:
        if b.relative_to == "image":
            x0, y0 = max(0, int(np.floor(b.x))), max(0, int(np.floor(b.y)))
            x1, y1 = min(w, int(np.ceil(b.x + b.width))), min(h, int(np.ceil(b.y + b.height)))
            mask[y0:y1, x0:x1] = True
    return mask


def _smooth_ramp(t: np.ndarray) -> np.ndarray:
    """Smoothstep of ``t`` (float32, in widths) clipped to [0, 1], computed in place."""
    np.clip(t, 0.0, 1.0, out=t)
    return t * t * (3.0 - 2.0 * t)


def build(
    face: Face,
    shape: Sequence[int],
    presets: Iterable[Preset],
    boxes: Sequence[LesionBox] = (),
    image_preserved: np.ndarray | None = None,
    surroundings: Surroundings = Surroundings.KEEP,
    oval_scale: float = 1.0,
) -> FaceMasks:
    """Masks for one face. ``image_preserved`` is the frame-wide preserved mask (image-coordinate boxes).

    ``oval_scale`` grows the replaced face about its centre: the pipeline escalates to a
    larger face when the standard one still lets a recogniser match the patient.
    """
    x0, y0, x1, y1 = roi_for(face, shape, surroundings, oval_scale)
    size = (y1 - y0, x1 - x0)
    to_img = invert(face_to_template(face))
    preserved = np.zeros(size, np.uint8)
    for poly in preset_polygons(face, presets, boxes):
        _fill(preserved, apply(to_img, poly), (x0, y0))
    if image_preserved is not None:
        preserved |= image_preserved[y0:y1, x0:x1].astype(np.uint8)
    oval = np.zeros(size, np.uint8)
    scale = HEAD_SCALE if surroundings is Surroundings.REPLACE else oval_scale
    _fill(oval, apply(to_img, face_outline(scale)), (x0, y0))

    # Distance inside the oval in feathers; the ramp is monotonic, so the lesser of two ramps
    # is the ramp of the lesser distance, and one ramp is computed.
    ramp = cv2.distanceTransform(oval, cv2.DIST_L2, 5) * np.float32(1.0 / max(2.0, 0.12 * face.eye_distance))
    if preserved.any():
        # Distance from the preserved area, measured outside it: the seam blends over a thin
        # band of replaced pixels and the preserved pixels themselves get alpha 0.
        away = cv2.distanceTransform((preserved == 0).astype(np.uint8), cv2.DIST_L2, 5)
        np.minimum(ramp, away * np.float32(1.0 / max(1.5, 0.04 * face.eye_distance)), out=ramp)
    alpha = _smooth_ramp(ramp)
    alpha[preserved.astype(bool)] = 0.0
    return FaceMasks(
        roi=(x0, y0, x1, y1),
        preserved=preserved.astype(bool),
        alpha=alpha,
        oval=oval.astype(bool),
        head=surroundings is Surroundings.REPLACE,
    )
