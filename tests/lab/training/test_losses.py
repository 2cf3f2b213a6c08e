"""Each loss term measures what its name says, and only that."""

from __future__ import annotations

import pytest
import torch

from dicom_anon.lab.training.losses import area_loss, encoder_loss, latent_loss, reconstruction_loss


def _images() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, 10:14, 4:12] = 1.0
    return x, mask


def test_latent_loss_is_zero_for_exact_codes_and_the_mean_squared_distance_otherwise() -> None:
    z = torch.randn(4, 10)
    assert latent_loss(z, z.clone()) == 0
    assert latent_loss(z, z + 0.5).item() == pytest.approx(0.25)


def test_area_loss_ignores_pixels_outside_the_mask() -> None:
    x, mask = _images()
    changed = x.clone()
    changed[mask.expand_as(x) == 0] += 1.0  # every pixel outside the preserved area differs
    assert area_loss(x, changed, mask) == 0
    assert reconstruction_loss(x, changed) > 0


def test_area_loss_is_the_mean_squared_error_inside_the_mask_whatever_its_size() -> None:
    x, mask = _images()
    changed = x.clone()
    changed[mask.expand_as(x) == 1] += 0.5
    assert area_loss(x, changed, mask).item() == pytest.approx(0.25)
    small = torch.zeros_like(mask)
    small[:, :, 11:12, 5:6] = 1.0
    assert area_loss(x, changed, small).item() == pytest.approx(0.25)


def test_reconstruction_loss_counts_every_pixel() -> None:
    x, _ = _images()
    changed = x.clone()
    changed[0, 1, 3, 3] += 2.0
    assert reconstruction_loss(x, changed).item() == pytest.approx(4.0 / x.numel())


def test_encoder_loss_weights_the_terms_by_the_lambdas() -> None:
    x, mask = _images()
    z = torch.randn(2, 8)
    x_hat = x + 0.1
    terms = encoder_loss(z, z + 1.0, x, x_hat, mask, lambda_area=3.0, lambda_rec=0.5)
    expected = terms.latent + 3.0 * terms.area + 0.5 * terms.rec
    assert terms.total.item() == pytest.approx(expected.item())
    assert terms.latent.item() == pytest.approx(1.0)
    assert terms.area.item() == pytest.approx(0.01)
    assert encoder_loss(z, z, x, x_hat, mask, 0.0, 0.0).total == 0
