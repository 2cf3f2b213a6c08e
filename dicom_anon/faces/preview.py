"""A generated face at 256 px for about half a render's time: what a draw's checks read.

A new patient's draw renders about nine faces before one suits (sex, age, skin, pose, glasses,
likeness), and at 0.21 s a 1024 px render on two cores that is most of a first photo's time.
The checks read 32 to 112 px chips, so a 256 px face would do, but the generator has no such
output (the export kept only its last to-RGB layer). So the synthesis network is run up to its
128-wide block (``FEATURES_NODE``, 27% of a render) and this head, trained on the generator's
own renders (``dicom_anon.lab.preview``), turns those features into the face at 256 px. The style
modulates the head's layers as it does the generator's: without it the faces came out in the
wrong colours (skin 5.8 delta E off), since the generator sets colour in its last layers.

The head is ours (``models/generated/preview-head.npz``, float32 arrays, no pickle) and
derived from the generator, so the generator's non-commercial licence applies to it too
(docs/generator-card.md). It is checked against a pinned SHA-256 like the generator's files:
another head would make other choices, and so give new patients other people.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .generator import STYLE_DIM, GeneratorUnavailable

HEAD = Path(__file__).resolve().parents[2] / "models" / "generated" / "preview-head.npz"
HEAD_SHA256 = "c8d13ba7809fa25bbe7dc874f11552eec0b333f6073f392c7743c3f57cbb463d"
# The synthesis network's node whose output the head reads: the 128 x 128 block's activations
# (256 channels), named as in the pinned IR.
FEATURES_NODE = "LeakyRelu_542"
FEATURES = 256
SIDE = 256
WIDTH = 64


class PreviewHead(nn.Module):
    """Features (n, 256, 128, 128) and truncated styles (n, 512) to RGB (n, 3, 256, 256) in
    about [-1, 1]: two convolutions modulated by the style, a skip from the features, and a
    colour bias from the style, each pixel of the features giving a 2 x 2 patch."""

    def __init__(self, width: int = WIDTH) -> None:
        super().__init__()
        self.register_buffer("style_mean", torch.zeros(STYLE_DIM))
        self.register_buffer("style_scale", torch.ones(STYLE_DIM))
        self.a = nn.Conv2d(FEATURES, width, 1)
        self.b = nn.Conv2d(width, width, 3, padding=1)
        self.c = nn.Conv2d(width, 12, 3, padding=1)
        self.skip = nn.Conv2d(FEATURES, 12, 1)
        self.mod_a = nn.Linear(STYLE_DIM, width)
        self.mod_b = nn.Linear(STYLE_DIM, width)
        self.colour = nn.Linear(STYLE_DIM, 12)
        # Unmodulated at the start of training; the modulation is bounded (tanh), unbounded it diverged.
        for m in (self.mod_a, self.mod_b, self.colour):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, features: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
        z = (styles - self.style_mean) / self.style_scale
        h = F.leaky_relu(self.a(features) * (1 + torch.tanh(self.mod_a(z)))[:, :, None, None], 0.2)
        h = F.leaky_relu(self.b(h) * (1 + torch.tanh(self.mod_b(z)))[:, :, None, None], 0.2)
        out = self.c(h) + self.skip(features) + self.colour(z)[:, :, None, None]
        return F.pixel_shuffle(out, 2)


def save(head: PreviewHead, path: Path) -> str:
    """Write the head's arrays (``np.savez``, no pickle); returns the file's SHA-256 to pin."""
    arrays = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in head.state_dict().items()}
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load(path: Path = HEAD, sha256: str | None = None) -> PreviewHead:
    """The pinned head; ``GeneratorUnavailable`` (a route's photos held) when it is missing or
    changed, never another head's choices."""
    want = HEAD_SHA256 if sha256 is None else sha256
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise GeneratorUnavailable(f"{path}: the preview head is unreadable ({exc.strerror})") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != want:
        raise GeneratorUnavailable(f"{path}: checksum {digest[:16]}... is not the pinned preview head's")
    with np.load(io.BytesIO(data)) as arrays:
        state = {k: torch.from_numpy(arrays[k]) for k in arrays.files}
    head = PreviewHead(state["a.weight"].shape[0])
    head.load_state_dict(state)
    return head.eval()


@torch.no_grad()
def faces(head: PreviewHead, features: np.ndarray, styles: np.ndarray) -> np.ndarray:
    """(n, 256, 256, 3) uint8 RGB previews, rounded as ``FaceGenerator.faces`` rounds renders."""
    x = head(
        torch.from_numpy(np.ascontiguousarray(features, np.float32)),
        torch.from_numpy(np.ascontiguousarray(styles, np.float32)),
    )
    rgb = x.numpy().transpose(0, 2, 3, 1)
    return np.clip((rgb + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
