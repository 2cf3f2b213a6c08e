"""The surrogate pool: synthetic (or consented) faces that lend their features, with what we know of them.

A pool is built in the lab (``dicom_anon.lab.pool_build``, ``dicom-anon models build-surrogates``)
into ``models/surrogates/``: cropped JPEGs plus ``manifest.json`` with landmarks, pose, skin tone,
sex, age band, an SFace embedding and checksums. ``load`` reads it back and refuses files whose
checksum does not match, so a swapped picture cannot slip in. ``crop_face`` stays here because the
generated identities crop their faces the same way at run time.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from .detect import Face, FaceDetector
from .masks import TEMPLATE, TEMPLATE_EYE_DISTANCE, apply, ellipse, invert, similarity

DEFAULT_POOL = Path(__file__).resolve().parents[2] / "models" / "surrogates"
MANIFEST = "manifest.json"
FORMAT = 1

# Surrogate crops are stored with this eye distance (px) at most: enough detail for a face
# ~3x larger in a 12 MP photo after upscaling, small enough to keep the pool a few MB.
EYE_DISTANCE = 180.0
_CROP_EYE_DISTANCES = 4.6
_MAX_POOL_YAW = 20.0

# A pool person whose age band ends below this is a child: given to children only.
ADULT_AGE_YEARS = 18.0

# Two cheek patches (template units), away from eyes, nose, mouth and beard line.
_CHEEKS = ((33.0, 74.0), (79.0, 74.0))
_CHEEK_RADIUS = 6.5

# Relit to the patient, a pool photo is multiplied channel by channel by the ratio of the two skins
# (blend.relight). Darkening looks natural at any ratio; brightening by more than this in any
# channel washed the new face out: highlights clipped flat white, the photo's colour casts came up
# with it. On the 217 evaluation faces the five fair, pale patients given a much darker pool photo
# needed 1.94-2.46 in blue and all five looked wrong; at 1.85 and below they looked natural.
MAX_SKIN_GAIN = 1.9


class PoolError(Exception):
    """The pool is missing, unreadable or fails its checksums; the message says how to rebuild it."""


def skin_lab(rgb: np.ndarray, face: Face) -> np.ndarray:
    """Median CIELAB (L 0-100) of both cheeks: the skin tone the surrogate should match."""
    to_img = invert(similarity(face.landmarks, TEMPLATE))
    radius = max(1, round(_CHEEK_RADIUS * face.eye_distance / TEMPLATE_EYE_DISTANCE))
    centres = np.round(apply(to_img, np.array(_CHEEKS))).astype(int)
    # The cheeks only, not a mask of the whole photo: on 12 MP that took 28 ms, once per render.
    h, w = rgb.shape[:2]
    x0, y0 = np.clip(centres.min(axis=0) - radius, 0, [w, h])
    x1, y1 = np.clip(centres.max(axis=0) + radius + 1, 0, [w, h])
    if x1 <= x0 or y1 <= y0:
        return np.array([50.0, 0.0, 0.0])
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    for cx, cy in centres:
        cv2.circle(mask, (int(cx - x0), int(cy - y0)), radius, 1, -1)
    pix = rgb[y0:y1, x0:x1][mask.astype(bool)]
    if len(pix) == 0:
        return np.array([50.0, 0.0, 0.0])
    lab = cv2.cvtColor(pix[None].astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)[0]
    return np.median(lab, axis=0).astype(np.float64)


def skin_gain(patient_lab: np.ndarray, surrogate_lab: np.ndarray) -> float:
    """The largest factor, over R, G and B, that relighting multiplies the surrogate's skin by to
    reach the patient's (both CIELAB, L 0-100)."""
    rgb = cv2.cvtColor(np.array([[patient_lab, surrogate_lab]], np.float32), cv2.COLOR_LAB2RGB)[0]
    return float((rgb[0] / np.maximum(rgb[1], 0.02)).max())


def skin_mask(rgb: np.ndarray, tone: np.ndarray, light: float = 35.0, chroma: float = 16.0) -> np.ndarray:
    """float32 1 where a pixel's CIELAB is near the measured cheek ``tone``: within ``chroma`` in
    a*b* and ``light`` in L* (lightness varies with shading far more than hue). Skin, as opposed
    to hair, glasses, brows or background."""
    lab = cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    t = tone.astype(np.float32)
    # Squared a*b* distance in float32: np.linalg.norm in float64 took 3/4 of the time on a
    # full-resolution face.
    d_a, d_b = lab[..., 1] - t[1], lab[..., 2] - t[2]
    near = (np.abs(lab[..., 0] - t[0]) < light) & (d_a * d_a + d_b * d_b < chroma * chroma)
    return near.astype(np.float32)


# Where a beard grows (template units): the chin, both jaw corners and the upper lip.
_BEARD = (
    ellipse(56.0, 108.0, 16.0, 6.0),
    ellipse(33.0, 100.0, 6.0, 7.0),
    ellipse(79.0, 100.0, 6.0, 7.0),
    ellipse(56.0, 84.5, 10.0, 2.5),
)


def beard_cover(rgb: np.ndarray, landmarks: np.ndarray, tone: np.ndarray) -> float:
    """Share of where a beard grows that is not skin of the cheeks' ``tone``: about 1 for a full
    beard, 0.1-0.5 for a shaven face (shading and light move it)."""
    to_img = similarity(TEMPLATE, landmarks)
    polys = [apply(to_img, poly) for poly in _BEARD]
    # Only the pixels round the chin are converted: the whole of a 12 MP photo took 0.7 s.
    x0, y0 = np.floor(np.min([p.min(axis=0) for p in polys], axis=0)).astype(int).clip(0)
    x1, y1 = np.ceil(np.max([p.max(axis=0) for p in polys], axis=0)).astype(int) + 1
    crop = rgb[y0:y1, x0:x1]
    if crop.size == 0:
        return 0.0
    area = np.zeros(crop.shape[:2], np.uint8)
    for poly in polys:
        cv2.fillPoly(area, [np.round(poly - [x0, y0]).astype(np.int32)], 1)
    inside = area.astype(bool)
    if not inside.any():
        return 0.0
    return float(1.0 - skin_mask(crop[inside][None], tone, light=25.0, chroma=12.0).mean())


@dataclass(frozen=True)
class Surrogate:
    """One pool photo. ``person`` groups photos of the same synthetic identity."""

    id: str
    person: str
    path: Path
    sha256: str
    landmarks: np.ndarray
    yaw: float
    skin_lab: np.ndarray
    embedding: np.ndarray
    sex: str | None = None
    age_band: tuple[int, int] | None = None
    source: str = ""
    licence: str = ""
    estimated: tuple[str, ...] = ()  # which of sex, age_band the builder estimated

    @cached_property
    def image(self) -> np.ndarray:
        return np.asarray(Image.open(self.path).convert("RGB"))

    @cached_property
    def beard(self) -> float:
        return beard_cover(self.image, self.landmarks, self.skin_lab)


@dataclass(frozen=True)
class Pool:
    """All surrogates of one built pool directory."""

    root: Path
    surrogates: tuple[Surrogate, ...]
    info: dict = field(default_factory=dict)

    def people(self) -> dict[str, list[Surrogate]]:
        out: dict[str, list[Surrogate]] = {}
        for s in self.surrogates:
            out.setdefault(s.person, []).append(s)
        return out


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# Why a crop would paste badly (crop, its landmarks, cheek tone, where it shows the source
# photo), or None: the pipeline's check, passed in so this module need not import it.
PhotoCheck = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], str | None]


class PhotoSkipped(ValueError):
    """Why a photo cannot lend its face (several faces, turned away, a fringe over the forehead)."""


@dataclass(frozen=True)
class Cropped:
    """A photo's one face, cropped and scaled the way surrogates are stored, and measured."""

    image: np.ndarray
    face: Face  # in the crop's pixels
    yaw: float  # measured on the whole photo
    skin_lab: np.ndarray


def crop_face(
    rgb: np.ndarray,
    detector: FaceDetector,
    check: PhotoCheck | None = None,
    detect_side: int | None = None,
    max_yaw: float | None = _MAX_POOL_YAW,
) -> Cropped:
    """The photo's one face as a surrogate crop (eyes at most ``EYE_DISTANCE`` apart);
    ``PhotoSkipped`` says why not. Pool photos and generated faces both go through it.

    ``max_yaw``: pool faces must be frontal; a generated face's yaw is left to the patient's
    filters (None), since a patient turned 30 degrees is given someone turned their way.

    ``detect_side``: find the face on a copy this many pixels on its longer side, for photos
    whose face is known to fill much of the frame (a generated face: MTCNN took 1-3 s on the
    1024 px image, a tenth of that at 384 px).
    """
    scale = 1.0 if detect_side is None else min(1.0, detect_side / max(rgb.shape[:2]))
    if scale < 1.0:
        small = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        faces = [Face(f.box / scale, f.landmarks / scale, f.score) for f in detector.detect([small])[0]]
    else:
        faces = detector.detect([rgb])[0]
    if len(faces) != 1:
        raise PhotoSkipped(f"{len(faces)} faces found, need exactly one")
    face = faces[0]
    if max_yaw is not None and abs(face.yaw) > max_yaw:
        raise PhotoSkipped(f"turned {face.yaw:.0f} degrees, pool faces must be frontal")
    scale = min(1.0, EYE_DISTANCE / face.eye_distance)
    side = round(_CROP_EYE_DISTANCES * face.eye_distance * scale)
    centre = face.landmarks.mean(axis=0)
    # Crop and scale in one affine warp; outside the photo is reflected, never black.
    m = np.array([[scale, 0, side / 2 - scale * centre[0]], [0, scale, side / 2 - scale * centre[1]]])
    crop = cv2.warpAffine(rgb, m, (side, side), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT)
    lms = apply(m, face.landmarks)
    moved = Face(box=np.r_[apply(m, face.box.reshape(2, 2)).reshape(-1)], landmarks=lms, score=face.score)
    tone = skin_lab(crop, moved)
    if check is not None:
        shown = np.ones(rgb.shape[:2], np.uint8)
        inside = cv2.warpAffine(shown, m, (side, side), flags=cv2.INTER_NEAREST)
        problem = check(crop, lms, tone, inside.astype(bool))
        if problem:
            raise PhotoSkipped(problem)
    return Cropped(crop, moved, face.yaw, tone)


def load(root: Path = DEFAULT_POOL) -> Pool:
    """Read and verify a built pool."""
    root = Path(root)
    path = root / MANIFEST
    hint = "run: dicom-anon models build-surrogates " + (
        "--from openpeople" if root == DEFAULT_POOL else f"--from DIR --licence TEXT -o {root}"
    )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PoolError(f"{path}: cannot read the surrogate pool ({exc}); {hint}") from None
    if manifest.get("format") != FORMAT:
        raise PoolError(f"{path}: pool format {manifest.get('format')} is not {FORMAT}; {hint}")
    surrogates = []
    for e in manifest["surrogates"]:
        file = root / e["file"]
        if not file.is_file() or file_sha256(file) != e["sha256"]:
            raise PoolError(f"{file}: missing or checksum mismatch against the manifest; {hint}")
        surrogates.append(
            Surrogate(
                id=e["id"],
                person=e["person"],
                path=file,
                sha256=e["sha256"],
                landmarks=np.array(e["landmarks"], np.float64),
                yaw=float(e["yaw"]),
                skin_lab=np.array(e["skin_lab"], np.float64),
                embedding=np.array(e["embedding"], np.float64),
                sex=e.get("sex"),
                age_band=tuple(e["age_band"]) if e.get("age_band") else None,
                source=e.get("source", ""),
                licence=e.get("licence", ""),
                estimated=tuple(e.get("estimated", ())),
            )
        )
    if not surrogates:
        raise PoolError(f"{path}: the pool is empty; {hint}")
    return Pool(root=root, surrogates=tuple(surrogates), info={"sources": manifest.get("sources", [])})


def child_band(band: tuple[int, int] | None) -> bool:
    """A pool person whose stated or estimated age band ends before adulthood."""
    return band is not None and band[1] < ADULT_AGE_YEARS


@lru_cache(maxsize=4)
def get_pool(root: str = str(DEFAULT_POOL)) -> Pool:
    return load(Path(root))
