"""Face sets the encoder trains and is evaluated on: photos detected, aligned into a generator's
frame (``faces.gan.frame``) and given the pipeline's preserved-area mask."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ...faces.detect import Face, get_detector
from ...faces.gan.frame import (
    IDENTITY_FRAME,
    Frame,
    template_in_frame,
    to_aligned,
    to_tensor,
    warp_into_frame,
)
from ...faces.masks import Preset, preset_polygons

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
