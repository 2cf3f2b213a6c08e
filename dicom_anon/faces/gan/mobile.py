"""random-face's 1024 px MobileStyleGAN as a generator the area-preserving encoder inverts.

The encoder works at a lower resolution (256 px by default): G draws its 1024 px face and the
face is area-averaged down to the working size, so every loss sees exactly what G drew. (The
IR's intermediate outputs are wavelet bands, not images; nothing cheaper is exact.)

Codes are styles (G's W space, where the mapping network's output lives), normalised per number by
the mean and spread of the styles of ``MEAN_SAMPLES`` latents of a fixed seed, the same latents
``generator.FaceGenerator`` takes its truncation centre from: the latent loss then weighs every
number alike, and a code of zeros is the mean face.

The encoder is trained on G's own samples in the lab (``dicom_anon.lab.training.samples``).
This module imports torch and numpy only (and the IR reader), so a GPU host with torch alone can
run it (benchmarks/gpu_incontext.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..generator import _MEAN_SEED, MEAN_SAMPLES, RESOLUTION, STYLE_DIM, Engine
from ..ir_torch import MobileStyleGAN

NAME = "mobilestylegan-1024"
Frame = tuple[float, float, float]


class MobileGenerator(nn.Module):
    """Normalised styles ``(N, 512)`` to faces ``(N, 3, resolution, resolution)`` in about [-1, 1].

    ``sample_latent`` draws codes of G's samples at truncations uniform in ``[psi_min, psi_max]``
    (towards the same mean style as the generated identities). ``frame`` is where the ArcFace
    template lies in G's images (``frame.template_in_frame``), measured on G's samples.
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

    def device(self) -> torch.device:
        return self.mean_style.device

    def style(self, code: Tensor) -> Tensor:
        """G's style for a normalised code."""
        return self.mean_style + code * self.style_scale

    def code(self, style: Tensor) -> Tensor:
        """The normalised code of a style (e.g. a generated identity's truncated style)."""
        return (style - self.mean_style) / self.style_scale

    @torch.no_grad()
    def sample_latent(self, n: int, rng: torch.Generator) -> Tensor:
        z = torch.randn(n, STYLE_DIM, generator=rng).to(self.device())
        lo, hi = self.psi
        psi = (lo + (hi - lo) * torch.rand(n, 1, generator=rng)).to(self.device())
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
