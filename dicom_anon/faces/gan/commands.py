"""CLI commands of the GAN backend: ``dicom-anon train-encoder`` and ``dicom-anon models install``.

They only parse arguments and present results; torch and the models are imported inside the
commands so that ``dicom-anon --help`` and the header-only paths stay fast.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import ValidationError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ...console import err, fail, out
from .registry import DEFAULT_MODELS_DIR, GENERATORS_DIR, GeneratorCard, ModelCardError, card_path, write_card

if TYPE_CHECKING:
    import torch

    from ..masks import Preset
    from .data import FaceSet, Frame


def train_encoder_command(
    images: Annotated[
        Path | None,
        typer.Option(
            help="Folder of face photos (searched recursively); one face per photo is used. "
            "Without it, a generator that draws real-looking people (mobilestylegan-1024) trains on its "
            "own samples."
        ),
    ] = None,
    generator: Annotated[str, typer.Option(help="Installed generator (models/generators/NAME.json).")] = (
        "dcgan-digiface-64"
    ),
    preserve: Annotated[
        list[str], typer.Option(help="Preserved area: mouth, lower-face, nose, eyes (repeatable).")
    ] = ["mouth"],  # noqa: B006 (typer reads list defaults; it never mutates them)
    lambda_area: Annotated[float, typer.Option(help="Weight of the preserved-area pixel loss.")] = 10.0,
    lambda_rec: Annotated[float, typer.Option(help="Weight of the whole-image pixel loss.")] = 1.0,
    steps: Annotated[
        int, typer.Option(min=1, help="Total training steps (a resume continues to this).")
    ] = 2000,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 5e-4,
    seed: Annotated[int, typer.Option(help="Seed of every random choice: same seed, same encoder.")] = 0,
    width: Annotated[int, typer.Option(min=4, help="Encoder width (channels of its first stage).")] = 32,
    checkpoint_every: Annotated[int, typer.Option(min=1)] = 100,
    output: Annotated[
        Path | None,
        typer.Option("--out", help="Run folder (default models/encoders/GENERATOR): checkpoint, CSV, plot."),
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue from the run folder's checkpoint if there is one.")
    ] = False,
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu or cuda.")] = "auto",
    threads: Annotated[int | None, typer.Option(min=1, help="torch CPU threads (default: torch's).")] = None,
    models_dir: Annotated[Path, typer.Option(help="Where model cards live.")] = DEFAULT_MODELS_DIR,
) -> None:
    """Train the area-preserving encoder for a generator (writes encoder.pt for the gan method)."""
    import torch

    from ..commands import device_or_exit
    from ..masks import Preset
    from .generators import open_generator
    from .mobile import MobileGenerator, SampledFaces
    from .train import ENCODER, LOSSES_CSV, LOSSES_PNG, ResumeError, TrainConfig, TrainingFaces, train_encoder

    try:
        presets = [Preset(p) for p in preserve]
    except ValueError as exc:
        raise fail(f"--preserve: {exc}") from None
    if images is not None and not images.is_dir():
        raise fail(f"--images {images}: not a folder")
    if threads:
        torch.set_num_threads(threads)
    dev = device_or_exit(device)
    try:
        gen = open_generator(models_dir, generator, dev)
    except ModelCardError as exc:
        raise fail(str(exc)) from None
    if images is None:
        if not isinstance(gen, MobileGenerator):
            raise fail(f"--images is needed: {generator} draws no faces to train on")
        if presets != [Preset.MOUTH]:
            raise fail("training on the generator's own samples preserves the mouth only; drop --preserve")
        faces: TrainingFaces = SampledFaces(gen)
        source = "its own samples"
    else:
        faces = _photo_faces(images, gen.resolution, presets, dev, gen.frame)
        source = f"{len(faces)} faces"
    config = TrainConfig(
        generator=generator,
        preserve=[p.value for p in presets],
        lambda_area=lambda_area,
        lambda_rec=lambda_rec,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        width=width,
        checkpoint_every=checkpoint_every,
    )
    run_dir = output or models_dir / "encoders" / generator
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[losses]}"),
        TimeRemainingColumn(),
        console=err,
    ) as progress:
        task = progress.add_task("training", total=steps, losses="")

        def on_step(step: int, row: dict[str, float]) -> None:
            losses = f"latent {row['latent']:.3f} area {row['area']:.4f} rec {row['rec']:.4f}"
            progress.update(task, completed=step, losses=losses)

        try:
            result = train_encoder(gen, faces, config, run_dir, device=dev, resume=resume, on_step=on_step)
        except ResumeError as exc:
            raise fail(str(exc)) from None
    table = Table(title=f"encoder for {generator} ({source}, {device} -> {dev})", title_justify="left")
    table.add_column("")
    table.add_column("value", overflow="fold")
    if result.resumed_from:
        table.add_row("resumed from step", str(result.resumed_from))
    table.add_row("steps", str(result.steps_done))
    if result.history:
        last = result.history[-1]
        table.add_row(
            "last losses", f"latent {last['latent']:.4f}, area {last['area']:.4f}, rec {last['rec']:.4f}"
        )
    for label, name in (("encoder", ENCODER), ("losses", LOSSES_CSV), ("plot", LOSSES_PNG)):
        table.add_row(label, str(run_dir / name))
    out.print(table)


def _photo_faces(
    images: Path, resolution: int, presets: list[Preset], dev: torch.device, frame: Frame
) -> FaceSet:
    """The aligned faces of a folder of photos, or a one-line error."""
    from .data import list_images, load_faces

    paths = list_images(images)
    if not paths:
        raise fail(f"no images (.jpg, .png, ...) in {images}")
    with err.status(f"finding and aligning faces in {len(paths)} images"):
        faces, skipped = load_faces(paths, resolution, presets, device=str(dev), frame=frame)
    if skipped:
        err.print(
            f"no usable face in {len(skipped)} of {len(paths)} images; they are left out", highlight=False
        )
    if not len(faces):
        raise fail(f"no usable face in {images}")
    return faces


def install_model(
    file: Annotated[Path, typer.Argument(help="Weights file (a PyTorch checkpoint).", show_default=False)],
    kind: Annotated[str, typer.Option(help="What the file is; only 'generator' so far.")],
    name: Annotated[
        str, typer.Option(help="Name to register it under (lower-case, e.g. stylegan2-ffhq-256).")
    ],
    sha256: Annotated[str, typer.Option(help="The SHA-256 the provider published for the file.")],
    licence: Annotated[str, typer.Option(help="Licence of the weights, as the provider states it.")],
    source: Annotated[str, typer.Option(help="Where the weights came from (provider, URL, version).")],
    architecture: Annotated[str, typer.Option(help="stylegan2 or dcgan.")] = "stylegan2",
    resolution: Annotated[int, typer.Option(help="Output size in pixels.")] = 256,
    latent_dim: Annotated[int, typer.Option(help="Code size (StyleGAN2: style_dim, usually 512).")] = 512,
    state_key: Annotated[
        str | None, typer.Option(help="Entry holding the generator's state dict (rosinality: g_ema).")
    ] = "g_ema",
    param: Annotated[
        list[str] | None,
        typer.Option(
            help="Architecture parameter KEY=VALUE, repeatable (StyleGAN2: n_mlp, channel_multiplier)."
        ),
    ] = None,
    training_data: Annotated[str, typer.Option(help="What the generator was trained on.")] = "",
    models_dir: Annotated[Path, typer.Option(help="Where model cards live.")] = DEFAULT_MODELS_DIR,
) -> None:
    """Check a weights file's checksum and layout, copy it under models/ and register a model card."""
    from .generators import load_generator, measure_frame, sha256_file

    if kind != "generator":
        raise fail(f"--kind {kind}: only 'generator' models can be installed")
    if not file.is_file():
        raise fail(f"{file}: no such file")
    actual = sha256_file(file)
    if actual != sha256.lower():
        raise fail(f"{file} has SHA-256 {actual}, not {sha256}; refusing to install it")
    try:
        params = _parse_params(param or [])
        card = GeneratorCard(
            name=name,
            architecture=architecture,  # type: ignore[arg-type]  # validated by pydantic
            resolution=resolution,
            latent_dim=latent_dim,
            latent_space="z" if architecture == "dcgan" else "w",
            params=params,
            weights=f"{name}{file.suffix or '.pt'}",
            state_key=state_key,
            sha256=actual,
            licence=licence,
            source=source,
            training_data=training_data,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        raise fail(f"model card: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    except ValueError as exc:
        raise fail(str(exc)) from None
    if card_path(models_dir, name).exists():
        raise fail(f"a model called {name!r} is already installed ({card_path(models_dir, name)})")
    target = models_dir / GENERATORS_DIR / card.weights
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(file, target)
    try:
        generator = load_generator(card, target)
    except ModelCardError as exc:
        target.unlink()
        raise fail(str(exc)) from None
    with err.status("measuring where the generator puts faces (MTCNN on 16 samples)"):
        frame, found = measure_frame(generator)
    if found >= 8:
        card = card.model_copy(update={"frame": frame})
        out.print(f"face frame measured on {found}/16 samples: scale, dx, dy = {frame}", highlight=False)
    else:
        err.print(
            f"[yellow]warning:[/] MTCNN found a face in only {found} of 16 samples; the card keeps the "
            "ArcFace frame (1, 0, 0). Check the weights: a trained face generator draws detectable faces.",
            highlight=False,
        )
    written = write_card(models_dir, card)
    n = sum(p.numel() for p in generator.net.parameters())
    out.print(
        f"installed {name}: {architecture} {resolution}px, {n / 1e6:.1f} M parameters -> {written}",
        highlight=False,
    )


def _parse_params(items: list[str]) -> dict[str, int | float]:
    params: dict[str, int | float] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--param {item!r}: write KEY=VALUE")
        try:
            params[key] = int(value)
        except ValueError:
            try:
                params[key] = float(value)
            except ValueError:
                raise ValueError(f"--param {item!r}: the value must be a number") from None
    return params
