"""The generators' frame: where a face lies in a generator's image, and the warps into and out of it.

The DCGAN was trained on DigiFace-1M, whose faces are aligned to the ArcFace 112x112 five-point
template; the face pipeline's masks are defined in that same template frame
(``dicom_anon.faces.masks``). Aligning every face to the template scaled to the generator's
resolution therefore puts training crops, inference crops and generated faces in one frame, and
lets the mouth mask be the pipeline's own mouth mask, not a second definition of it. The training
sets built in that frame live in the lab (``dicom_anon.lab.training.facesets``).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import Tensor

from ..detect import Face
from ..masks import TEMPLATE, similarity

TEMPLATE_SIZE = 112.0
# Where the template lies in a generator's frame: frame = template * scale + (dx, dy), in template
# units, then scaled by resolution / 112. Identity for DigiFace-style (ArcFace-aligned) generators.
Frame = tuple[float, float, float]
IDENTITY_FRAME: Frame = (1.0, 0.0, 0.0)


def template_in_frame(points: np.ndarray, resolution: int, frame: Frame = IDENTITY_FRAME) -> np.ndarray:
    """Template-unit points (landmarks, mask polygons) in the generator's pixel frame."""
    scale, dx, dy = frame
    return (np.asarray(points, np.float64) * scale + np.array([dx, dy])) * (resolution / TEMPLATE_SIZE)


def to_aligned(face: Face, resolution: int, frame: Frame = IDENTITY_FRAME) -> np.ndarray:
    """2x3 map from image pixels into the generator's aligned frame."""
    return similarity(face.landmarks, template_in_frame(TEMPLATE, resolution, frame))


def warp_into_frame(
    image: np.ndarray, m: np.ndarray, resolution: int, border: int = cv2.BORDER_REFLECT
) -> np.ndarray:
    """``image`` mapped by the 2x3 ``m`` into a ``resolution`` square.

    A large face is first shrunk with area averaging: warpAffine samples bilinearly and would
    alias a 400-pixel face squeezed into 64 pixels.
    """
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    if scale < 0.5:
        shrink = 2.0 * scale
        small = cv2.resize(image, None, fx=shrink, fy=shrink, interpolation=cv2.INTER_AREA)
        sx, sy = small.shape[1] / image.shape[1], small.shape[0] / image.shape[0]
        m = m @ np.array([[1 / sx, 0, 0], [0, 1 / sy, 0], [0, 0, 1]])
        image = small
    return cv2.warpAffine(image, m, (resolution, resolution), flags=cv2.INTER_LINEAR, borderMode=border)


def to_tensor(rgb: np.ndarray) -> Tensor:
    """RGB uint8 (H, W, 3) to (3, H, W) float in [-1, 1], the generators' range."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float() / 127.5 - 1.0


def to_rgb8(image: Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] back to RGB uint8 (H, W, 3), clamping any overshoot."""
    return ((image.detach().clamp(-1, 1) + 1.0) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
