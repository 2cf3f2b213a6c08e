"""``dicom-anon models install`` through the real CLI (train-encoder: tests/lab/training)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dicom_anon.cli import app
from dicom_anon.faces.gan.generators import StyleGAN2, open_generator, sha256_file
from dicom_anon.faces.gan.registry import read_card

runner = CliRunner()
MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.fixture
def stylegan_file(tmp_path: Path) -> Path:
    """A rosinality-layout checkpoint of a small random StyleGAN2."""
    torch.manual_seed(0)
    net = StyleGAN2(size=16, style_dim=16, n_mlp=2, channel_multiplier=1, max_channels=8)
    path = tmp_path / "download" / "tiny-stylegan.pt"
    path.parent.mkdir()
    torch.save({"g_ema": net.state_dict(), "latent_avg": torch.zeros(16)}, path)
    return path


def _install(path: Path, models: Path, *extra: str, sha: str | None = None) -> object:
    args = [
        "models", "install", str(path), "--kind", "generator", "--name", "tiny-sg2",
        "--sha256", sha or sha256_file(path), "--licence", "test weights, no restrictions",
        "--source", "made by the test", "--resolution", "16", "--latent-dim", "16",
        "--param", "n_mlp=2", "--param", "channel_multiplier=1", "--param", "max_channels=8",
        "--models-dir", str(models), *extra,
    ]  # fmt: skip
    return runner.invoke(app, args)


def test_install_verifies_the_checksum_registers_a_card_and_the_generator_loads(
    stylegan_file: Path, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    result = _install(stylegan_file, models)
    assert result.exit_code == 0, result.output
    card = read_card(models / "generators" / "tiny-sg2.json")
    assert card.sha256 == sha256_file(stylegan_file)
    assert card.licence == "test weights, no restrictions" and card.latent_space == "w"
    # Random weights draw no faces, so the frame is not measured and the install says so.
    assert card.frame == (1.0, 0.0, 0.0) and "found a face in only" in result.output
    assert (models / "generators" / "tiny-sg2.pt").is_file()
    generator = open_generator(models, "tiny-sg2")
    with torch.no_grad():
        assert generator(generator.sample_latent(1, torch.Generator().manual_seed(0))).shape == (1, 3, 16, 16)


def test_install_refuses_a_file_whose_checksum_differs(stylegan_file: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    result = _install(stylegan_file, models, sha="ab" * 32)
    assert result.exit_code == 2
    assert "refusing to install" in result.output
    assert not models.exists()


def test_install_refuses_weights_that_do_not_fit_the_architecture(
    stylegan_file: Path, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    result = _install(stylegan_file, models, "--param", "max_channels=4")
    assert result.exit_code == 2
    assert "do not fit the stylegan2 layout" in result.output
    assert list((models / "generators").iterdir()) == []


def test_install_refuses_a_second_model_of_the_same_name_and_other_kinds(
    stylegan_file: Path, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    assert _install(stylegan_file, models).exit_code == 0
    again = _install(stylegan_file, models)
    assert again.exit_code == 2 and "already installed" in again.output
    other = runner.invoke(
        app, ["models", "install", str(stylegan_file), "--kind", "encoder", "--name", "x", "--sha256", "0",
              "--licence", "x", "--source", "x", "--models-dir", str(models)],
    )  # fmt: skip
    assert other.exit_code == 2 and "only 'generator'" in other.output
