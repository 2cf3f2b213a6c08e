"""Face generators the GAN-inversion backend can invert, and loaders for their weights.

Two architectures:

* ``dcgan``: the 64x64 DCGAN of the PyTorch tutorial, whose trained weights ship inside the
  ``gan-face-generate`` package (``weights.tar``, trained on DigiFace-1M). The weights are read
  from the installed package at run time; nothing is downloaded.
* ``stylegan2``: the StyleGAN2 generator in the state-dict layout of rosinality's
  ``stylegan2-pytorch`` (``ckpt["g_ema"]``), the layout most PyTorch ports and converters of
  NVIDIA's official pickles produce. Sites that hold such weights install them with
  ``dicom-anon models install FILE --kind generator`` (see docs/gan.md for the conversion).

Both are wrapped in :class:`FaceGenerator`, which gives the encoder and the backend one contract:
codes of ``latent_dim`` numbers in, RGB images in [-1, 1] at ``resolution`` out.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .registry import GeneratorCard, ModelCardError, load_card, weights_path

if TYPE_CHECKING:
    from .mobile import MobileGenerator

# --------------------------------------------------------------------------- DCGAN


class DCGAN(nn.Module):
    """The DCGAN generator, module for module as in ``gan_face_generate.models.Generator``.

    Re-declared here (rather than imported) so the architecture can be built small for tests and
    without the package installed; the layer order, and therefore every state-dict key, is the
    same, and loading the package's weights with ``strict=True`` proves it.
    """

    def __init__(self, nz: int = 100, ngf: int = 64, nc: int = 3) -> None:
        super().__init__()
        self.nz = nz

        def up(cin: int, cout: int, stride: int, pad: int) -> list[nn.Module]:
            return [
                nn.ConvTranspose2d(cin, cout, 4, stride, pad, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(True),
            ]

        self.main = nn.Sequential(
            *up(nz, ngf * 8, 1, 0),  # 4x4
            *up(ngf * 8, ngf * 4, 2, 1),  # 8x8
            *up(ngf * 4, ngf * 2, 2, 1),  # 16x16
            *up(ngf * 2, ngf, 2, 1),  # 32x32
            nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False),  # 64x64
            nn.Tanh(),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.main(z.view(z.shape[0], self.nz, 1, 1))


# --------------------------------------------------------------------------- StyleGAN2
# Pure-PyTorch equivalents of rosinality's custom CUDA ops (upfirdn2d, fused_leaky_relu), so the
# generator runs on CPU and on any CUDA without compiling extensions. Module and parameter names
# follow rosinality's model.py exactly, so its ``g_ema`` state dict loads with strict=True.


def _blur_kernel(taps: Sequence[float]) -> Tensor:
    k = torch.tensor(taps, dtype=torch.float32)
    k = k[None, :] * k[:, None]
    return k / k.sum()


def _upfirdn2d(x: Tensor, kernel: Tensor, up: int, pad: tuple[int, int]) -> Tensor:
    """Upsample by zero insertion, pad, and FIR-filter each channel (rosinality's upfirdn2d,
    restricted to the non-negative pads and down=1 the generator uses)."""
    n, c, h, w = x.shape
    if up > 1:
        z = x.new_zeros(n, c, h * up, w * up)
        z[:, :, ::up, ::up] = x
        x = z
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    weight = torch.flip(kernel, [0, 1]).to(x.dtype)[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(x, weight, groups=c)


def _fused_leaky_relu(x: Tensor, bias: Tensor) -> Tensor:
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return F.leaky_relu(x + bias.view(shape), 0.2) * math.sqrt(2)


class PixelNorm(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(torch.mean(x**2, dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with StyleGAN's equalised learning rate (weights scaled at run time)."""

    def __init__(
        self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0, activate: bool = False
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.zeros(out_dim).fill_(bias_init))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activate = activate

    def forward(self, x: Tensor) -> Tensor:
        if self.activate:
            return _fused_leaky_relu(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        return F.linear(x, self.weight * self.scale, bias=self.bias * self.lr_mul)


class Blur(nn.Module):
    def __init__(self, taps: Sequence[float], pad: tuple[int, int], upsample_factor: int = 1) -> None:
        super().__init__()
        self.register_buffer("kernel", _blur_kernel(taps) * upsample_factor**2)
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        return _upfirdn2d(x, self.kernel, 1, self.pad)


class Upsample(nn.Module):
    def __init__(self, taps: Sequence[float], factor: int = 2) -> None:
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", _blur_kernel(taps) * factor**2)
        p = len(taps) - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: Tensor) -> Tensor:
        return _upfirdn2d(x, self.kernel, self.factor, self.pad)


class ModulatedConv2d(nn.Module):
    """Style-modulated convolution, computed as one grouped convolution over the batch."""

    def __init__(
        self,
        in_channel: int,
        out_channel: int,
        kernel_size: int,
        style_dim: int,
        demodulate: bool = True,
        upsample: bool = False,
        blur_taps: Sequence[float] = (1, 3, 3, 1),
    ) -> None:
        super().__init__()
        self.in_channel, self.out_channel, self.kernel_size = in_channel, out_channel, kernel_size
        self.upsample = upsample
        if upsample:
            p = (len(blur_taps) - 2) - (kernel_size - 1)
            self.blur = Blur(blur_taps, pad=((p + 1) // 2 + 1, p // 2 + 1), upsample_factor=2)
        self.scale = 1 / math.sqrt(in_channel * kernel_size**2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1)
        self.demodulate = demodulate

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        batch, cin, h, w = x.shape
        k = self.kernel_size
        style = self.modulation(style).view(batch, 1, cin, 1, 1)
        weight = self.scale * self.weight * style
        if self.demodulate:
            demod = torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8)
            weight = weight * demod.view(batch, self.out_channel, 1, 1, 1)
        x = x.reshape(1, batch * cin, h, w)
        if self.upsample:
            weight = weight.transpose(1, 2).reshape(batch * cin, self.out_channel, k, k)
            out = F.conv_transpose2d(x, weight, padding=0, stride=2, groups=batch)
            out = self.blur(out.view(batch, self.out_channel, out.shape[-2], out.shape[-1]))
            return out
        weight = weight.view(batch * self.out_channel, cin, k, k)
        out = F.conv2d(x, weight, padding=self.padding, groups=batch)
        return out.view(batch, self.out_channel, out.shape[-2], out.shape[-1])


class NoiseInjection(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, image: Tensor, noise: Tensor) -> Tensor:
        return image + self.weight * noise


class FusedLeakyReLU(nn.Module):
    def __init__(self, channel: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channel))

    def forward(self, x: Tensor) -> Tensor:
        return _fused_leaky_relu(x, self.bias)


class ConstantInput(nn.Module):
    def __init__(self, channel: int, size: int = 4) -> None:
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channel, size, size))

    def forward(self, batch: int) -> Tensor:
        return self.input.repeat(batch, 1, 1, 1)


class StyledConv(nn.Module):
    def __init__(self, cin: int, cout: int, style_dim: int, upsample: bool = False) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(cin, cout, 3, style_dim, upsample=upsample)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(cout)

    def forward(self, x: Tensor, style: Tensor, noise: Tensor) -> Tensor:
        return self.activate(self.noise(self.conv(x, style), noise))


class ToRGB(nn.Module):
    def __init__(self, cin: int, style_dim: int, upsample: bool = True) -> None:
        super().__init__()
        if upsample:
            self.upsample = Upsample((1, 3, 3, 1))
        self.conv = ModulatedConv2d(cin, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: Tensor, style: Tensor, skip: Tensor | None = None) -> Tensor:
        out = self.conv(x, style) + self.bias
        return out if skip is None else out + self.upsample(skip)


def stylegan2_channels(channel_multiplier: int = 2, max_channels: int = 512) -> dict[int, int]:
    """Feature maps per resolution, as in rosinality's Generator (``max_channels`` < 512 only
    for small test models; real checkpoints use the default)."""
    table = {4: 512, 8: 512, 16: 512, 32: 512}
    table.update({64 * 2**i: (256 >> i) * channel_multiplier for i in range(5)})
    return {res: min(ch, max_channels) for res, ch in table.items()}


class StyleGAN2(nn.Module):
    """StyleGAN2 generator (config-e/f) with rosinality's module names.

    ``forward`` takes codes in W (``style_dim`` numbers, the output of the mapping network) and
    uses the stored noise buffers, so one code gives one image: the backend needs that to be
    deterministic per patient.
    """

    def __init__(
        self,
        size: int,
        style_dim: int = 512,
        n_mlp: int = 8,
        channel_multiplier: int = 2,
        lr_mlp: float = 0.01,
        max_channels: int = 512,
    ) -> None:
        super().__init__()
        if size < 8 or size & (size - 1):
            raise ValueError(f"StyleGAN2 size must be a power of two >= 8, not {size}")
        self.size, self.style_dim = size, style_dim
        self.style = nn.Sequential(
            PixelNorm(),
            *(EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activate=True) for _ in range(n_mlp)),
        )
        ch = stylegan2_channels(channel_multiplier, max_channels)
        self.input = ConstantInput(ch[4])
        self.conv1 = StyledConv(ch[4], ch[4], style_dim)
        self.to_rgb1 = ToRGB(ch[4], style_dim, upsample=False)
        self.log_size = int(math.log2(size))
        self.num_layers = (self.log_size - 2) * 2 + 1
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for idx in range(self.num_layers):
            res = 2 ** ((idx + 5) // 2)
            self.noises.register_buffer(f"noise_{idx}", torch.randn(1, 1, res, res))
        cin = ch[4]
        for i in range(3, self.log_size + 1):
            cout = ch[2**i]
            self.convs.append(StyledConv(cin, cout, style_dim, upsample=True))
            self.convs.append(StyledConv(cout, cout, style_dim))
            self.to_rgbs.append(ToRGB(cout, style_dim))
            cin = cout
        self.n_latent = self.log_size * 2 - 2

    def mapping(self, z: Tensor) -> Tensor:
        return self.style(z)

    def forward(self, w: Tensor) -> Tensor:
        latent = w.unsqueeze(1).expand(-1, self.n_latent, -1) if w.ndim == 2 else w
        noise = [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]
        out = self.conv1(self.input(latent.shape[0]), latent[:, 0], noise[0])
        skip = self.to_rgb1(out, latent[:, 1])
        i = 1
        for conv_up, conv, n1, n2, to_rgb in zip(
            self.convs[::2], self.convs[1::2], noise[1::2], noise[2::2], self.to_rgbs, strict=True
        ):
            out = conv_up(out, latent[:, i], n1)
            out = conv(out, latent[:, i + 1], n2)
            skip = to_rgb(out, latent[:, i + 2], skip)
            i += 2
        return skip


# --------------------------------------------------------------------------- common contract


class FaceGenerator(nn.Module):
    """A frozen generator with the contract the encoder and backend rely on.

    ``latent_dim`` numbers per code in, ``(N, 3, resolution, resolution)`` images out, nominally
    in [-1, 1] (StyleGAN2 can overshoot; callers clamp when they make pixels).
    ``sample_latent`` draws codes from the generator's prior in the space the encoder inverts
    into (Z for the DCGAN, W for StyleGAN2: the latent loss compares codes in that space).
    """

    def __init__(self, net: nn.Module, card: GeneratorCard) -> None:
        super().__init__()
        self.net = net
        self.card = card
        self.resolution = card.resolution
        self.latent_dim = card.latent_dim
        self.latent_space = card.latent_space
        self.net.eval()
        self.net.requires_grad_(False)

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def frame(self) -> tuple[float, float, float]:
        return self.card.frame

    def train(self, mode: bool = True) -> FaceGenerator:
        """Stay in eval mode: the DCGAN's batch norm must use its trained running statistics."""
        return super().train(False)

    @torch.no_grad()
    def sample_latent(self, n: int, rng: torch.Generator) -> Tensor:
        z = torch.randn(n, self.latent_dim, generator=rng).to(self._device())
        if self.latent_space == "w":
            return self.net.mapping(z)
        return z

    def forward(self, latent: Tensor) -> Tensor:
        return self.net(latent)

    def full(self, latent: Tensor) -> Tensor:
        """The image at the generator's own resolution: here the same as ``forward``."""
        return self.net(latent)

    def _device(self) -> torch.device:
        return next(self.net.parameters()).device


def build_network(card: GeneratorCard) -> nn.Module:
    """An untrained network with the architecture and hyper-parameters the card names."""
    params: dict[str, Any] = dict(card.params)
    try:
        if card.architecture == "dcgan":
            net: nn.Module = DCGAN(nz=card.latent_dim, **params)
            expected = 64
        else:
            net = StyleGAN2(size=card.resolution, style_dim=card.latent_dim, **params)
            expected = card.resolution
    except (TypeError, ValueError) as exc:
        raise ModelCardError(
            f"{card.name}: the card's {card.architecture} parameters do not fit: {exc}"
        ) from None
    if card.resolution != expected:
        raise ModelCardError(f"{card.name}: a DCGAN makes 64x64 images, the card says {card.resolution}")
    return net


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def extract_state_dict(checkpoint: Any, card: GeneratorCard) -> dict[str, Tensor]:
    """The generator's state dict inside a checkpoint: ``card.state_key`` names the entry
    (``netG_state_dict`` for gan-face-generate, ``g_ema`` for rosinality); a bare state dict
    is accepted when the card names none."""
    if not isinstance(checkpoint, dict):
        raise ModelCardError(f"{card.name}: checkpoint is a {type(checkpoint).__name__}, not a dict")
    if card.state_key is None:
        return checkpoint
    if card.state_key not in checkpoint:
        found = ", ".join(sorted(map(str, checkpoint))[:8])
        raise ModelCardError(f"{card.name}: checkpoint has no '{card.state_key}' entry (found: {found})")
    return checkpoint[card.state_key]


def load_generator(card: GeneratorCard, weights: Path, device: torch.device | str = "cpu") -> FaceGenerator:
    """Build the card's architecture and load its weights, refusing a file whose checksum or
    layout differs from what the card promises (a wrong generator must not run silently)."""
    actual = sha256_file(weights)
    if actual != card.sha256:
        raise ModelCardError(
            f"{card.name}: {weights} has SHA-256 {actual}, the model card says {card.sha256}"
        )
    # weights_only: a checkpoint is data; never let it run code on load.
    checkpoint = torch.load(weights, map_location="cpu", weights_only=True)
    net = build_network(card)
    try:
        net.load_state_dict(extract_state_dict(checkpoint, card), strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ModelCardError(
            f"{card.name}: weights do not fit the {card.architecture} layout: {first}"
        ) from None
    return FaceGenerator(net, card).to(device)


def open_generator(
    models_dir: Path, name: str, device: torch.device | str = "cpu"
) -> FaceGenerator | MobileGenerator:
    """The installed generator called ``name`` (card, weights and checksum all checked)."""
    card = load_card(models_dir, name)
    if card.architecture == "mobilestylegan":
        return open_mobile(card, device)
    return load_generator(card, weights_path(models_dir, card), device)


def open_mobile(card: GeneratorCard, device: torch.device | str = "cpu") -> MobileGenerator:
    """random-face's MobileStyleGAN from the pinned IR files (``generator.model_dir``: the
    installed package or ``$DICOM_ANON_GENERATOR_DIR``); the card adds the frame and sampling."""
    from ..generator import PINNED_SHA256, GeneratorUnavailable
    from .mobile import MobileGenerator

    if card.sha256 != PINNED_SHA256["SynthesisNetwork.bin"]:
        raise ModelCardError(f"{card.name}: the card's sha256 is not that of the pinned generator")
    try:
        return MobileGenerator(card.frame, card.resolution, card.name, device=device, **card.params)
    except (GeneratorUnavailable, TypeError) as exc:
        raise ModelCardError(f"{card.name}: {exc}") from None


def measure_frame(
    generator: FaceGenerator, samples: int = 16, seed: int = 0
) -> tuple[tuple[float, float, float], int]:
    """Where G puts faces: the (scale, dx, dy) carrying the template onto the landmarks MTCNN finds
    on ``samples`` of G's images (median over the faces found), and how many faces were found.

    The encoder's training crops and the backend's alignment must frame faces as G draws them;
    measuring it on G's own output works for any generator without knowing its training crops.
    """
    import cv2
    import numpy as np

    from ..detect import get_detector
    from ..masks import TEMPLATE
    from .frame import TEMPLATE_SIZE, to_rgb8

    with torch.no_grad():
        images = generator(generator.sample_latent(samples, torch.Generator().manual_seed(seed)))
    side = max(256, generator.resolution)  # MTCNN misses faces much smaller than this
    up = side / generator.resolution
    rgb = [cv2.resize(to_rgb8(img), (side, side), interpolation=cv2.INTER_CUBIC) for img in images]
    fits = []
    centred = TEMPLATE - TEMPLATE.mean(0)
    for faces in get_detector(str(next(generator.parameters()).device)).detect(rgb):
        if not faces:
            continue
        # Landmarks in template units of the generator's frame (resolution maps to 112).
        points = faces[0].landmarks / up * (TEMPLATE_SIZE / generator.resolution)
        scale = float((centred * (points - points.mean(0))).sum() / (centred**2).sum())
        dx, dy = points.mean(0) - scale * TEMPLATE.mean(0)
        fits.append((scale, float(dx), float(dy)))
    if not fits:
        return (1.0, 0.0, 0.0), 0
    median = np.median(np.array(fits), axis=0)
    return (round(float(median[0]), 4), round(float(median[1]), 2), round(float(median[2]), 2)), len(fits)
