"""The encoder's training and held-out faces drawn from random-face's MobileStyleGAN itself.

Training data are G's own samples (``SampledFaces``): faces at random truncations, each one's
preserved area (the pipeline's mouth mask in G's frame, varied in width and place the way mouths
and smiles vary) merged onto the next sample as context, exactly what the backend feeds the
encoder. Everything here imports torch and numpy only (and the IR reader), so a GPU host with
torch alone can train (benchmarks/gpu_incontext.py).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ...faces.gan.mobile import Frame, MobileGenerator

# The ArcFace template's mouth corners (``masks.TEMPLATE[3:5]``; a test keeps them equal), written
# out because masks.py needs OpenCV, which GPU hosts here lack.
TEMPLATE_MOUTH = np.array([[41.5493, 92.3655], [70.7299, 92.2041]])
TEMPLATE_SIZE = 112.0
# How much wider (a smile) or narrower, and how far off the template place (template units), a
# patient's mouth mask lies in the aligned frame: the spread the encoder must handle.
MOUTH_WIDTH_RANGE = (0.9, 1.35)
MOUTH_SHIFT = 2.5


def generator_mouth_masks(generator: MobileGenerator, n: int, rng: torch.Generator) -> Tensor:
    """``(n, 1, R, R)`` mouth masks in G's frame, on G's device (see ``mouth_masks``)."""
    return mouth_masks(n, rng, generator.resolution, generator.frame).to(generator.device())


def mouth_masks(
    n: int,
    rng: torch.Generator,
    resolution: int,
    frame: Frame,
    width_range: tuple[float, float] = MOUTH_WIDTH_RANGE,
    shift: float = MOUTH_SHIFT,
) -> Tensor:
    """``(n, 1, R, R)`` masks of the pipeline's mouth preset (``masks.preset_polygons``: an ellipse
    over and below the mouth corners) in a generator's frame, for mouths ``width_range`` times the
    template's width placed up to ``shift`` template units off the template's place.

    Drawn analytically rather than with OpenCV (absent on GPU hosts); a test keeps it equal to
    ``facesets.aligned_area_mask`` on the template face.
    """
    lo, hi = width_range
    width = lo + (hi - lo) * torch.rand(n, generator=rng)
    offset = (torch.rand(n, 2, generator=rng) * 2 - 1) * shift
    corners = torch.from_numpy(TEMPLATE_MOUTH).float()
    mw = float(torch.linalg.vector_norm(corners[1] - corners[0])) * width
    centre = corners.mean(0) + offset
    scale, dx, dy = frame
    px = resolution / TEMPLATE_SIZE
    cx = (centre[:, 0] * scale + dx) * px
    cy = ((centre[:, 1] + 0.12 * mw) * scale + dy) * px
    ax, ay = 0.625 * mw * scale * px, 0.425 * mw * scale * px
    # Pixel (i, j) is in when its integer coordinates are, as OpenCV's fillPoly decides.
    grid = torch.arange(resolution, dtype=torch.float32)
    inside = ((grid[None, None, :] - cx[:, None, None]) / ax[:, None, None]) ** 2 + (
        (grid[None, :, None] - cy[:, None, None]) / ay[:, None, None]
    ) ** 2 <= 1
    return inside[:, None].float()


class SampledFaces:
    """Training crops drawn from G itself (``train.TrainingFaces``): each face of the step's batch
    is the patient for the next one, whose face is its context, and gets a mouth mask."""

    def __init__(self, generator: MobileGenerator) -> None:
        self.generator = generator

    def __len__(self) -> int:
        return sys.maxsize  # unbounded: every step draws new faces

    def draw(self, generated: Tensor, rng: torch.Generator) -> tuple[Tensor, Tensor]:
        return generated.roll(1, 0), generator_mouth_masks(self.generator, len(generated), rng)


@dataclass(frozen=True)
class HeldOut:
    """Faces no training step draws: patients with their true codes, contexts, mouth masks."""

    codes: Tensor
    patients: Tensor
    contexts: Tensor
    masks: Tensor

    @property
    def merged(self) -> Tensor:
        return self.masks * self.patients + (1 - self.masks) * self.contexts


@torch.no_grad()
def held_out(generator: MobileGenerator, n: int, seed: int = 10_000_019, batch: int = 8) -> HeldOut:
    """``n`` patients and ``n`` contexts from a seed that training's per-step seeds never give."""
    rng = torch.Generator().manual_seed(seed)
    codes = generator.sample_latent(n, rng)
    context_codes = generator.sample_latent(n, rng)
    masks = generator_mouth_masks(generator, n, rng)

    def draw(c: Tensor) -> Tensor:
        return torch.cat([generator(c[i : i + batch]) for i in range(0, n, batch)])

    return HeldOut(codes.cpu(), draw(codes).cpu(), draw(context_codes).cpu(), masks.cpu())


@torch.no_grad()
def evaluate_held_out(
    generator: MobileGenerator, encoder: nn.Module, data: HeldOut, batch: int = 8
) -> tuple[dict[str, Tensor], Tensor]:
    """Per-face errors of G(E(x)) on held-out faces, and G(E(merged)) itself.

    For the patient's own face (``real_*``) and for the merged input the backend uses
    (``merged_*``): the mean squared error inside the mouth and over the whole image (images in
    [-1, 1]) and the mouth's mean absolute error in 8-bit levels; ``real_latent`` is the squared
    error of the code, which only a generated face has.
    """
    encoder.eval()
    device = generator.device()
    out: dict[str, list[Tensor]] = {}
    merged_out = []
    merged = data.merged
    for lo in range(0, len(data.codes), batch):
        m = data.masks[lo : lo + batch].to(device)
        area = (3 * m.sum(dim=(1, 2, 3))).clamp_min(1)
        for kind, x in (("real", data.patients[lo : lo + batch]), ("merged", merged[lo : lo + batch])):
            x = x.to(device)
            code = encoder(x)
            y = generator(code)
            err = (x - y) ** 2
            values = {
                f"{kind}_area_mse": (err * m).sum(dim=(1, 2, 3)) / area,
                f"{kind}_whole_mse": err.mean(dim=(1, 2, 3)),
                f"{kind}_area_mae8": ((x - y).abs() * m).sum(dim=(1, 2, 3)) / area * 127.5,
            }
            if kind == "real":
                values["real_latent"] = ((code - data.codes[lo : lo + batch].to(device)) ** 2).mean(1)
            else:
                merged_out.append(y.clamp(-1, 1).cpu())
            for key, v in values.items():
                out.setdefault(key, []).append(v.cpu())
    return {k: torch.cat(v) for k, v in out.items()}, torch.cat(merged_out)
