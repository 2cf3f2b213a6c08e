"""Generators: the packaged DCGAN's real weights draw faces; StyleGAN2 keeps rosinality's layout."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import cv2
import pytest
import torch

from dicom_anon.faces.gan.frame import to_rgb8
from dicom_anon.faces.gan.generators import (
    DCGAN,
    FaceGenerator,
    StyleGAN2,
    Upsample,
    load_generator,
    measure_frame,
    open_generator,
    sha256_file,
)
from dicom_anon.faces.gan.registry import GeneratorCard, ModelCardError, read_card, weights_path

MODELS = Path(__file__).resolve().parents[2] / "models"
DCGAN_NAME = "dcgan-digiface-64"

needs_package = pytest.mark.skipif(
    importlib.util.find_spec("gan_face_generate") is None, reason="gan-face-generate is not installed"
)


def _faces_found(images: torch.Tensor) -> int:
    from dicom_anon.faces.detect import get_detector

    big = [cv2.resize(to_rgb8(img), (256, 256), interpolation=cv2.INTER_CUBIC) for img in images]
    return sum(1 for faces in get_detector("cpu").detect(big) if faces)


@needs_package
def test_packaged_dcgan_weights_load_and_draw_64x64_faces() -> None:
    generator = open_generator(MODELS, DCGAN_NAME)
    with torch.no_grad():
        images = generator(generator.sample_latent(8, torch.Generator().manual_seed(0)))
    assert images.shape == (8, 3, 64, 64)
    assert images.min() >= -1 and images.max() <= 1
    assert (images[0] - images[1]).abs().mean() > 0.05  # different codes, different faces
    assert _faces_found(images) >= 7


@needs_package
def test_random_dcgan_weights_draw_no_faces_so_the_face_check_means_something() -> None:
    torch.manual_seed(0)
    generator = FaceGenerator(DCGAN(), read_card(MODELS / "generators" / f"{DCGAN_NAME}.json"))
    with torch.no_grad():
        images = generator(generator.sample_latent(8, torch.Generator().manual_seed(0)))
    assert _faces_found(images) <= 1


@needs_package
def test_dcgan_card_points_at_the_installed_package_and_states_the_licence() -> None:
    card = read_card(MODELS / "generators" / f"{DCGAN_NAME}.json")
    path = weights_path(MODELS, card)
    assert path.name == "weights.tar" and "gan_face_generate" in path.parts
    assert sha256_file(path) == card.sha256
    assert "MIT" in card.licence and "non-commercial" in card.licence


def test_a_weights_file_with_another_checksum_is_refused(
    tmp_path: Path, make_card: Callable[..., GeneratorCard]
) -> None:
    path = tmp_path / "tiny.pt"
    torch.save(DCGAN(nz=4, ngf=8).state_dict(), path)
    with pytest.raises(ModelCardError, match="SHA-256"):
        load_generator(make_card(), path)


def test_weights_of_another_layout_are_refused_with_the_card_name(
    tmp_path: Path, make_card: Callable[..., GeneratorCard]
) -> None:
    path = tmp_path / "tiny.pt"
    torch.save(DCGAN(nz=4, ngf=4).state_dict(), path)  # narrower than the card's ngf=8
    with pytest.raises(ModelCardError, match="tiny-dcgan: weights do not fit the dcgan layout"):
        load_generator(make_card(sha256=sha256_file(path)), path)


def _small_stylegan(**kw: int) -> StyleGAN2:
    torch.manual_seed(0)
    return StyleGAN2(size=32, style_dim=32, n_mlp=2, channel_multiplier=1, max_channels=16, **kw)


def test_stylegan2_forward_pass_shapes_with_random_weights() -> None:
    net = _small_stylegan()
    w = net.mapping(torch.randn(2, 32))
    assert w.shape == (2, 32)
    with torch.no_grad():
        out = net(w)
        per_layer = net(w[:, None].expand(-1, net.n_latent, -1))  # W+ codes give the same image
    assert out.shape == (2, 3, 32, 32)
    assert torch.allclose(out, per_layer)
    assert net.n_latent == 8 and net.num_layers == 7


def test_stylegan2_is_deterministic_per_code_so_a_patient_keeps_one_face() -> None:
    net = _small_stylegan()
    w = net.mapping(torch.randn(1, 32))
    with torch.no_grad():
        assert torch.equal(net(w), net(w))


def test_stylegan2_upsampling_keeps_a_flat_image_flat() -> None:
    flat = torch.full((1, 3, 8, 8), 0.7)
    up = Upsample((1, 3, 3, 1))(flat)
    assert up.shape == (1, 3, 16, 16)
    assert torch.allclose(up[..., 2:-2, 2:-2], flat[..., :1, :1].expand(1, 3, 12, 12), atol=1e-6)


def test_stylegan2_state_dict_has_rosinality_keys_and_shapes() -> None:
    # Built on the meta device: the config-f 256 generator's layout without allocating 30M weights.
    with torch.device("meta"):
        state = StyleGAN2(size=256, style_dim=512, n_mlp=8, channel_multiplier=2).state_dict()
    expected = {
        "style.1.weight": (512, 512),
        "style.8.bias": (512,),
        "input.input": (1, 512, 4, 4),
        "conv1.conv.weight": (1, 512, 512, 3, 3),
        "conv1.conv.modulation.weight": (512, 512),
        "conv1.noise.weight": (1,),
        "conv1.activate.bias": (512,),
        "to_rgb1.conv.weight": (1, 3, 512, 1, 1),
        "to_rgb1.bias": (1, 3, 1, 1),
        "convs.0.conv.blur.kernel": (4, 4),
        "convs.8.conv.weight": (1, 256, 512, 3, 3),
        "convs.11.conv.weight": (1, 128, 128, 3, 3),
        "to_rgbs.0.upsample.kernel": (4, 4),
        "to_rgbs.5.conv.weight": (1, 3, 128, 1, 1),
        "noises.noise_0": (1, 1, 4, 4),
        "noises.noise_12": (1, 1, 256, 256),
    }
    assert {k: tuple(state[k].shape) for k in expected} == expected
    assert "noises.noise_13" not in state and "style.9.weight" not in state


def test_a_rosinality_checkpoint_loads_through_its_card(
    tmp_path: Path, make_card: Callable[..., GeneratorCard]
) -> None:
    net = _small_stylegan()
    path = tmp_path / "g.pt"
    torch.save({"g_ema": net.state_dict(), "latent_avg": torch.zeros(32)}, path)
    card = make_card(
        name="tiny-stylegan2",
        architecture="stylegan2",
        resolution=32,
        latent_dim=32,
        latent_space="w",
        params={"n_mlp": 2, "channel_multiplier": 1, "max_channels": 16},
        state_key="g_ema",
        sha256=sha256_file(path),
    )
    generator = load_generator(card, path)
    w = generator.sample_latent(2, torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(generator(w), net(w))
    assert generator(w).shape == (2, 3, 32, 32)


def test_a_checkpoint_without_the_named_entry_is_refused(
    tmp_path: Path, make_card: Callable[..., GeneratorCard]
) -> None:
    path = tmp_path / "g.pt"
    torch.save({"g": _small_stylegan().state_dict()}, path)
    card = make_card(
        name="tiny-stylegan2",
        architecture="stylegan2",
        resolution=32,
        latent_dim=32,
        latent_space="w",
        params={"n_mlp": 2, "channel_multiplier": 1, "max_channels": 16},
        state_key="g_ema",
        sha256=sha256_file(path),
    )
    with pytest.raises(ModelCardError, match="no 'g_ema' entry"):
        load_generator(card, path)


@needs_package
def test_the_dcgan_draws_faces_in_the_arcface_frame_its_card_declares() -> None:
    generator = open_generator(MODELS, DCGAN_NAME)
    (scale, dx, dy), found = measure_frame(generator, samples=8)
    assert found >= 7
    assert generator.card.frame == (1.0, 0.0, 0.0)
    # Within 5% in size and 4 template units (about 2 px at 64x64) of the declared frame.
    assert abs(scale - 1.0) < 0.05 and abs(dx) < 4 and abs(dy) < 4
