"""A second face recogniser: dlib's ResNet (``dlib-bin``), with its weights from the
``face_recognition_models`` package.

The gate turns down every rendering SFace still takes for the patient, so SFace's own
re-identification rate on what leaves is zero by construction: it grades its own work. An
attacker would bring another recogniser. This one was trained on other data with another
architecture and aligns faces with its own HOG detector and 5-point shape model, so the
evaluation can say how often an unseen recogniser still finds the patient. By default it is
also the QA gate's second recogniser (``pixels.second_recognizer``); its figure is then no
longer unseen, and ``eval --no-second-recognizer`` measures it as a judge again.

Both model files are CC0 (Davis King, dlib-models); the package is MIT. We locate them
without importing ``face_recognition_models``, whose ``__init__`` needs ``pkg_resources``
(setuptools), which our virtual environment does not install.
"""

from __future__ import annotations

import importlib.util
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

from .detect import Face, face_window

# dlib's published threshold: descriptors closer than this are the same person (LFW 99.38%).
DLIB_SAME_PERSON = 0.6
# dlib's face chips are 150 px; at about this width its HOG detector (80 px window) finds the face
# without upsampling, which cost four times as long (60 ms against 15 ms).
_FACE_WIDTH = 160.0
_RECOGNITION = "dlib_face_recognition_resnet_model_v1.dat"
_SHAPE = "shape_predictor_5_face_landmarks.dat"


class JudgeUnavailable(RuntimeError):
    """dlib or its models are missing (a broken install): a route that gates on them holds its
    photos (``method-unavailable``), and ``eval`` cannot run."""


def model_dir() -> Path:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise JudgeUnavailable("the 'face_recognition_models' package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def dlib_model(name: str) -> Path:
    """The dlib model file ``name`` of ``face_recognition_models``, once dlib itself imports: a
    missing wheel or file is one clear ``JudgeUnavailable`` for every dlib model we load."""
    try:
        import dlib  # noqa: F401  (checked here so a missing wheel is one clear error)
    except ImportError as exc:
        raise JudgeUnavailable("the 'dlib-bin' package is not installed") from exc
    path = model_dir() / name
    if not path.is_file():
        raise JudgeUnavailable(f"{path} is missing; reinstall 'face_recognition_models'")
    return path


class Judge:
    """dlib descriptors of a face; one set of dlib objects per thread."""

    def __init__(self) -> None:
        self._paths = str(dlib_model(_SHAPE)), str(dlib_model(_RECOGNITION))
        self._local = threading.local()

    def _nets(self) -> tuple:
        nets = getattr(self._local, "nets", None)
        if nets is None:
            import dlib

            shape, recognition = self._paths
            nets = (
                dlib.get_frontal_face_detector(),
                dlib.shape_predictor(shape),
                dlib.face_recognition_model_v1(recognition),
            )
            self._local.nets = nets
        return nets

    def describe(self, rgb: np.ndarray, face: Face) -> np.ndarray:
        """128-d dlib descriptor of the face at ``face.box``.

        dlib finds the face again itself in a window around that box (its shape model expects
        its own detector's boxes); only if it finds none there is our box used.
        """
        import dlib

        detector, shape, recognition = self._nets()
        window, (x0, y0, _, _), scale = face_window(rgb, face.box, 0.5, _FACE_WIDTH)
        ours = (face.box - [x0, y0, x0, y0]) * scale
        found = [
            r
            for r in detector(window, 0)
            if ours[0] <= r.center().x <= ours[2] and ours[1] <= r.center().y <= ours[3]
        ]
        rect = (
            max(found, key=lambda r: r.area()) if found else dlib.rectangle(*(round(float(v)) for v in ours))
        )
        return np.asarray(recognition.compute_face_descriptor(window, shape(window, rect)), np.float64)


def distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance of two dlib descriptors (what dlib's threshold is defined on)."""
    return float(np.linalg.norm(a - b))


@lru_cache(maxsize=1)
def get_judge() -> Judge:
    return Judge()
