"""Training the area-preserving encoder E for a frozen generator G.

Each step draws, from a random generator seeded by (seed, step) alone:
  * codes z from G's prior: the latent loss ||z - E(G(z))||^2 teaches E to invert G;
  * a batch of aligned face crops x with their preserved-area masks, half of them merged into
    the generated faces G(z) (context outside the mask, patient inside: exactly what the backend
    feeds E), and mirrored at random; the area and whole-image pixel losses compare each input
    with G(E(input)).
Because every step's randomness depends only on (seed, step), a run resumed from a checkpoint
(encoder + Adam state + step) continues exactly as the uninterrupted run would have.

The crops come from a ``FaceSet`` (photos) or, for a generator that draws real-looking people,
from G's own samples (``samples.SampledFaces``: each sample's preserved area merged onto the next
sample). This module imports torch and nothing else outside the standard library, so training
runs on a GPU host that has torch alone (benchmarks/gpu_incontext.py).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor

from ...faces.gan.encoder import Encoder, encoder_from_config
from .losses import LossTerms, encoder_loss

if TYPE_CHECKING:
    from ...faces.gan.generators import FaceGenerator
    from ...faces.gan.mobile import MobileGenerator
    from .facesets import FaceSet

CHECKPOINT = "checkpoint.pt"
ENCODER = "encoder.pt"
LOSSES_CSV = "losses.csv"
LOSSES_PNG = "losses.png"
CSV_FIELDS = ("step", "latent", "area", "rec", "total", "seconds")
# Settings a resumed run may change without becoming a different run.
RESUMABLE_CHANGES = {"steps", "checkpoint_every"}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the result of a run; a resume must match it.

    A dataclass, not a pydantic model, so that training imports nothing but torch; the checks
    pydantic's field bounds made are in ``__post_init__``.
    """

    generator: str
    preserve: list[str] = field(default_factory=lambda: ["mouth"])
    lambda_area: float = 1.0
    lambda_rec: float = 1.0
    steps: int = 1000
    batch_size: int = 16
    lr: float = 5e-4
    seed: int = 0
    merge_fraction: float = 0.5
    width: int = 32
    checkpoint_every: int = 100

    def __post_init__(self) -> None:
        problems = [
            name
            for name, ok in (
                ("lambda_area >= 0", self.lambda_area >= 0),
                ("lambda_rec >= 0", self.lambda_rec >= 0),
                ("steps >= 1", self.steps >= 1),
                ("batch_size >= 1", self.batch_size >= 1),
                ("lr > 0", self.lr > 0),
                ("0 <= merge_fraction <= 1", 0 <= self.merge_fraction <= 1),
                ("width >= 4", self.width >= 4),
                ("checkpoint_every >= 1", self.checkpoint_every >= 1),
            )
            if not ok
        ]
        if problems:
            raise ValueError(f"training settings out of range: {', '.join(problems)}")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resumable_with(self, other: TrainConfig) -> bool:
        """The same run, perhaps with more steps or a different checkpoint interval."""
        return _without_resumable(self.as_dict()) == _without_resumable(other.as_dict())


def _without_resumable(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if k not in RESUMABLE_CHANGES}


class TrainingFaces(Protocol):
    """Where a batch's encoder inputs come from: photos (``facesets.FaceSet``) or G's own samples."""

    def __len__(self) -> int: ...

    def draw(self, generated: Tensor, rng: torch.Generator) -> tuple[Tensor, Tensor]:
        """Crops and their preserved-area masks for a batch the size of ``generated`` (G's faces
        of this step, which the crops are merged onto), on its device."""
        ...


class ResumeError(Exception):
    """A checkpoint exists but belongs to a different run."""


@dataclass(frozen=True)
class TrainResult:
    encoder: Encoder
    steps_done: int
    resumed_from: int
    out_dir: Path
    history: list[dict[str, float]]


def step_rng(seed: int, step: int) -> torch.Generator:
    """The random source of one step, independent of all earlier steps."""
    digest = hashlib.sha256(f"{seed}:{step}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def make_batch(
    generator: FaceGenerator | MobileGenerator,
    data: TrainingFaces,
    config: TrainConfig,
    rng: torch.Generator,
    device: torch.device,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Codes z, their images G(z), encoder inputs (crops or merged crops) and their masks."""
    n = config.batch_size
    z = generator.sample_latent(n, rng)
    with torch.no_grad():
        generated = generator(z)
    x, m = data.draw(generated, rng)
    merge = (torch.rand(n, generator=rng) < config.merge_fraction).to(device)
    merged = m * x + (1 - m) * generated
    inputs = torch.where(merge[:, None, None, None], merged, x)
    return z, generated, inputs, m


def train_step(
    generator: FaceGenerator | MobileGenerator,
    encoder: Encoder,
    optimizer: torch.optim.Optimizer,
    data: TrainingFaces,
    config: TrainConfig,
    step: int,
    device: torch.device,
) -> LossTerms:
    z, generated, inputs, masks = make_batch(generator, data, config, step_rng(config.seed, step), device)
    # One encoder pass over both halves (group norm is per sample, so this equals two passes).
    codes = encoder(torch.cat([generated, inputs]))
    z_hat, w = codes[: len(z)], codes[len(z) :]
    recon = generator(w)
    terms = encoder_loss(z, z_hat, inputs, recon, masks, config.lambda_area, config.lambda_rec)
    optimizer.zero_grad(set_to_none=True)
    terms.total.backward()
    optimizer.step()
    return terms


def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(
    path: Path, encoder: Encoder, optimizer: torch.optim.Optimizer, config: TrainConfig, step: int
) -> None:
    _save_atomic(
        {
            "step": step,
            "encoder_config": encoder.config,
            "encoder": encoder.state_dict(),
            "optimizer": optimizer.state_dict(),
            "train_config": config.as_dict(),
        },
        path,
    )


def load_checkpoint(
    path: Path, config: TrainConfig, device: torch.device
) -> tuple[Encoder, torch.optim.Optimizer, int]:
    """Encoder, optimiser and step count from a checkpoint of the same run (else ResumeError)."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    previous = TrainConfig(**saved["train_config"])
    if not previous.resumable_with(config):
        before, now = _without_resumable(previous.as_dict()), _without_resumable(config.as_dict())
        changed = sorted(k for k, v in now.items() if before[k] != v)
        raise ResumeError(
            f"{path} is from a run with different settings ({', '.join(changed)}); use a new --out"
        )
    encoder = encoder_from_config(saved["encoder_config"]).to(device)
    encoder.load_state_dict(saved["encoder"])
    optimizer = torch.optim.Adam(encoder.parameters(), lr=config.lr)
    optimizer.load_state_dict(saved["optimizer"])
    return encoder, optimizer, int(saved["step"])


def save_encoder(path: Path, encoder: Encoder, config: TrainConfig, steps: int) -> None:
    """The trained encoder and what it was trained for, as the backend loads it."""
    meta = {**config.as_dict(), "steps": steps}
    _save_atomic({"config": encoder.config, "state_dict": encoder.state_dict(), "meta": meta}, path)


def _read_history(path: Path, up_to: int) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]
    return [r for r in rows if r["step"] <= up_to]


def _write_history(path: Path, history: list[dict[str, float]]) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in history:
            writer.writerow({k: (int(row[k]) if k == "step" else f"{row[k]:.6g}") for k in CSV_FIELDS})
    os.replace(tmp, path)


def plot_history(history: list[dict[str, float]], path: Path, title: str) -> None:
    """Loss curves (log scale, raw and smoothed) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in history]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    window = max(1, len(history) // 50)
    for key, colour in (
        ("latent", "tab:blue"),
        ("area", "tab:red"),
        ("rec", "tab:green"),
        ("total", "black"),
    ):
        values = torch.tensor([r[key] for r in history])
        ax.plot(steps, values, color=colour, alpha=0.2, linewidth=0.8)
        if window > 1 and len(values) >= window:
            smooth = values.unfold(0, window, 1).mean(1)
            ax.plot(steps[window - 1 :], smooth, color=colour, label=key)
        else:
            ax.plot(steps, values, color=colour, label=key)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (MSE, images in [-1, 1])")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def train_encoder(
    generator: FaceGenerator | MobileGenerator,
    data: TrainingFaces,
    config: TrainConfig,
    out_dir: Path,
    device: torch.device | str = "cpu",
    resume: bool = False,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    stop_after_s: float | None = None,
    plot: bool = True,
    deterministic: bool = True,
) -> TrainResult:
    """Train (or continue training) E for ``config.steps`` steps in total.

    Writes ``checkpoint.pt`` every ``checkpoint_every`` steps and at the end, ``losses.csv``
    and ``losses.png`` (unless ``plot`` is false: matplotlib is not on every GPU host) alongside,
    and ``encoder.pt`` when done. ``on_step`` gets each step's losses (the CLI drives its progress
    bar with it). ``stop_after_s`` ends the run early, checkpointed and resumable, once this call
    has trained that many seconds: a lent GPU comes in short windows. ``deterministic`` asks
    cuDNN for reproducible kernels, which resumes bit for bit but can be slower.
    """
    if len(data) == 0:
        raise ValueError("no training faces")
    device = torch.device(device)
    if device.type == "cuda":
        torch.backends.cudnn.deterministic = deterministic
        torch.backends.cudnn.benchmark = not deterministic
    out_dir.mkdir(parents=True, exist_ok=True)
    generator = generator.to(device)
    ckpt = out_dir / CHECKPOINT
    if resume and ckpt.is_file():
        encoder, optimizer, start = load_checkpoint(ckpt, config, device)
    else:
        torch.manual_seed(config.seed)
        encoder = Encoder(generator.resolution, generator.latent_dim, width=config.width).to(device)
        optimizer = torch.optim.Adam(encoder.parameters(), lr=config.lr)
        start = 0
    history = _read_history(out_dir / LOSSES_CSV, start) if start else []
    encoder.train()
    # Seconds in the CSV count training time across resumes.
    began = time.perf_counter()
    started = began - (history[-1]["seconds"] if history else 0.0)
    done = start
    for step in range(start + 1, config.steps + 1):
        terms = train_step(generator, encoder, optimizer, data, config, step, device)
        row = {"step": float(step), **terms.as_floats(), "seconds": time.perf_counter() - started}
        history.append(row)
        done = step
        if on_step is not None:
            on_step(step, row)
        out_of_time = stop_after_s is not None and time.perf_counter() - began >= stop_after_s
        if step % config.checkpoint_every == 0 or step == config.steps or out_of_time:
            save_checkpoint(ckpt, encoder, optimizer, config, step)
            _write_history(out_dir / LOSSES_CSV, history)
        if out_of_time:
            break
    if history and plot:
        title = f"{config.generator}: lambda_area={config.lambda_area:g}, lambda_rec={config.lambda_rec:g}"
        plot_history(history, out_dir / LOSSES_PNG, title)
    save_encoder(out_dir / ENCODER, encoder, config, done)
    return TrainResult(encoder.eval(), done, start, out_dir, history)


@torch.no_grad()
def evaluate(
    generator: FaceGenerator, encoder: Encoder, data: FaceSet, context_seed: int = 1234, batch: int = 64
) -> dict[str, float]:
    """Reconstruction errors of G(E(x)) on a face set, as in the paper's claim.

    For real crops x and for merged inputs (each crop's preserved area on a generated context
    face, as the backend uses E), the mean squared error inside the preserved area and over the
    whole image (images in [-1, 1]), and the preserved area's mean absolute error in 8-bit levels.
    """
    encoder.eval()
    device = next(encoder.parameters()).device
    rng = torch.Generator().manual_seed(context_seed)
    sums: dict[str, float] = {}
    for lo in range(0, len(data), batch):
        x = data.images[lo : lo + batch].to(device)
        m = data.masks[lo : lo + batch].to(device)
        context = generator(generator.sample_latent(len(x), rng))
        for kind, inputs in (("real", x), ("merged", m * x + (1 - m) * context)):
            out = generator(encoder(inputs))
            err = (inputs - out) ** 2
            per_area = (err * m).sum(dim=(1, 2, 3)) / (3 * m.sum(dim=(1, 2, 3))).clamp_min(1)
            per_mae = ((inputs - out).abs() * m).sum(dim=(1, 2, 3)) / (3 * m.sum(dim=(1, 2, 3))).clamp_min(1)
            for key, values in (
                (f"{kind}_area_mse", per_area),
                (f"{kind}_whole_mse", err.mean(dim=(1, 2, 3))),
                (f"{kind}_area_mae8", per_mae * 127.5),
            ):
                sums[key] = sums.get(key, 0.0) + float(values.sum())
    return {k: v / len(data) for k, v in sums.items()}
