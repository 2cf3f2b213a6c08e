"""Face crops in the generator's frame, with their preserved-area masks.

The DCGAN was trained on DigiFace-1M, whose faces are aligned to the ArcFace 112x112 five-point
template; the face pipeline's masks are defined in that same template frame
(``dicom_anon.faces.masks``). Aligning every face to the template scaled to the generator's
resolution therefore puts training crops, inference crops and generated faces in one frame, and
lets the mouth mask be the pipeline's own mouth mask, not a second definition of it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..detect import Face, get_detector
from ..masks import TEMPLATE, Preset, preset_polygons, similarity

TEMPLATE_SIZE = 112.0
# Where the template lies in a generator's frame: frame = template * scale + (dx, dy), in template
# units, then scaled by resolution / 112. Identity for DigiFace-style (ArcFace-aligned) generators.
Frame = tuple[float, float, float]
IDENTITY_FRAME: Frame = (1.0, 0.0, 0.0)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


@dataclass(frozen=True)
class FaceSet:
    """Aligned faces as a training or evaluation set."""

    images: Tensor  # (N, 3, R, R) float in [-1, 1]
    masks: Tensor  # (N, 1, R, R) float, 1 = preserved
    names: list[str]

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, indices: Sequence[int]) -> FaceSet:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return FaceSet(self.images[idx], self.masks[idx], [self.names[i] for i in idx.tolist()])

    def draw(self, generated: Tensor, rng: torch.Generator) -> tuple[Tensor, Tensor]:
        """A training batch (``train.TrainingFaces``): random crops with their masks, mirrored at
        random, as many as ``generated`` holds, on its device."""
        n, device = len(generated), generated.device
        idx = torch.randint(len(self), (n,), generator=rng)
        flip = (torch.rand(n, generator=rng) < 0.5).to(device)[:, None, None, None]
        x = self.images[idx].to(device)
        m = self.masks[idx].to(device)
        return torch.where(flip, x.flip(-1), x), torch.where(flip, m.flip(-1), m)


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


def align_face(image: np.ndarray, face: Face, resolution: int, frame: Frame = IDENTITY_FRAME) -> np.ndarray:
    """The face warped into the generator's frame, ``resolution`` square, RGB uint8."""
    return warp_into_frame(image, to_aligned(face, resolution, frame), resolution)


def aligned_area_mask(
    face: Face, presets: Iterable[Preset], resolution: int, frame: Frame = IDENTITY_FRAME
) -> np.ndarray:
    """The pipeline's preserved-area polygons for this face, drawn in the aligned frame (bool)."""
    mask = np.zeros((resolution, resolution), np.uint8)
    for poly in preset_polygons(face, list(presets)):
        pts = np.round(template_in_frame(poly, resolution, frame) * 16).astype(np.int32)
        cv2.fillPoly(mask, [pts], 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


def to_tensor(rgb: np.ndarray) -> Tensor:
    """RGB uint8 (H, W, 3) to (3, H, W) float in [-1, 1], the generators' range."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float() / 127.5 - 1.0


def to_rgb8(image: Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] back to RGB uint8 (H, W, 3), clamping any overshoot."""
    return ((image.detach().clamp(-1, 1) + 1.0) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def load_faces(
    paths: Sequence[Path],
    resolution: int,
    presets: Iterable[Preset],
    device: str = "auto",
    frame: Frame = IDENTITY_FRAME,
) -> tuple[FaceSet, list[Path]]:
    """Detect, align and mask the largest face of each image; also the paths where none was found.

    Images with no face, or whose preserved area is empty in the aligned frame, are left out
    rather than guessed at: a wrong mask would teach the encoder the wrong area.
    """
    presets = list(presets)
    detector = get_detector(device)
    images: list[Tensor] = []
    masks: list[Tensor] = []
    names: list[str] = []
    skipped: list[Path] = []
    for path in paths:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        faces = detector.detect([rgb])[0]
        if not faces:
            skipped.append(path)
            continue
        mask = aligned_area_mask(faces[0], presets, resolution, frame)
        if not mask.any():
            skipped.append(path)
            continue
        images.append(to_tensor(align_face(rgb, faces[0], resolution, frame)))
        masks.append(torch.from_numpy(mask).float()[None])
        names.append(path.name)
    if not names:
        return FaceSet(
            torch.empty(0, 3, resolution, resolution), torch.empty(0, 1, resolution, resolution), []
        ), skipped
    return FaceSet(torch.stack(images), torch.stack(masks), names), skipped
