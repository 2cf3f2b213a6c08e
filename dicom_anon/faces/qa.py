"""The QA gate: a replaced face leaves only if the clinical area is exact, a face is still
there, and a recogniser no longer takes it for the patient. Failing that, the photo is
refused with a reason a records officer can act on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..headers.errors import Refused
from .detect import Face, FaceDetector
from .embed import Recognizer, cosine


class FaceRefused(Refused):
    """The face pipeline could not make this photo safe; the code says which check failed.

    Codes: ``no-face``, ``face-too-small``, ``face-too-turned``, ``qa-identity-too-similar``,
    ``qa-face-not-found``, ``qa-preserved-area-changed``, ``no-surrogate``.
    """


@dataclass(frozen=True)
class Verdict:
    """The checks of one rendering. ``code`` is None when it passed."""

    preserved_max_abs_diff: int
    face_found: bool
    identity_similarity: float | None
    code: str | None

    def figures(self) -> dict:
        return {
            "preserved_max_abs_diff": self.preserved_max_abs_diff,
            "face_found": self.face_found,
            "identity_similarity": None
            if self.identity_similarity is None
            else round(self.identity_similarity, 4),
        }


def preserved_diff(before: np.ndarray, after: np.ndarray, preserved: np.ndarray) -> int:
    """Largest absolute difference of any sample inside the preserved mask (0 = bit-identical)."""
    if not preserved.any():
        return 0
    return int(np.abs(before[preserved].astype(np.int16) - after[preserved].astype(np.int16)).max())


def iou(a: np.ndarray, b: np.ndarray) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def refind(detector: FaceDetector, frame: np.ndarray, face: Face) -> Face | None:
    """The face in ``frame`` overlapping ``face``'s box, searched in a crop around it (cheaper)."""
    h, w = frame.shape[:2]
    bw, bh = face.box[2] - face.box[0], face.box[3] - face.box[1]
    x0, y0 = int(max(0, face.box[0] - bw)), int(max(0, face.box[1] - bh))
    x1, y1 = int(min(w, face.box[2] + bw)), int(min(h, face.box[3] + bh))
    found = detector.detect([np.ascontiguousarray(frame[y0:y1, x0:x1])])[0]
    offset = np.array([x0, y0, x0, y0], np.float64)
    best, best_iou = None, 0.3
    for f in found:
        moved = Face(box=f.box + offset, landmarks=f.landmarks + offset[:2], score=f.score)
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
) -> Verdict:
    """Judge one rendering of ``face`` (``before``/``after`` are whole frames)."""
    diff = preserved_diff(before, after, preserved)
    if diff:
        return Verdict(diff, False, None, "qa-preserved-area-changed")
    found = refind(detector, after, face)
    if found is None:
        return Verdict(0, False, None, "qa-face-not-found")
    sim = cosine(patient_embedding, recognizer.embed(after, found))
    return Verdict(0, True, sim, None if sim < max_similarity else "qa-identity-too-similar")
