"""random-face's 1024 px MobileStyleGAN as a generator the area-preserving encoder inverts.

The encoder works at a lower resolution (256 px by default): G draws its 1024 px face and the
face is area-averaged down to the working size, so every loss sees exactly what G drew. (The
IR's intermediate outputs are wavelet bands, not images; nothing cheaper is exact.)

Codes are styles (G's W space, where the mapping network's output lives), normalised per number by
the mean and spread of the styles of ``MEAN_SAMPLES`` latents of a fixed seed, the same latents
``generator.FaceGenerator`` takes its truncation centre from: the latent loss then weighs every
number alike, and a code of zeros is the mean face.

Training data are G's own samples (``SampledFaces``): faces at random truncations, each one's
preserved area (the pipeline's mouth mask in G's frame, varied in width and place the way mouths
and smiles vary) merged onto the next sample as context, exactly what the backend feeds the
encoder. Everything here imports torch and numpy only (and the IR reader), so a GPU host with
torch alone can train (benchmarks/gpu_incontext.py).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..generator import _MEAN_SEED, MEAN_SAMPLES, RESOLUTION, STYLE_DIM, Engine
from ..ir_torch import MobileStyleGAN

NAME = "mobilestylegan-1024"
# The ArcFace template's mouth corners (``masks.TEMPLATE[3:5]``; a test keeps them equal), written
# out because masks.py needs OpenCV, which GPU hosts here lack.
TEMPLATE_MOUTH = np.array([[41.5493, 92.3655], [70.7299, 92.2041]])
TEMPLATE_SIZE = 112.0
# How much wider (a smile) or narrower, and how far off the template place (template units), a
# patient's mouth mask lies in the aligned frame: the spread the encoder must handle.
MOUTH_WIDTH_RANGE = (0.9, 1.35)
MOUTH_SHIFT = 2.5

Frame = tuple[float, float, float]


class MobileGenerator(nn.Module):
    """Normalised styles ``(N, 512)`` to faces ``(N, 3, resolution, resolution)`` in about [-1, 1].

    ``sample_latent`` draws codes of G's samples at truncations uniform in ``[psi_min, psi_max]``
    (towards the same mean style as the generated identities). ``frame`` is where the ArcFace
    template lies in G's images (``data.template_in_frame``), measured on G's samples.
    """

    latent_space = "w"
    latent_dim = STYLE_DIM

    def __init__(
        self,
        frame: Frame,
        resolution: int = 256,
        name: str = NAME,
        psi_min: float = 0.5,
        psi_max: float = 1.0,
        device: torch.device | str = "cpu",
        data_dir: Path | None = None,
    ) -> None:
        super().__init__()
        if RESOLUTION % resolution or resolution & (resolution - 1):
            raise ValueError(f"working resolution must be a power of two dividing {RESOLUTION}")
        self.net = MobileStyleGAN(device, data_dir)
        self.net.requires_grad_(False)
        self.frame = tuple(float(v) for v in frame)
        self.resolution = resolution
        self.name = name
        self.psi = (float(psi_min), float(psi_max))
        z = np.random.default_rng(_MEAN_SEED).standard_normal((MEAN_SAMPLES, STYLE_DIM)).astype(np.float32)
        with torch.no_grad():
            styles = self.net.mapping(torch.from_numpy(z).to(device))
        self.register_buffer("mean_style", styles.mean(0))
        self.register_buffer("style_scale", styles.std(0))
        self.engine: Engine | None = None

    def _device(self) -> torch.device:
        return self.mean_style.device

    def style(self, code: Tensor) -> Tensor:
        """G's style for a normalised code."""
        return self.mean_style + code * self.style_scale

    def code(self, style: Tensor) -> Tensor:
        """The normalised code of a style (e.g. a generated identity's truncated style)."""
        return (style - self.mean_style) / self.style_scale

    @torch.no_grad()
    def sample_latent(self, n: int, rng: torch.Generator) -> Tensor:
        z = torch.randn(n, STYLE_DIM, generator=rng).to(self._device())
        lo, hi = self.psi
        psi = (lo + (hi - lo) * torch.rand(n, 1, generator=rng)).to(self._device())
        raw = self.net.mapping(z)
        return self.code(self.mean_style + psi * (raw - self.mean_style))

    def forward(self, code: Tensor) -> Tensor:
        return F.avg_pool2d(self.full(code), RESOLUTION // self.resolution)

    def full(self, code: Tensor) -> Tensor:
        """G's own 1024 px face: what the backend puts into the photo.

        Without gradients on the CPU, ``engine`` (OpenVINO, when the backend attached one) draws
        it: the same network within 5.4e-4, 0.3 s a face instead of torch's 2.2 s on two cores.
        """
        style = self.style(code)
        if self.engine is not None and not torch.is_grad_enabled() and style.device.type == "cpu":
            return torch.from_numpy(self.engine.images(style.numpy()))
        return self.net.synthesis(style)

    def mouth_masks(self, n: int, rng: torch.Generator) -> Tensor:
        """``(n, 1, R, R)`` mouth masks in G's frame, on G's device (see ``mouth_masks``)."""
        return mouth_masks(n, rng, self.resolution, self.frame).to(self._device())


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
    ``data.aligned_area_mask`` on the template face.
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
        return generated.roll(1, 0), self.generator.mouth_masks(len(generated), rng)


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
    masks = generator.mouth_masks(n, rng)

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
    device = generator._device()
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
