"""What every ``dicom-anon`` command shares: the consoles, one-line errors, the settings options.

Each command group lives beside the work it presents (``service/``, ``audit/``, ``faces/``);
this is what they have in common, so that an error reads the same from every command.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from . import DEFAULT_CONFIG

if TYPE_CHECKING:
    from rich.progress import Progress, ProgressColumn

    from .config import Settings

# Piped output (a review saved to a file, CI logs) gets wide tables instead of rich's 80 columns.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        envvar="DICOM_ANON_CONFIG",
        help=f"Settings YAML (default: {DEFAULT_CONFIG} if present).",
    ),
]
DataDirOption = Annotated[
    Path | None, typer.Option("--data-dir", help="Data dir (overrides the settings file).")
]
# The layout of review sheets (``dicom-anon review``, ``dicom-anon quarantine review``).
SheetSizeOption = Annotated[
    int, typer.Option(min=64, max=1024, help="Width of each photo on the sheet, pixels.")
]
ColumnsOption = Annotated[int, typer.Option(min=1, max=20, help="Photos across a page.")]
PerPageOption = Annotated[int, typer.Option(min=1, max=500, help="Photos on one page.")]


def progress_bar(*extra: ProgressColumn) -> Progress:
    """The bar long commands show on stderr: what it does, done of total, time left, then
    ``extra`` columns. Gone once done; piped or logged it stays silent, where rich would leave a
    line behind. rich.progress is imported here, not at start-up, for the commands that never
    show one."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        *extra,
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one clear error line and leave with ``code`` (2: usage or set-up problem)."""
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def settings_or_exit(config: Path | None, data_dir: Path | None) -> Settings:
    """The settings for a command, or a clean exit naming the file, line and fix."""
    from .config import ConfigError, resolve_settings

    try:
        return resolve_settings(config, data_dir)
    except ConfigError as exc:
        raise fail(str(exc)) from None
