"""The QA gate: a replaced face leaves only if the clinical area is exact, a face is still
there, its skin keeps the patient's colour, it reads as the sex and age asked for, and a
recogniser no longer takes it for the patient. Failing that, the photo is refused with a
reason a records officer can act on.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import cv2
import numpy as np

from ..headers.errors import Refused
from .attributes import ADULT_FACE_YEARS, Attributes, AttributesRefused, ModelsError, estimate
from .detect import Face, FaceDetector, face_window
from .embed import Recognizer, cosine
from .judge import DLIB_SAME_PERSON, Judge, distance
from .pool import skin_lab

# Width the face is scaled down to (never up) before MTCNN looks for it again.
REFIND_FACE_WIDTH = 224.0
# A new face whose cheeks differ from the patient's by more than this (CIELAB delta E between
# the two cheeks' medians, ``pool.skin_lab``) has lost the patient's skin colour, which a
# teaching photo keeps (a dermatology photo is taken for it). The transplant's relighting can
# fail that way: over the 98 outputs of a judged run (generated people, mouth kept) the change
# was 4.7 at the median; six of the seven above 12 looked wrong on the contact sheet (a pale mask
# on a dark-skinned patient, a grey-black face on a brown one), and two of the four between 10
# and 12 were pale faces too: the limit holds back the clearest failures only
# (docs/research/generated-identities.md, "The skin's colour at the gate").
MAX_SKIN_CHANGE = 12.0
# A new face on an adult that the age estimator reads under this is a child's face. With the sex
# read the other way (``looks_changed``), the flaws a triage of a judged run's outputs found that
# the draw cannot see: the new person was of the patient's sex and age as rendered, but the
# transplant (a pale relit face, the patient's own jaw and hair round it) turned a man's photo
# into a face the estimator took for a woman at 0.98, and a young man's into a face it read at
# 7 years (docs/research/generated-identities.md, "The sex and age the output reads as").
CHILD_FACE_YEARS = 13.0


class FaceRefused(Refused):
    """The face pipeline could not make this photo safe; the code says which check failed.

    Codes: ``no-face``, ``too-many-faces``, ``too-many-frames``, ``face-too-small``,
    ``face-too-turned``, ``face-cut-off``, ``qa-identity-too-similar``,
    ``qa-face-not-found``, ``qa-preserved-area-changed``, ``qa-skin-colour-changed``,
    ``qa-sex-changed``, ``qa-age-changed``, ``no-surrogate``.
    """


@dataclass(frozen=True)
class Verdict:
    """The checks of one rendering. ``code`` is None when it passed."""

    preserved_max_abs_diff: int
    face_found: bool
    identity_similarity: float | None
    code: str | None
    # dlib descriptor distance to the patient, when the route asks for a second recogniser.
    second_distance: float | None = None
    # CIELAB delta E of the cheeks, the new face against the patient's (``skin_change``).
    skin_change: float | None = None
    # The sex and age estimator's reading of the new face (``looks_changed``).
    reading: Attributes | None = None

    def figures(self) -> dict:
        figures = {
            "preserved_max_abs_diff": self.preserved_max_abs_diff,
            "face_found": self.face_found,
            "identity_similarity": None
            if self.identity_similarity is None
            else round(self.identity_similarity, 4),
        }
        if self.second_distance is not None:
            figures["second_recognizer_distance"] = round(self.second_distance, 4)
        if self.skin_change is not None:
            figures["skin_delta_e"] = round(self.skin_change, 1)
        if self.reading is not None:
            figures["read_sex"] = self.reading.sex
            figures["read_sex_confidence"] = round(self.reading.sex_confidence, 3)
            figures["read_age_years"] = round(self.reading.age_years, 1)
        return figures


@dataclass(frozen=True)
class Looks:
    """What a new face should read as: ``sex`` the patient's where it is known (the header's, or
    an estimate trusted at the estimator's threshold; None: any), ``adult`` whether the patient is
    one (by the header or the estimate), and ``patient`` the estimator's reading of the patient's
    own photo, which keeps its bias on this patient from holding their photos
    (``looks_changed``)."""

    sex: str | None
    adult: bool
    patient: Attributes


def looks_changed(after: np.ndarray, face: Face, looks: Looks) -> tuple[str | None, Attributes | None]:
    """Whether the new face at ``face`` in ``after`` reads as the other sex or, on an adult, as a
    child: (``qa-sex-changed``, ``qa-age-changed`` or None; the reading, None where the estimator
    cannot read the face, which passes: the estimate decides how well a face suits, not safety).

    Only a reading the patient's own photo does not share counts: an estimator that takes this
    woman for a man takes her new face for one too, and that is its bias, not the new face."""
    try:
        read = estimate(after, face)
    except (AttributesRefused, ModelsError):
        return None, None
    sex = read.trusted_sex()
    if looks.sex is not None and sex is not None and sex != looks.sex and sex != looks.patient.sex:
        return "qa-sex-changed", read
    young = looks.patient.age_years >= ADULT_FACE_YEARS and read.age_years < CHILD_FACE_YEARS
    if looks.adult and young:
        return "qa-age-changed", read
    return None, read


@dataclass(frozen=True)
class SecondOpinion:
    """dlib's recogniser and the patient's face, for ``check``.

    The patient's descriptor (~0.15 s) is worked out only when a rendering has passed SFace: a
    photo held for other reasons never pays for it.
    """

    judge: Judge
    original: np.ndarray
    face: Face

    @cached_property
    def patient(self) -> np.ndarray:
        return self.judge.describe(self.original, self.face)


def preserved_diff(
    before: np.ndarray,
    after: np.ndarray,
    preserved: np.ndarray,
    roi: tuple[int, int, int, int] | None = None,
) -> int:
    """Largest absolute difference of any sample inside the preserved mask (0 = bit-identical).

    With ``roi`` (x0, y0, x1, y1), ``preserved`` covers only that box of the frames (a face's
    masks live in its box). Only the mask's bounding box is compared either way: gathering a
    whole 12 MP frame through a mask costs ~50 ms, finding the box ~1 ms.
    """
    if roi is not None:
        x0, y0, x1, y1 = roi
        before, after = before[y0:y1, x0:x1], after[y0:y1, x0:x1]
    rows = np.flatnonzero(preserved.any(axis=1))
    if rows.size == 0:
        return 0
    cols = np.flatnonzero(preserved.any(axis=0))
    box = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
    diff = cv2.absdiff(before[box], after[box])  # uint8 |a - b|; a boolean gather costs 10x as much
    keep = preserved[box].reshape(preserved[box].shape + (1,) * (diff.ndim - 2))
    return int(diff.max(initial=0, where=keep))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def skin_change(before: np.ndarray, after: np.ndarray, face: Face) -> float:
    """How far the cheeks' colour moved (CIELAB delta E of their medians), measured where the
    patient's cheeks are: the new face's features sit at the patient's landmarks or near them."""
    return float(np.linalg.norm(skin_lab(after, face) - skin_lab(before, face)))


def refind(detector: FaceDetector, frame: np.ndarray, face: Face) -> Face | None:
    """The face in ``frame`` overlapping ``face``'s box, searched in a crop around it (cheaper).

    The crop is scaled so the face is at most ``REFIND_FACE_WIDTH`` px wide: MTCNN's cost grows
    with the pixels it scans, and a face that size is far above the 20 px it needs.
    """
    crop, (x0, y0, x1, y1), _ = face_window(frame, face.box, 1.0, REFIND_FACE_WIDTH)
    sx, sy = (x1 - x0) / crop.shape[1], (y1 - y0) / crop.shape[0]
    found = detector.detect([crop])[0]
    offset = np.array([x0, y0, x0, y0], np.float64)
    best, best_iou = None, 0.3
    for f in found:
        moved = Face(
            box=f.box * [sx, sy, sx, sy] + offset,
            landmarks=f.landmarks * [sx, sy] + offset[:2],
            score=f.score,
        )
        overlap = iou(moved.box, face.box)
        if overlap >= best_iou:
            best, best_iou = moved, overlap
    return best


def check(
    before: np.ndarray,
    after: np.ndarray,
    preserved: np.ndarray,
    face: Face,
    patient_embedding: np.ndarray,
    detector: FaceDetector,
    recognizer: Recognizer,
    max_similarity: float,
    roi: tuple[int, int, int, int] | None = None,
    second: SecondOpinion | None = None,
    looks: Looks | None = None,
) -> Verdict:
    """Judge one rendering of ``face`` (``before``/``after`` are whole frames; ``preserved`` covers
    ``roi`` when given, else the whole frame). With ``second``, dlib must also tell the new face
    from the patient's; with ``looks``, the new face must read as that sex and age. The skin's
    colour and the looks are judged before the recognisers: they cost milliseconds, the
    recognisers a tenth of a second."""
    diff = preserved_diff(before, after, preserved, roi)
    if diff:
        return Verdict(diff, False, None, "qa-preserved-area-changed")
    found = refind(detector, after, face)
    if found is None:
        return Verdict(0, False, None, "qa-face-not-found")
    skin = skin_change(before, after, face)
    if skin > MAX_SKIN_CHANGE:
        return Verdict(0, True, None, "qa-skin-colour-changed", skin_change=skin)
    changed, read = looks_changed(after, found, looks) if looks is not None else (None, None)
    if changed:
        return Verdict(0, True, None, changed, skin_change=skin, reading=read)
    sim = cosine(patient_embedding, recognizer.embed(after, found))
    if sim >= max_similarity:
        return Verdict(0, True, sim, "qa-identity-too-similar", skin_change=skin, reading=read)
    if second is None:
        return Verdict(0, True, sim, None, skin_change=skin, reading=read)
    apart = distance(second.patient, second.judge.describe(after, found))
    code = None if apart >= DLIB_SAME_PERSON else "qa-identity-too-similar"
    return Verdict(0, True, sim, code, apart, skin_change=skin, reading=read)
