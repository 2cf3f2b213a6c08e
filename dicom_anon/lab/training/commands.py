"""``dicom-anon train-encoder``: train the area-preserving encoder the gan backend inverts with.

It only parses arguments and presents results; torch and the models are imported inside the
command so that ``dicom-anon --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ...console import err, fail, out
from ...faces.gan.registry import DEFAULT_MODELS_DIR, ModelCardError

if TYPE_CHECKING:
    import torch

    from ...faces.gan.frame import Frame
    from ...faces.masks import Preset
    from .facesets import FaceSet


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

    from ...faces.gan.generators import open_generator
    from ...faces.gan.mobile import MobileGenerator
    from ...faces.masks import Preset
    from ..commands import device_or_exit
    from .samples import SampledFaces
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
    from .facesets import list_images, load_faces

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
