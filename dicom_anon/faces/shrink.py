"""Shrinking a large photo to a small working copy, fast.

Every photo is scaled down several times on its way (the screening copy, QA's second look for
the face, dlib's chip). OpenCV's area averaging (``INTER_AREA``) is the right filter for that, but it
is fast only for whole-number factors: a 4000x3000 photo shrunk by a factor such as 13.7 takes
25-40 ms on these cores, against 10-17 ms for a whole-number step followed by the small
remainder. Written here because OpenCV offers the two steps but not the choice between them.
"""

from __future__ import annotations

import cv2
import numpy as np


def shrink(image: np.ndarray, scale: float) -> tuple[np.ndarray, tuple[int, int]]:
    """``image`` area-averaged down by ``scale`` (< 1), and the width and height of the part of
    it the copy shows, from its top left corner.

    The first step averages whole blocks; it drops the last rows and columns that do not fill a
    block (fewer than a block's width, a fraction of one pixel of the copy). So a position in the
    copy maps back through that part exactly: multiply by ``kept / copy size``, not by the
    image's size.
    """
    h, w = image.shape[:2]
    k = int(1.0 / scale) if scale > 0 else 1
    if k >= 2 and w >= k and h >= k:
        kw, kh = w - w % k, h - h % k
        image = cv2.resize(image[:kh, :kw], (kw // k, kh // k), interpolation=cv2.INTER_AREA)
    else:
        kw, kh = w, h
    size = (max(1, round(kw * scale)), max(1, round(kh * scale)))
    if (image.shape[1], image.shape[0]) != size:
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return image, (kw, kh)
