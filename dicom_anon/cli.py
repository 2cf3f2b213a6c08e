"""The ``dicom-anon`` command. Each subcommand only parses arguments and presents results;
the work lives in the modules named after it."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

from . import __version__
from .console import ColumnsOption, PerPageOption, SheetSizeOption, err, fail, out, progress_bar
from .headers.options import PIXEL_OPTIONS, Option

if TYPE_CHECKING:
    from .batch import Inputs, Outcome
    from .headers.pseudonyms import SiteKey

_HELP = "De-identify clinical DICOM photographs and forward them to a teaching archive."
_APP_SETTINGS: dict[str, Any] = {
    "no_args_is_help": True,
    "pretty_exceptions_enable": False,
    "rich_markup_mode": "markdown",
    "context_settings": {"help_option_names": ["-h", "--help"]},
}


# Each command group imports what its work needs (pynetdicom, SQLite, PIL, torch...) when it is
# loaded; loading them all up front cost ``deid`` and ``rules check`` most of a second of start-up.
def _serve(app: typer.Typer) -> None:
    from .service.commands import serve

    app.command()(serve)


def _rules(app: typer.Typer) -> None:
    from .service.commands import rules_app

    app.add_typer(rules_app, name="rules")


def _quarantine(app: typer.Typer) -> None:
    from .service.commands import quarantine_app

    app.add_typer(quarantine_app, name="quarantine")


def _db(app: typer.Typer) -> None:
    from .service.commands import db_app

    app.add_typer(db_app, name="db")


def _audit(app: typer.Typer) -> None:
    from .audit.commands import audit_app

    app.add_typer(audit_app, name="audit")


def _models(app: typer.Typer) -> None:
    from .faces.gan.commands import install_model
    from .lab.commands import models_app

    if "install" not in {c.name for c in models_app.registered_commands}:
        models_app.command("install")(install_model)
    app.add_typer(models_app, name="models")


def _eval(app: typer.Typer) -> None:
    from .lab.commands import eval_command

    app.command("eval")(eval_command)


def _eval_compare(app: typer.Typer) -> None:
    from .lab.commands import eval_compare_command

    app.command("eval-compare")(eval_compare_command)


def _train_encoder(app: typer.Typer) -> None:
    from .lab.training.commands import train_encoder_command

    app.command("train-encoder")(train_encoder_command)


def _console(app: typer.Typer) -> None:
    from .web.commands import console_command

    app.command("console")(console_command)


def _users(app: typer.Typer) -> None:
    from .web.commands import users_app

    app.add_typer(users_app, name="users")


_LAZY: dict[str, Callable[[typer.Typer], None]] = {
    "serve": _serve,
    "rules": _rules,
    "quarantine": _quarantine,
    "db": _db,
    "audit": _audit,
    "models": _models,
    "eval": _eval,
    "eval-compare": _eval_compare,
    "train-encoder": _train_encoder,
    "console": _console,
    "users": _users,
}


class _LazyGroup(TyperGroup):
    """The top-level command: a command group is imported only when it is named (or when the
    top-level help lists them all). This is click's documented lazy-loading pattern; typer has
    none of its own. Each group is built as ``add_typer``/``command`` on a Typer with this app's
    settings would build it, so its help and options are the same either way."""

    def list_commands(self, ctx: Any) -> list[str]:
        return [*_LAZY, *(n for n in super().list_commands(ctx) if n not in _LAZY)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name in _LAZY and cmd_name not in self.commands:
            holder = typer.Typer(**_APP_SETTINGS)
            _LAZY[cmd_name](holder)
            self.commands[cmd_name] = typer.main.get_group(holder).commands[cmd_name]
        return super().get_command(ctx, cmd_name)


app = typer.Typer(name="dicom-anon", help=_HELP, cls=_LazyGroup, **_APP_SETTINGS)


def run() -> None:
    """The ``dicom-anon`` console script: ``app``, with a file or folder the system would not let a
    command read or write (a report's folder on a read-only disk, a sheet where a folder is)
    answered in one line naming it, exit 2, instead of a traceback, whichever command met it."""
    try:
        app()
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        fail(f"{where}{exc.strerror or exc}")
        raise SystemExit(2) from None


def _version(value: bool) -> None:
    if value:
        out.print(f"dicom-anon {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """De-identify clinical DICOM photographs and forward them to a teaching archive."""


def load_key(config: Path | None, data_dir: Path | None) -> tuple[SiteKey, frozenset[Option]]:
    """The site secret and the configured default options, or a clean exit naming the problem."""
    from .config import ConfigError, load_settings
    from .headers.errors import SiteKeyError
    from .headers.pseudonyms import SiteKey

    try:
        settings = load_settings(config)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    secret = settings.secret_path if data_dir is None else data_dir / "site.key"
    try:
        return SiteKey.load_or_create(secret), settings.deid.options
    except SiteKeyError as exc:
        raise fail(str(exc)) from None


@app.command()
def deid(
    inputs: Annotated[
        list[Path], typer.Argument(help="DICOM files or folders (searched recursively).", show_default=False)
    ],
    output: Annotated[
        Path,
        typer.Option("-o", "--output", help="Folder for the de-identified files (each named NEW-UID.dcm)."),
    ],
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Settings YAML (default options, data dir).")
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Folder holding the site secret (site.key, created on first use, mode 0600)."),
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--option",
            help="Annex E option, repeatable: "
            + ", ".join(o.value for o in Option if o not in PIXEL_OPTIONS),
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would change in each file; write nothing.")
    ] = False,
    jobs: Annotated[
        int,
        typer.Option(
            "--jobs",
            "-j",
            min=0,
            help="Worker processes (0: one per core). The outputs are the same for any number.",
        ),
    ] = 0,
) -> None:
    """De-identify DICOM files with the PS3.15 Annex E profile (headers only).

    Identifying attributes are removed or replaced by keyed pseudonyms, UIDs are
    remapped consistently, and JPEG comment/EXIF segments are stripped. A file that
    cannot be made safe (burned-in annotation, unsupported object, damaged file) is
    refused and listed; the exit status is 1 if anything was refused.
    """
    from .batch import default_jobs, deid_files
    from .headers.engine import Profile
    from .headers.options import parse_options

    key, default_options = load_key(config, data_dir)
    try:
        options = parse_options(option) if option else default_options
    except ValueError as exc:
        raise fail(str(exc)) from None
    pixel = sorted(o.value for o in options & PIXEL_OPTIONS)
    if pixel:
        raise fail(f"{', '.join(pixel)} need the face pipeline; 'deid' de-identifies headers only")
    found = _inputs_or_exit(inputs)

    profile = Profile(options=options)
    outcomes: list[Outcome] = []
    started = time.perf_counter()
    with progress_bar() as progress:
        task = progress.add_task("de-identifying", total=len(found.files))
        workers = jobs or default_jobs()
        for outcome in deid_files(found.files, key, profile, output, dry_run=dry_run, jobs=workers):
            path = outcome.source
            outcomes.append(outcome)
            if outcome.refused is not None:
                progress.console.print(
                    f"[red]{path}:[/] refused ({outcome.refused.code}): {outcome.refused.reason}",
                    highlight=False,
                    soft_wrap=True,
                )
            elif dry_run:
                _print_changes(outcome)
            progress.advance(task)
    elapsed = time.perf_counter() - started
    _print_summary(outcomes, found.skipped, elapsed, dry_run, output)
    if any(not o.ok for o in outcomes) or found.missing:
        raise typer.Exit(1)


@app.command()
def review(
    inputs: Annotated[
        list[Path],
        typer.Argument(
            help="De-identified DICOM files or folders (searched recursively), e.g. an export of the "
            "teaching archive or the service's outbox.",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="PNG to write; more pages are numbered (review-1.png ...).")
    ] = Path("review.png"),
    size: SheetSizeOption = 240,
    columns: ColumnsOption = 5,
    per_page: PerPageOption = 30,
    trail: Annotated[
        Path | None,
        typer.Option(
            help="The service's audit trail (audit/audit.jsonl in its data dir): adds under each photo "
            "the pool photo its face was given, the oval size and SFace's similarity to the patient."
        ),
    ] = None,
) -> None:
    """Lay de-identified photos side by side, each patient's together, to look at before teaching use.

    Every forwarded photo has passed the privacy checks, but some new faces still show a seam, a
    patch or heavy brows, and a patient's before and after photos should show one new face.
    Each photo is labelled with its patient pseudonym, file name and SOP Instance UID. A file that
    is not de-identified (Patient Identity Removed not YES) is never drawn: its tile says so and
    the exit status is 1, as it is when any file could not be read or decoded. An image that is
    not a photo (a CT in a mixed export) is named on the sheet but not drawn, and is no error.
    """
    from rich.progress import track

    from .audit.trail import read_records
    from .review import output_problem, qa_notes, read_tile, save_sheets

    if problem := output_problem(output):
        raise fail(problem)
    found = _inputs_or_exit(inputs)
    if trail is not None and not trail.is_file():
        raise fail(
            f"--trail {trail}: no such file (the trail is audit/audit.jsonl in the service's data dir)"
        )
    notes = qa_notes(read_records(trail)) if trail is not None else {}
    tiles = [
        read_tile(path, size, notes)
        for path in track(
            found.files, description="reading", console=err, transient=True, disable=not err.is_terminal
        )
    ]
    try:
        paths = save_sheets(tiles, output, size, columns, per_page)
    except OSError as exc:
        raise fail(f"cannot write {exc.filename or output}: {exc.strerror or exc}") from None
    withheld = [t for t in tiles if t.withheld]
    others = sum(1 for t in tiles if t.not_photo)
    photos = [t for t in tiles if not t.withheld and not t.not_photo]
    patients = len({t.patient for t in photos})
    kept = sum(1 for t in photos if not t.face_replaced)
    out.print(
        f"{len(photos)} photos of {patients} patients ({kept} with no face replaced, "
        f"marked in orange){f', {others} other images not drawn' if others else ''} on {len(paths)} "
        "page(s): " + ", ".join(str(p) for p in paths),
        highlight=False,
        soft_wrap=True,
    )
    for tile in withheld:
        err.print(f"[red]{tile.source}:[/] {tile.withheld}", highlight=False, soft_wrap=True)
    if withheld or found.missing:
        raise typer.Exit(1)


def _inputs_or_exit(inputs: list[Path]) -> Inputs:
    """The DICOM files under ``inputs``, each missing one reported; a clean exit when there are none."""
    from .batch import collect_inputs

    found = collect_inputs(inputs)
    for path in found.missing:
        err.print(f"[red]{path}:[/] no such file or folder", highlight=False, soft_wrap=True)
    if not found.files:
        raise fail("no DICOM files found in the given inputs")
    return found


def _print_changes(outcome: Outcome) -> None:
    from rich.table import Table

    table = Table(title=str(outcome.source), title_justify="left", expand=False)
    for column in ("attribute", "action", "old (masked)", "new"):
        table.add_column(column, overflow="fold")
    for change in outcome.changes:
        table.add_row(change.location, change.action, change.old, change.new)
    out.print(table)


def _print_summary(
    outcomes: list[Outcome], skipped: tuple[Path, ...], elapsed: float, dry_run: bool, output: Path
) -> None:
    from rich.table import Table

    done = [o for o in outcomes if o.ok]
    refused = Counter(o.refused.code for o in outcomes if o.refused is not None)
    table = Table(
        title="dry run (nothing written)" if dry_run else f"written to {output}", title_justify="left"
    )
    table.add_column("result")
    table.add_column("files", justify="right")
    table.add_row("reviewed" if dry_run else "de-identified", str(len(done)))
    for code, count in sorted(refused.items()):
        table.add_row(f"refused: {code}", str(count), style="red")
    if skipped:
        table.add_row("skipped: not DICOM", str(len(skipped)), style="yellow")
    rate = len(outcomes) / elapsed if elapsed > 0 else 0.0
    table.add_row("time", f"{elapsed:.2f} s ({rate:.1f} files/s)")
    out.print(table)
