"""Where the new face's eyes and nose go, and the warp that carries the surrogate photo there.

The surrogate's own proportions are part of its identity and the patient's are part of theirs:
the features move towards the surrogate's, but never out of or next to the preserved area.
"""

from __future__ import annotations

import cv2
import numpy as np

from .detect import LEFT_EYE, NOSE, RIGHT_EYE, Face
from .masks import FaceMasks

# The new face's eyes and nose move at most this far (eye distances) from the patient's towards
# the surrogate's own proportions (half the pool/test pairs need 0.1, 5% more than 0.23).
MAX_FEATURE_SHIFT = 0.2
# A landmark with preserved pixels this close (eye distances) stays where the patient's is.
_PINNED_RADIUS = 0.1


def _tps_kernel(d2: np.ndarray) -> np.ndarray:
    """The thin-plate spline's radial function r^2 log r, written in terms of r^2."""
    return np.where(d2 > 0, 0.5 * d2 * np.log(np.maximum(d2, 1e-12)), 0.0)


def warp_maps(
    src_lm: np.ndarray, dst_lm: np.ndarray, roi: tuple[int, int, int, int], eye_distance: float
) -> tuple[np.ndarray, np.ndarray]:
    """Inverse maps for cv2.remap that carry the surrogate's landmarks ``src_lm`` exactly onto
    ``dst_lm`` (the patient's, or where ``feature_landmarks`` moved them).

    A thin-plate spline from the destination landmarks to the surrogate's: an affine part (which
    takes up a turned face's foreshortening) plus the smoothest bend that puts eyes, nose and
    mouth corners where the destination has them. It replaced a similarity plus Gaussian radial
    bases, whose weights, solved on five close points, overshot between them: on faces turned
    10-15 degrees the field moved up to 0.5 eye distances where no landmark had moved half as
    much, and the eyes came out stretched diagonally. Written out (an 8x8 solve) because the
    OpenCV wheel has no shape module and scipy is not otherwise needed. Evaluated on a coarse
    grid and upsampled: the field is smooth by construction.
    """
    # In eye distances, so the kernel's log does not depend on the photo's resolution.
    c = dst_lm / eye_distance
    n = len(c)
    system = np.zeros((n + 3, n + 3))
    system[:n, :n] = _tps_kernel(((c[:, None] - c[None]) ** 2).sum(-1))
    system[:n, n] = system[n, :n] = 1.0
    system[:n, n + 1 :] = c
    system[n + 1 :, :n] = c.T
    rhs = np.zeros((n + 3, 2))
    rhs[:n] = src_lm
    coef = np.linalg.solve(system, rhs)
    x0, y0, x1, y1 = roi
    step = 8
    gx = np.arange(x0, x1 + step, step, dtype=np.float64)
    gy = np.arange(y0, y1 + step, step, dtype=np.float64)
    px, py = np.meshgrid(gx, gy)
    q = np.stack([px.ravel(), py.ravel()], 1) / eye_distance
    src_pts = _tps_kernel(((q[:, None] - c[None]) ** 2).sum(-1)) @ coef[:n] + coef[n] + q @ coef[n + 1 :]
    mx = src_pts[:, 0].reshape(px.shape).astype(np.float32)
    my = src_pts[:, 1].reshape(px.shape).astype(np.float32)
    # Upsample the coarse grid so that grid node i lands exactly on pixel x0 + i*step.
    full = (mx.shape[1] - 1) * step + 1, (mx.shape[0] - 1) * step + 1
    mx = cv2.resize(mx, full, interpolation=cv2.INTER_LINEAR)[: y1 - y0, : x1 - x0]
    my = cv2.resize(my, full, interpolation=cv2.INTER_LINEAR)[: y1 - y0, : x1 - x0]
    return np.ascontiguousarray(mx), np.ascontiguousarray(my)


def feature_landmarks(surrogate_lm: np.ndarray, face: Face, masks: FaceMasks) -> np.ndarray:
    """Where the new face's five landmarks go in the frame: the patient's mouth corners, and the
    eyes and nose where the surrogate's own proportions put them (its landmarks laid on the
    patient's by the closest similarity), at most ``MAX_FEATURE_SHIFT`` eye distances away.

    Warped onto the patient's own eyes and nose, the new face kept the patient's proportions,
    which a recogniser reads as identity: taking the surrogate's held 6 fewer of the 217 test
    faces as look-alikes (31 against 37). A landmark in or next to the preserved area stays
    where it is, so the clinical area and its surroundings are never pulled out of place.
    """
    lm = face.landmarks
    # Least squares over all five points (every point an inlier): a robust fit would lay some
    # landmarks exactly on the patient's and put all of the difference into the others.
    fit, _ = cv2.estimateAffinePartial2D(
        surrogate_lm.astype(np.float32), lm.astype(np.float32), ransacReprojThreshold=1e9
    )
    if fit is None:
        return lm
    shift = surrogate_lm @ fit[:, :2].T + fit[:, 2] - lm
    ed = face.eye_distance
    length = np.linalg.norm(shift, axis=1, keepdims=True)
    shift *= np.minimum(1.0, MAX_FEATURE_SHIFT * ed / np.maximum(length, 1e-9))
    x0, y0 = masks.roi[:2]
    r = max(1, round(_PINNED_RADIUS * ed))
    out = lm.astype(np.float64).copy()
    for i in (LEFT_EYE, RIGHT_EYE, NOSE):
        cx, cy = np.round(lm[i] - [x0, y0]).astype(int)
        near = masks.preserved[max(0, cy - r) : max(0, cy + r + 1), max(0, cx - r) : max(0, cx + r + 1)]
        if not near.any():
            out[i] += shift[i]
    return out
