"""Find every face and its five landmarks with MTCNN (facenet-pytorch; the weights ship in the wheel).

Detection runs on a downscaled copy: MTCNN's cost grows with the pixel count while a
face that fills a tenth of a 12 MP photo is still ~100 px wide at 1024 px, far above
what it needs. Coordinates are mapped back to the full image.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
import torch

from .shrink import shrink

# Landmark order, as MTCNN and YuNet both return it: the eye, then mouth corner, that
# appears on the image's left first.
LEFT_EYE, RIGHT_EYE, NOSE, MOUTH_LEFT, MOUTH_RIGHT = range(5)

# Nose depth over eye span for an average adult head: how far the nose tip moves
# sideways (in eye spans) per unit of tan(yaw). Used only to turn landmarks into degrees.
_NOSE_DEPTH = 0.55


def resolve_device(name: str) -> torch.device:
    """``auto`` means CUDA when present, else CPU; ``cpu``, ``cuda`` and ``cuda:N`` as torch reads them.

    Raises ValueError, naming the setting, for anything else and for CUDA on a machine without
    it: otherwise torch's own error surfaced deep in MTCNN's constructor, once per photo.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device {name!r} is not a torch device; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r}: the face pipeline runs on auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: this machine has no usable CUDA; set device: auto or cpu")
        if (device.index or 0) >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        _exact_on_cuda()
    return device


def _exact_on_cuda() -> None:
    """Full-precision, deterministic cuDNN and matmuls: a patient's photo must give the same
    landmarks, QA figures and new face every time it is processed. cuDNN's default TF32
    convolutions and autotuned (non-deterministic) algorithms move MTCNN's scores and the
    blur-based corrections in their last bits, enough to flip a borderline QA verdict between
    two runs. Bit-equality with the CPU is not promised (different summation orders)."""
    torch.backends.cudnn.conv.fp32_precision = "ieee"
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def landmark_eye_distance(landmarks: np.ndarray) -> float:
    """Pixels between the eyes of 5-point ``landmarks``: the unit every face measure scales with."""
    return float(np.linalg.norm(landmarks[RIGHT_EYE] - landmarks[LEFT_EYE]))


@dataclass(frozen=True)
class Face:
    """One detected face in full-image pixel coordinates."""

    box: np.ndarray  # x1, y1, x2, y2
    landmarks: np.ndarray  # (5, 2) float, order as above
    score: float

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def eye_distance(self) -> float:
        return landmark_eye_distance(self.landmarks)

    @property
    def roll(self) -> float:
        """Head tilt in degrees (eye line against the horizontal)."""
        dx, dy = self.landmarks[RIGHT_EYE] - self.landmarks[LEFT_EYE]
        return math.degrees(math.atan2(dy, dx))

    @property
    def yaw(self) -> float:
        """Approximate left/right turn in degrees from where the nose sits between the eyes."""
        le, re, nose = self.landmarks[LEFT_EYE], self.landmarks[RIGHT_EYE], self.landmarks[NOSE]
        axis = re - le
        span = float(np.dot(axis, axis))
        if span <= 0:
            return 90.0
        ratio = float(np.dot(nose - le, axis)) / span  # 0.5 when the nose is centred
        return math.degrees(math.atan((ratio - 0.5) / _NOSE_DEPTH))

    @property
    def pitch_ratio(self) -> float:
        """Nose height between the eye line (0) and the mouth line (1); ~0.45 when looking ahead."""
        eyes = (self.landmarks[LEFT_EYE] + self.landmarks[RIGHT_EYE]) / 2
        mouth = (self.landmarks[MOUTH_LEFT] + self.landmarks[MOUTH_RIGHT]) / 2
        height = float(np.linalg.norm(mouth - eyes))
        if height <= 0:
            return 0.0
        return float(np.dot(self.landmarks[NOSE] - eyes, mouth - eyes)) / height**2

    def to_yunet_row(self) -> np.ndarray:
        """The 15-value row OpenCV's FaceRecognizerSF.alignCrop expects (box as x, y, w, h)."""
        x1, y1, x2, y2 = self.box
        return np.array([x1, y1, x2 - x1, y2 - y1, *self.landmarks.reshape(-1), self.score], dtype=np.float32)


def face_window(
    frame: np.ndarray, box: np.ndarray, margin: float, width: float
) -> tuple[np.ndarray, tuple[int, int, int, int], float]:
    """The part of ``frame`` round a face box (``margin`` face widths and heights on each side,
    clipped to the frame), scaled down so the face is at most ``width`` px wide; where that part
    lies in the frame (x0, y0, x1, y1); and the scale (1.0 when it was not scaled).

    For a second look at one face (the QA re-find, dlib's descriptor): a network that scans
    pixels costs less on a small copy, and a face far above its minimum size gains nothing.
    """
    h, w = frame.shape[:2]
    bw, bh = box[2] - box[0], box[3] - box[1]
    x0, y0 = int(max(0, box[0] - margin * bw)), int(max(0, box[1] - margin * bh))
    x1, y1 = int(min(w, box[2] + margin * bw)), int(min(h, box[3] + margin * bh))
    crop = frame[y0:y1, x0:x1]
    scale = min(1.0, width / max(float(bw), 1.0))
    if scale < 1.0:
        crop, (kw, kh) = shrink(crop, scale)
        x1, y1 = x0 + kw, y0 + kh  # the window the copy shows
        scale = crop.shape[1] / kw
    return np.ascontiguousarray(crop), (x0, y0, x1, y1), scale


class FaceDetector:
    """MTCNN on one torch device; frames of equal size go through it as one batch."""

    def __init__(self, device: str = "auto", max_side: int = 1024, min_score: float = 0.9) -> None:
        # Imported here: facenet_pytorch pulls in torchvision, which the header-only
        # paths of the service never need.
        from facenet_pytorch import MTCNN

        self.device = resolve_device(device)
        self.max_side = max_side
        self.min_score = min_score
        self._mtcnn = MTCNN(keep_all=True, device=self.device, select_largest=False, post_process=False)
        # MTCNN keeps no per-call state, but torch's CPU kernels already use every core;
        # serialising calls avoids oversubscription when several photos are in flight.
        self._lock = threading.Lock()

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        """All faces in each RGB uint8 image, largest first."""
        results: list[list[Face]] = [[] for _ in images]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, img in enumerate(images):
            groups.setdefault(img.shape, []).append(i)
        for shape, idx in groups.items():
            h, w = shape[:2]
            scale = min(1.0, self.max_side / max(h, w))
            # One step, not ``shrink``: every render is placed by these landmarks, and the
            # transplant's reduced-resolution path is sensitive to their last pixel (tests/faces/
            # test_blend.py); a 4000x3000 photo's copy costs ~10 ms more this way.
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            if min(size) < self._mtcnn.min_face_size:
                continue  # smaller than the smallest face MTCNN looks for (and it fails on such images)
            small = [
                cv2.resize(images[i], size, interpolation=cv2.INTER_AREA) if scale < 1 else images[i]
                for i in idx
            ]
            with self._lock, torch.inference_mode():
                boxes, probs, points = self._mtcnn.detect(np.stack(small), landmarks=True)
            sx, sy = w / size[0], h / size[1]
            for j, i in enumerate(idx):
                if boxes[j] is None:
                    continue
                faces = [
                    Face(
                        box=np.asarray(b, dtype=np.float64) * [sx, sy, sx, sy],
                        landmarks=np.asarray(p, dtype=np.float64) * [sx, sy],
                        score=float(s),
                    )
                    for b, s, p in zip(boxes[j], probs[j], points[j], strict=True)
                    if s >= self.min_score
                ]
                results[i] = sorted(faces, key=lambda f: -f.width)
        return results


@lru_cache(maxsize=4)
def get_detector(device: str = "auto", max_side: int = 1024) -> FaceDetector:
    """One detector per device and size: loading MTCNN takes ~0.2 s and ~2 MB of weights."""
    return FaceDetector(device=device, max_side=max_side)
