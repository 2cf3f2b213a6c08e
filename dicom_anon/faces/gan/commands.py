"""``dicom-anon models install``: register a generator's weights for the gan backend.

It only parses arguments and presents results; torch and the models are imported inside the
command so that ``dicom-anon --help`` and the header-only paths stay fast. Training an encoder for
an installed generator is lab work (``dicom_anon.lab.training.commands``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from ...console import err, fail, out
from .registry import DEFAULT_MODELS_DIR, GENERATORS_DIR, GeneratorCard, ModelCardError, card_path, write_card


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
