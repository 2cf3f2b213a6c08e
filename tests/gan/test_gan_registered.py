"""`method: gan` and `eval --method gan` reach the GAN backend through the face pipeline's registry."""

from __future__ import annotations

import torch

from dicom_anon.faces.gan.backend import GanBackend
from dicom_anon.faces.gan.mobile import MobileGenerator
from dicom_anon.faces.replace import make_backend, methods


def test_gan_is_a_method():
    assert "gan" in methods()


def test_gan_backend_loads_the_shipped_encoder_for_the_1024px_generator():
    backend = make_backend("gan", None, torch.device("cpu"))
    assert isinstance(backend, GanBackend) and isinstance(backend.generator, MobileGenerator)
    assert backend.info["generator"] == "mobilestylegan-1024" and backend.encoder.resolution == 256
    # On the CPU the 1024 px face is drawn by the identities' OpenVINO engine, not torch.
    assert backend.generator.engine is not None


def test_a_generated_context_keeps_more_of_its_person_through_the_inversion():
    """With the context's own code the output is drawn nearer that person than E alone draws it
    (the shipped encoder pulls every face towards one average face)."""
    from dicom_anon.faces.gan.frame import to_rgb8
    from dicom_anon.lab.training.samples import generator_mouth_masks

    backend = make_backend("gan", None, torch.device("cpu"))
    g = backend.generator
    rng = torch.Generator().manual_seed(3)
    codes = g.sample_latent(2, rng)
    with torch.no_grad():
        faces = g(codes)
    mask = generator_mouth_masks(g, 1, rng)[0]
    person = to_rgb8(g.full(codes[1:])[0]).astype(float)
    plain = backend.invert(faces[0], mask, faces[1]).astype(float)
    kept = backend.invert(faces[0], mask, faces[1], codes[1:]).astype(float)
    assert ((kept - person) ** 2).mean() < 0.7 * ((plain - person) ** 2).mean()


def test_a_generated_persons_code_is_the_style_that_drew_them():
    from types import SimpleNamespace

    import numpy as np

    backend = make_backend("gan", None, torch.device("cpu"))
    style = backend.generator.style(backend.generator.sample_latent(1, torch.Generator().manual_seed(1)))
    surrogate = SimpleNamespace(style=style[0].numpy().astype(np.float32))
    code = backend.code_of(surrogate)
    assert code is not None and torch.allclose(backend.generator.style(code), style, atol=1e-4)
    assert backend.code_of(SimpleNamespace()) is None  # a pool photo: no code


def test_the_generated_face_takes_the_patients_light_and_skin(testdata, site_key):
    """Pasted as the transplant pastes: a dark-skinned patient's new face is as dark as their own.
    With the old colour transfer and unscreened membrane, these faces came out 5 to 18 L* lighter on
    average (a white forehead, a glow at the cheek); now within 2."""
    import cv2
    import numpy as np
    from PIL import Image

    from dicom_anon.faces import masks as M
    from dicom_anon.faces.choice import PatientContext
    from dicom_anon.faces.detect import get_detector
    from dicom_anon.faces.gan.backend import load_backend
    from dicom_anon.faces.pool import get_pool

    backend = load_backend(pool=get_pool())
    for stem in ("SFHQ_sample_3x6_014", "SFHQ_sample_2x4_009"):
        rgb = np.asarray(Image.open(testdata / "faces" / "sfhq" / f"{stem}.jpg").convert("RGB"))
        face = get_detector().detect([rgb])[0][0]
        fm = M.build(face, rgb.shape, [M.Preset.MOUTH])
        x0, y0, x1, y1 = fm.roi
        core = (fm.alpha > 0.99) & ~fm.preserved
        before = cv2.cvtColor(rgb[y0:y1, x0:x1], cv2.COLOR_RGB2LAB)[core][:, 0].astype(float)
        for candidate in backend.candidates(PatientContext(pseudonym="P-1", key=site_key))[:2]:
            out = candidate.render(rgb, face, fm)
            after = cv2.cvtColor(out, cv2.COLOR_RGB2LAB)[core][:, 0].astype(float)
            # OpenCV's 8-bit L runs 0-255: 8 levels are about 3 L*.
            assert abs(after.mean() - before.mean()) < 8, (stem, candidate.info["person"])
