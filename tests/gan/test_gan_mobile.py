"""The 1024 px MobileStyleGAN as an invertible generator: its card and its codes (training on its own
samples: tests/lab/training/test_samples.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from gankit import needs_generator

from dicom_anon.faces.gan.generators import open_generator
from dicom_anon.faces.gan.mobile import NAME, MobileGenerator
from dicom_anon.faces.gan.registry import ModelCardError, load_card
from dicom_anon.faces.generator import DIR_ENV

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"


def test_a_wrong_card_or_missing_files_are_a_card_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    card = load_card(MODELS, NAME)
    (tmp_path / "generators").mkdir()
    wrong = card.model_copy(update={"sha256": "0" * 64})
    (tmp_path / "generators" / f"{NAME}.json").write_text(wrong.model_dump_json())
    with pytest.raises(ModelCardError, match="not that of the pinned generator"):
        open_generator(tmp_path, NAME)
    monkeypatch.setenv(DIR_ENV, str(tmp_path))
    with pytest.raises(ModelCardError, match=str(tmp_path)):
        open_generator(MODELS, NAME)


@needs_generator
def test_codes_are_normalised_styles_and_faces_come_at_the_working_size() -> None:
    generator = open_generator(MODELS, NAME)
    assert isinstance(generator, MobileGenerator) and generator.frame == load_card(MODELS, NAME).frame
    codes = generator.sample_latent(256, torch.Generator().manual_seed(0))
    # psi in [0.5, 1] shrinks the spread of the untruncated styles to sqrt(E[psi^2]) = 0.76.
    assert abs(float(codes.std()) - 0.76) < 0.05 and abs(float(codes.mean())) < 0.05
    assert torch.allclose(generator.code(generator.style(codes[:4])), codes[:4], atol=1e-5)
    with torch.no_grad():
        face = generator(codes[:1])
    assert face.shape == (1, 3, 256, 256) and -1.2 < float(face.min()) < float(face.max()) < 1.2
