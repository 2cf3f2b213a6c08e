"""The encoder's training loss, one named function per term.

    L = latent(z, E(G(z))) + lambda_area * area(x, G(E(x)), mask) + lambda_rec * reconstruction(x, G(E(x)))

The latent term teaches E to invert G on codes G can draw; the reconstruction term makes G(E(x))
look like the input overall; the area term, the published method's contribution, puts extra
weight on the preserved area (the mouth) so that it survives the inversion.
All terms are mean squared errors, so their scales are comparable and lambda weights mean
the same thing across image sizes and mask sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def latent_loss(z: Tensor, z_hat: Tensor) -> Tensor:
    """Mean squared distance between sampled codes and the encoder's estimate of them."""
    return torch.mean((z - z_hat) ** 2)


def area_loss(x: Tensor, x_hat: Tensor, mask: Tensor) -> Tensor:
    """Mean squared pixel error inside the preserved area only.

    ``mask`` is ``(N, 1, H, W)`` with 1 on preserved pixels (soft values weight them). The sum
    is divided by the mask's own area, so a small mouth counts as much as a large one and pixels
    outside it cannot lower or raise the loss.
    """
    weight = mask.expand_as(x)
    return torch.sum(weight * (x - x_hat) ** 2) / weight.sum().clamp_min(1e-8)


def reconstruction_loss(x: Tensor, x_hat: Tensor) -> Tensor:
    """Mean squared pixel error over the whole image."""
    return torch.mean((x - x_hat) ** 2)


@dataclass(frozen=True)
class LossTerms:
    latent: Tensor
    area: Tensor
    rec: Tensor
    total: Tensor

    def as_floats(self) -> dict[str, float]:
        return {k: float(v.detach()) for k, v in vars(self).items()}


def encoder_loss(
    z: Tensor,
    z_hat: Tensor,
    x: Tensor,
    x_hat: Tensor,
    mask: Tensor,
    lambda_area: float,
    lambda_rec: float,
) -> LossTerms:
    """The weighted sum above, with each term kept for logging."""
    lat = latent_loss(z, z_hat)
    area = area_loss(x, x_hat, mask)
    rec = reconstruction_loss(x, x_hat)
    return LossTerms(lat, area, rec, lat + lambda_area * area + lambda_rec * rec)
