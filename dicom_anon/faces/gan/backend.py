"""The GAN-inversion identity-replacement backend (``method: gan``).

For one face: align it into the generator's frame; take a context face (the patient's new person
from the route's identity source - the same person the transplant would give - when the pipeline
passes one; else a pool surrogate that suits the patient when a pool is given; else a face drawn
from G with a code keyed by the patient's pseudonym); paste the patient's preserved area onto the
context; encode the merged image with the area-preserving encoder E and generate G(E(merged)) at
G's full resolution (1024 px for the MobileStyleGAN; the encoder works at 256), starting from the
context's own code where it is known; paste the generated face as the transplant pastes a pool face
(``replace.transplant``: warped by the landmarks, relit to the patient's light, blended where both
show skin, the patient's own hair and background kept); and copy the preserved pixels back bit for
bit, so exactness never depends on how well E inverted the area.

The new face is drawn once per candidate, on its first rendering; later renderings (the full photo
after the screening copy, larger ovals) put the same face in place, so a candidate shows the same
person however often it is asked.

It implements the face pipeline's ``ReplacementBackend`` interface
(``dicom_anon.faces.replace``); the pipeline's QA gate judges its candidates like any other.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from ..choice import PatientContext, candidates
from ..detect import Face, landmark_eye_distance
from ..generated import PSI, GeneratedFace
from ..generator import GeneratorUnavailable, get_generator
from ..identities import IdentitySource
from ..masks import FaceMasks, apply
from ..pool import EYE_DISTANCE as POOL_EYE_DISTANCE
from ..pool import Pool, Surrogate, skin_lab
from ..replace import Candidate, ReplacementBackend, transplant
from .encoder import Encoder, load_encoder
from .frame import IDENTITY_FRAME, Frame, to_aligned, to_rgb8, to_tensor, warp_into_frame
from .generators import FaceGenerator, open_generator, sha256_file
from .mobile import MobileGenerator
from .registry import DEFAULT_MODELS_DIR, ModelCardError

ENCODERS = DEFAULT_MODELS_DIR / "encoders"
# The encoder the backend loads: the 1024 px generator's when one is installed, else the DCGAN's.
DEFAULT_ENCODERS = (
    ENCODERS / "mobilestylegan-1024" / "encoder.pt",
    ENCODERS / "dcgan-digiface-64" / "encoder.pt",
)
MAX_CONTEXTS = 4


def roi_to_aligned(
    face: Face, roi: tuple[int, int, int, int], resolution: int, frame: Frame = IDENTITY_FRAME
) -> np.ndarray:
    """2x3 map from region-of-interest pixels into the generator's aligned frame."""
    m = to_aligned(face, resolution, frame)
    shift = np.array([[1.0, 0, roi[0]], [0, 1.0, roi[1]], [0, 0, 1.0]])
    return m @ shift


def generated_surrogate(image: np.ndarray, face: Face, frame: Frame) -> Surrogate:
    """The generated face (RGB, in the generator's aligned frame) as a surrogate photo for
    ``replace.transplant``: its landmarks are the patient's carried into that frame (the encoder
    drew the face where the merged input had it), its skin tone measured on its cheeks. Shrunk
    to the pool's eye distance at most, so its GrabCut costs what a pool face's does."""
    m = to_aligned(face, image.shape[0], frame)
    landmarks = apply(m, face.landmarks)
    scale = min(1.0, POOL_EYE_DISTANCE / landmark_eye_distance(landmarks))
    if scale < 1.0:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        landmarks = landmarks * scale
    moved = Face(box=np.zeros(4), landmarks=landmarks, score=1.0)
    digest = hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()
    return GeneratedFace(
        np.ascontiguousarray(image),
        -1,
        "",
        mouth_open=0.0,
        id=f"gan-{digest[:12]}",
        person=f"gan-{digest[:12]}",
        sha256=digest,
        landmarks=landmarks,
        yaw=0.0,
        skin_lab=skin_lab(image, moved),
        embedding=np.zeros(0, np.float32),
        source="G(E(merged))",
    )


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
        generator: FaceGenerator | MobileGenerator,
        encoder: Encoder,
        device: torch.device | str = "cpu",
        pool: Pool | None = None,
        max_candidates: int = MAX_CONTEXTS,
        info: dict[str, Any] | None = None,
        identities: IdentitySource | None = None,
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
        self.identities = identities
        self.max_candidates = max_candidates
        self.info = {"generator": generator.name, **(info or {})}

    # --- contexts ---------------------------------------------------------------------

    def contexts(
        self, ctx: PatientContext
    ) -> Iterator[tuple[torch.Tensor, dict[str, Any], Surrogate | None, torch.Tensor | None]]:
        """Context faces in the aligned frame, ``(3, R, R)`` in [-1, 1], best first, with what the
        candidate says about them, the person to remember once one passes QA, and the context's
        own code ``(1, latent_dim)`` where it is known (a generated person; a pool photo has none)."""
        r = self.generator.resolution
        if self.identities is not None or self.pool is not None:
            if self.identities is not None:
                chosen = self.identities.people(ctx)
                source = self.identities.name
            else:
                chosen, source = candidates(self.pool, ctx), "pool"
            # One photo a person, the best-matched: each context should be another identity.
            people: dict[str, Surrogate] = {}
            for surrogate in chosen:
                people.setdefault(surrogate.person, surrogate)
            for surrogate in list(people.values())[: self.max_candidates]:
                fake = Face(box=np.zeros(4), landmarks=surrogate.landmarks, score=1.0)
                m = to_aligned(fake, r, self.generator.frame)
                aligned = warp_into_frame(surrogate.image, m, r)
                info = {"context": source, "surrogate": surrogate.id, "person": surrogate.person}
                yield to_tensor(aligned), info, surrogate, self.code_of(surrogate)
            return
        for index in range(self.max_candidates):
            rng = torch.Generator().manual_seed(context_seed(ctx, index))
            with torch.no_grad():
                code = self.generator.sample_latent(1, rng)
                face = self.generator(code)[0].cpu()
            yield face, {"context": "generator", "index": index}, None, code

    def code_of(self, surrogate: Surrogate) -> torch.Tensor | None:
        """The generated person's code in this generator's latent space, when the person came from
        the same generator (its style); ``None`` for a pool photo."""
        style = getattr(surrogate, "style", None)
        if style is None or not isinstance(self.generator, MobileGenerator):
            return None
        return self.generator.code(torch.from_numpy(style)[None].to(self.device))

    # --- one rendering ----------------------------------------------------------------

    @torch.no_grad()
    def invert(
        self,
        patient: torch.Tensor,
        mask: torch.Tensor,
        context: torch.Tensor,
        code: torch.Tensor | None = None,
    ) -> np.ndarray:
        """G(E(merged)) at G's full resolution (RGB uint8) for one aligned patient crop, its
        preserved mask and a context face; with the context's own ``code``,
        G(code + E(merged) - E(context)): the context person, changed by what the patient's area
        changes in the encoder's reading.

        The shipped encoder (two minutes of training) pulls every face towards one average young
        face, so G(E(merged)) alone made different patients look alike. On 48 SFHQ photos
        (docs/gan.md), with E(merged) + t (code - E(context)) swept from E alone (t = 0) to this
        (t = 1), different patients came out apart in 49% / 73% / 88% / 97% of pairs (originals
        97%) at t = 0 / 0.5 / 0.75 / 1, and rank-1 SFace fell from 26% to 3% (chance 2%).
        A better-trained encoder, whose E(context) is the context's code, makes the two the same.
        """
        merged = mask * patient + (1 - mask) * context
        if code is None:
            return to_rgb8(self.generator.full(self.encoder(merged[None].to(self.device)))[0])
        read = self.encoder(torch.stack([merged, context]).to(self.device))
        return to_rgb8(self.generator.full(code.to(self.device) + read[:1] - read[1:])[0])

    def render(
        self,
        frame: np.ndarray,
        face: Face,
        masks: FaceMasks,
        context: torch.Tensor,
        code: torch.Tensor | None,
        drawn: dict[str, Any],
    ) -> np.ndarray:
        """New pixels (uint8) for ``masks.roi`` of ``frame``; ``drawn`` keeps the candidate's face."""
        x0, y0, x1, y1 = masks.roi
        patient_roi = frame[y0:y1, x0:x1]
        if "face" not in drawn:
            r = self.generator.resolution
            m = roi_to_aligned(face, masks.roi, r, self.generator.frame)
            patient = to_tensor(warp_into_frame(patient_roi, m, r))
            coverage = warp_into_frame(masks.preserved.astype(np.float32), m, r, border=cv2.BORDER_CONSTANT)
            mask = torch.from_numpy((coverage > 0.5).astype(np.float32))[None]
            generated = self.invert(patient, mask, context, code)
            drawn["face"] = generated_surrogate(generated, face, self.generator.frame)
        # Pasted as the transplant pastes a pool face: warped by the landmarks, given the patient's
        # light and skin, pinned where both show skin, and where the generated face shows hair or
        # background the patient's own pixels stay (unless the route replaces the surroundings).
        # The colour transfer alone left white blotches on foreheads and halos at the cheeks.
        out = transplant(frame, face, masks, drawn["face"], self.device)
        # Exact by construction, not by the encoder: the preserved pixels are the photo's own.
        out[masks.preserved] = patient_roi[masks.preserved]
        return out

    def candidates(self, ctx: PatientContext) -> list[Candidate]:
        """One candidate per context face, best first; each shows the same face every time it is
        rendered (the pipeline renders a screening copy first, then the full photo)."""

        def make(
            context: torch.Tensor,
            info: dict[str, Any],
            surrogate: Surrogate | None,
            code: torch.Tensor | None,
        ) -> Candidate:
            drawn: dict[str, Any] = {}
            return Candidate(
                {**self.info, **info},
                lambda frame, face, masks: self.render(frame, face, masks, context, code, drawn),
                surrogate=surrogate,
            )

        return [make(*c) for c in self.contexts(ctx)]


def load_backend(
    encoder_path: Path | None = None,
    models_dir: Path = DEFAULT_MODELS_DIR,
    device: torch.device | str = "cpu",
    pool: Pool | None = None,
    identities: IdentitySource | None = None,
) -> GanBackend:
    """The backend for a trained encoder (default: the first of ``DEFAULT_ENCODERS`` present); the
    generator is the one it was trained for."""
    if encoder_path is None:
        encoder_path = next((p for p in DEFAULT_ENCODERS if p.is_file()), DEFAULT_ENCODERS[-1])
    if not encoder_path.is_file():
        raise ModelCardError(
            f"no trained encoder at {encoder_path}; train one with "
            "'dicom-anon train-encoder --generator mobilestylegan-1024' (on a GPU) or "
            "'--generator dcgan-digiface-64 --images DIR'"
        )
    encoder, meta = load_encoder(str(encoder_path), device)
    generator = open_generator(models_dir, meta["generator"], device)
    if isinstance(generator, MobileGenerator) and torch.device(device).type == "cpu":
        # The identities' OpenVINO engine, compiled once per process; without it torch draws (slower).
        with contextlib.suppress(GeneratorUnavailable):
            generator.engine = get_generator(PSI).engine
    info = {"encoder_sha256": sha256_file(encoder_path)[:16], "preserve": meta.get("preserve")}
    return GanBackend(generator, encoder, device, pool=pool, info=info, identities=identities)


def create_backend(
    pool: Pool | None, device: torch.device, identities: IdentitySource | None = None
) -> ReplacementBackend:
    """Factory with the signature of ``dicom_anon.faces.replace.register_method`` (and the
    identity source the pipeline passes for routes)."""
    try:
        return load_backend(device=device, pool=pool, identities=identities)
    except ModelCardError as exc:
        raise ValueError(f"the gan method is not ready: {exc}") from None
