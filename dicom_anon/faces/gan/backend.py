"""The GAN-inversion identity-replacement backend (``method: gan``).

For one face: align it into the generator's frame; take a context face (a pool surrogate that
suits the patient when a pool is given, else a face drawn from G with a code keyed by the
patient's pseudonym, so one patient always gets the same context); paste the patient's preserved
area onto the context; encode the merged image with the area-preserving encoder E and generate
G(E(merged)); warp the result back onto the photo at the face's size; harmonise its colour, blend
it in with the pipeline's gradient-domain compositor; and copy the preserved pixels back bit for
bit, so exactness never depends on how well E inverted the area.

It implements the face pipeline's ``ReplacementBackend`` interface
(``dicom_anon.faces.replace``); the pipeline's QA gate judges its candidates like any other.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from .. import blend
from ..choice import PatientContext, candidates
from ..detect import Face
from ..masks import FaceMasks
from ..pool import Pool, Surrogate
from ..replace import Candidate, ReplacementBackend
from .data import IDENTITY_FRAME, Frame, to_aligned, to_rgb8, to_tensor, warp_into_frame
from .encoder import Encoder, load_encoder
from .generators import FaceGenerator, open_generator, sha256_file
from .registry import DEFAULT_MODELS_DIR, ModelCardError

DEFAULT_ENCODER = DEFAULT_MODELS_DIR / "encoders" / "dcgan-digiface-64" / "encoder.pt"
MAX_CONTEXTS = 4


def roi_to_aligned(
    face: Face, roi: tuple[int, int, int, int], resolution: int, frame: Frame = IDENTITY_FRAME
) -> np.ndarray:
    """2x3 map from region-of-interest pixels into the generator's aligned frame."""
    m = to_aligned(face, resolution, frame)
    shift = np.array([[1.0, 0, roi[0]], [0, 1.0, roi[1]], [0, 0, 1.0]])
    return m @ shift


def context_seed(ctx: PatientContext, index: int) -> int:
    """The generator code's seed for this patient's ``index``-th context: keyed, so stable per
    patient across photos and machines that share the site key, and unguessable without it."""
    return int.from_bytes(ctx.key.digest("gan-context", f"{ctx.pseudonym}\x00{index}")[:8], "little") >> 1


class GanBackend(ReplacementBackend):
    """Area-preserving GAN inversion behind the pipeline's backend interface."""

    name = "gan"
    for_routes = True

    def __init__(
        self,
        generator: FaceGenerator,
        encoder: Encoder,
        device: torch.device | str = "cpu",
        pool: Pool | None = None,
        max_candidates: int = MAX_CONTEXTS,
        info: dict[str, Any] | None = None,
    ) -> None:
        if encoder.latent_dim != generator.latent_dim or encoder.resolution != generator.resolution:
            raise ModelCardError(
                f"the encoder maps {encoder.resolution}px images to {encoder.latent_dim} numbers, "
                f"the generator {generator.name} expects {generator.latent_dim} and makes "
                f"{generator.resolution}px"
            )
        self.device = torch.device(device)
        self.generator = generator.to(self.device)
        self.encoder = encoder.to(self.device).eval()
        self.pool = pool
        self.max_candidates = max_candidates
        self.info = {"generator": generator.name, **(info or {})}

    # --- contexts ---------------------------------------------------------------------

    def contexts(self, ctx: PatientContext) -> Iterator[tuple[torch.Tensor, dict[str, Any]]]:
        """Context faces in the aligned frame, ``(3, R, R)`` in [-1, 1], best first."""
        r = self.generator.resolution
        if self.pool is not None:
            # One photo a person, the best-matched: each context should be another identity.
            people: dict[str, Surrogate] = {}
            for surrogate in candidates(self.pool, ctx):
                people.setdefault(surrogate.person, surrogate)
            for surrogate in list(people.values())[: self.max_candidates]:
                fake = Face(box=np.zeros(4), landmarks=surrogate.landmarks, score=1.0)
                m = to_aligned(fake, r, self.generator.frame)
                aligned = warp_into_frame(surrogate.image, m, r)
                yield to_tensor(aligned), {"context": "pool", "surrogate": surrogate.id}
            return
        for index in range(self.max_candidates):
            rng = torch.Generator().manual_seed(context_seed(ctx, index))
            with torch.no_grad():
                face = self.generator(self.generator.sample_latent(1, rng))[0].cpu()
            yield face, {"context": "generator", "index": index}

    # --- one rendering ----------------------------------------------------------------

    @torch.no_grad()
    def invert(self, patient: torch.Tensor, mask: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """G(E(merged)) for one aligned patient crop, its preserved mask and a context face."""
        merged = mask * patient + (1 - mask) * context
        batch = merged[None].to(self.device)
        return self.generator(self.encoder(batch))[0].clamp(-1, 1).cpu()

    def render(self, frame: np.ndarray, face: Face, masks: FaceMasks, context: torch.Tensor) -> np.ndarray:
        """New pixels (uint8) for ``masks.roi`` of ``frame``."""
        x0, y0, x1, y1 = masks.roi
        patient_roi = frame[y0:y1, x0:x1]
        r = self.generator.resolution
        m = roi_to_aligned(face, masks.roi, r, self.generator.frame)
        patient = to_tensor(warp_into_frame(patient_roi, m, r))
        coverage = warp_into_frame(masks.preserved.astype(np.float32), m, r, border=cv2.BORDER_CONSTANT)
        mask = torch.from_numpy((coverage > 0.5).astype(np.float32))[None]
        generated = self.invert(patient, mask, context)
        # Upsample: warp the R x R result back onto the face at its real size.
        back = cv2.warpAffine(
            to_rgb8(generated),
            cv2.invertAffineTransform(m),
            (x1 - x0, y1 - y0),
            flags=cv2.INTER_CUBIC,
            borderMode=cv2.BORDER_REFLECT,
        )
        with torch.inference_mode():
            result = blend.composite(
                blend.to_tensor(patient_roi, self.device),
                blend.to_tensor(back, self.device),
                torch.from_numpy(masks.alpha).to(self.device),
                torch.from_numpy(masks.preserved).to(self.device),
            )
            out = blend.to_uint8(result)
        # Exact by construction, not by the encoder: the preserved pixels are the photo's own.
        out[masks.preserved] = patient_roi[masks.preserved]
        return out

    def candidates(self, ctx: PatientContext) -> list[Candidate]:
        """One candidate per context face, best first; each renders the same way every time it is
        asked (the pipeline renders a screening copy first, then the full photo)."""

        def make(context: torch.Tensor, info: dict[str, Any]) -> Candidate:
            return Candidate(
                {**self.info, **info},
                lambda frame, face, masks: self.render(frame, face, masks, context),
            )

        return [make(context, info) for context, info in self.contexts(ctx)]


def load_backend(
    encoder_path: Path = DEFAULT_ENCODER,
    models_dir: Path = DEFAULT_MODELS_DIR,
    device: torch.device | str = "cpu",
    pool: Pool | None = None,
) -> GanBackend:
    """The backend for a trained encoder; the generator is the one it was trained for."""
    if not encoder_path.is_file():
        raise ModelCardError(
            f"no trained encoder at {encoder_path}; train one with "
            "'dicom-anon train-encoder --generator dcgan-digiface-64 --images DIR'"
        )
    encoder, meta = load_encoder(str(encoder_path), device)
    generator = open_generator(models_dir, meta["generator"], device)
    info = {"encoder_sha256": sha256_file(encoder_path)[:16], "preserve": meta.get("preserve")}
    return GanBackend(generator, encoder, device, pool=pool, info=info)


def create_backend(pool: Pool | None, device: torch.device) -> ReplacementBackend:
    """Factory with the signature of ``dicom_anon.faces.replace.register_method``."""
    try:
        return load_backend(device=device, pool=pool)
    except ModelCardError as exc:
        raise ValueError(f"the gan method is not ready: {exc}") from None
