"""The service's commands: ``serve``, ``rules check|test`` and ``quarantine list|review|release|delete``.

They only parse arguments and present results; the work is in the modules beside them.
Registered on the main ``dicom-anon`` app in ``dicom_anon/cli.py``.
"""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from ..config import (
    DEFAULT_CONFIG,
    ConfigError,
    Settings,
    advice,
    apply_overrides,
    load_settings,
)
from ..console import (
    ColumnsOption,
    ConfigOption,
    DataDirOption,
    PerPageOption,
    SheetSizeOption,
    err,
    fail,
    out,
    settings_or_exit,
)
from ..headers.errors import SiteKeyError
from .store import StoreUnavailable

if TYPE_CHECKING:
    from .quarantine import Quarantine

# Each command imports the rest of what it needs when it runs: ``rules check`` must not pay for
# the whole service (pynetdicom, the face pipeline, PIL) at start-up.

# --- serve ------------------------------------------------------------------------------


def serve(
    config: Annotated[
        Path,
        typer.Option(
            "--config", "-c", envvar="DICOM_ANON_CONFIG", help="Settings YAML (see config/dicom-anon.yaml)."
        ),
    ] = DEFAULT_CONFIG,
    listen: Annotated[
        str | None, typer.Option(help="HOST:PORT to listen on, instead of ingress.listen.")
    ] = None,
    data_dir: DataDirOption = None,
    destination: Annotated[
        list[str] | None,
        typer.Option(help="NAME=AET@HOST:PORT, repeatable: replaces or adds a destination."),
    ] = None,
    role: Annotated[
        str | None,
        typer.Option(
            help="ingress (receive only), worker (de-identify and forward only) or all; instead of node.role."
        ),
    ] = None,
) -> None:
    """Run the service: receive (C-STORE), de-identify per the routes, forward, audit.

    Stops cleanly on SIGTERM or Ctrl-C; SIGHUP re-reads the settings file (a file with
    errors keeps the rules in force). Overrides let a second instance run without an
    edited file. Several machines sharing a PostgreSQL store and a spool may split the
    work: ingress nodes receive, workers de-identify and forward (--role).
    """
    from .app import Service, configure_logging, run
    from .metrics import MetricsError
    from .worker import face_pixel_stage

    overrides = {"listen": listen, "data_dir": data_dir, "destinations": destination or [], "role": role}
    try:
        settings = apply_overrides(load_settings(config), **overrides)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    configure_logging(settings.logging)
    service = Service(settings, config, overrides, pixel_stage=face_pixel_stage)
    try:
        status = run(service)
    except (SiteKeyError, MetricsError) as exc:
        raise fail(str(exc)) from None
    except StoreUnavailable as exc:
        raise fail(str(exc)) from None
    except sqlite3.OperationalError as exc:
        raise fail(
            f"cannot open the state store {settings.state_path} ({exc}); if the disk is full, make room"
            " (the reserve, spool.reserve_mb, was already used up)"
        ) from None
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise fail(f"cannot listen on {settings.ingress.listen}: the address is in use") from None
        raise fail(f"cannot start: {exc.strerror or exc} ({getattr(exc, 'filename', '') or ''})") from None
    raise typer.Exit(status)


# --- rules ------------------------------------------------------------------------------

rules_app = typer.Typer(help="Check a routing rules file, and try it on sample files.", no_args_is_help=True)


def _settings_or_exit(file: Path) -> Settings:
    """The settings in ``file``, or every problem with its line and fix in red and exit 1."""
    try:
        return load_settings(file)
    except ConfigError as exc:
        for line in str(exc).splitlines():
            err.print(f"[red]{line}[/]", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


@rules_app.command("check")
def rules_check(file: Annotated[Path, typer.Argument(help="The settings YAML to check.")]) -> None:
    """Validate a settings file: every problem with its line and the fix; then the routes in order."""
    from ..rules import route_lines

    settings = _settings_or_exit(file)
    table = Table(title=f"{file}: routes, applied in this order", title_justify="left")
    for column in ("#", "route", "matches", "does", "then"):
        table.add_column(column, overflow="fold")
    for line in route_lines(settings):
        table.add_row(str(line.number or ""), line.name, line.matches, line.does, line.then)
    out.print(table)
    dests = Table(title="destinations", title_justify="left")
    dests.add_column("name")
    dests.add_column("where")
    for name, dest in settings.destinations.items():
        dests.add_row(name, dest.describe())
    out.print(dests)
    for note in advice(settings):
        out.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    out.print(f"[green]{file}: OK[/]", highlight=False)


@rules_app.command("test")
def rules_test(
    file: Annotated[Path, typer.Argument(help="The settings YAML.")],
    dicom: Annotated[list[Path], typer.Argument(help="DICOM files to try.", show_default=False)],
    calling_ae: Annotated[
        str | None,
        typer.Option(
            help="Calling AE title to pretend the file came from (default: the first allowed caller)."
        ),
    ] = None,
) -> None:
    """Show which route each file matches and what would happen to it. Nothing is sent or written.

    De-identification is really run as the service runs it (the face pipeline for a photo
    profile, then the headers, in memory, with a throwaway key) so that a file the service would
    hold shows up as 'quarantine' with the reason, and a replaced face with its QA figures.
    """
    from ..review import qa_lines
    from ..trial import try_file, verdict
    from ..views import recognise

    settings = _settings_or_exit(file)
    for path in dicom:
        out.rule(str(path), align="left")
        trial = try_file(settings, path, calling_ae)
        if trial.unreadable is not None:
            out.print(f"  {trial.unreadable}", highlight=False)
            continue
        if trial.original is not None:
            out.print(f"  view: {recognise(trial.original).describe()}", markup=False, highlight=False)
        for name, why_not in trial.verdicts:
            mark = "[green]matches[/]" if why_not is None else f"no: {why_not}"
            out.print(f"  route {name}: {mark}", highlight=False, soft_wrap=True)
        if trial.unmatched is not None:
            out.print(f"  => {trial.unmatched} (no route matches)", highlight=False)
        for o in trial.outcomes:
            style = "red" if o.refused is not None else None
            out.print(f"  => {verdict(o)}", style=style, markup=False, highlight=False, soft_wrap=True)
            for qa in qa_lines(o.qa) if o.qa else []:
                out.print(f"     {qa}", markup=False, highlight=False, soft_wrap=True)


# --- quarantine -------------------------------------------------------------------------

quarantine_app = typer.Typer(
    help="What the service held back, and the operator's decision on it.", no_args_is_help=True
)


def _quarantine(config: Path | None, data_dir: Path | None) -> Quarantine:
    from ..audit.trail import AuditTrail
    from .files import Layout
    from .quarantine import Quarantine
    from .store import open_store

    settings = settings_or_exit(config, data_dir)
    if settings.state.backend == "sqlite" and not settings.state_path.exists():
        raise fail(f"no state store at {settings.state_path}; give --data-dir or --config of the service")
    layout = Layout.for_settings(settings)
    try:
        return Quarantine(
            open_store(settings), layout, AuditTrail(settings.audit_path, node=settings.node.id)
        )
    except StoreUnavailable as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"cannot open the service's data ({exc.strerror}: {exc.filename})") from None


def _when(ts: float | None) -> str:
    return "" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


@quarantine_app.command("list")
def quarantine_list(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    all_: Annotated[bool, typer.Option("--all", help="Include released and deleted items.")] = False,
) -> None:
    """Items held in quarantine, oldest first, with the reason."""
    q = _quarantine(config, data_dir)
    rows = q.list(include_resolved=all_)
    table = Table(title=f"quarantine ({len(rows)} {'items' if all_ else 'held'})", title_justify="left")
    columns = (
        "id",
        "since (UTC)",
        "job",
        "stage",
        "route",
        "destination",
        "patient",
        "code",
        "reason",
        "state",
    )
    for column in columns:
        # id and code are what an operator types and searches for: never broken across lines.
        table.add_column(column, overflow="fold", no_wrap=column in ("id", "code"))
    for r in rows:
        # The pseudonym of a de-identified copy (held for review, refused by a destination), to
        # match an item to its photo; an original held before de-identification has none yet.
        copy = q.store.delivered_copy(r.delivery_id) if r.delivery_id is not None else None
        table.add_row(
            str(r.id),
            _when(r.created_at),
            str(r.job_id),
            r.stage,
            r.route or "",
            r.destination or "",
            copy[1] if copy else "",
            r.code,
            r.reason,
            r.state if r.resolved_by is None else f"{r.state} by {r.resolved_by}",
        )
    out.print(table)


def _each(items: list[int], decide: Callable[[int], str]) -> None:
    """An operator's decision on each item, a line each; one that cannot be done is reported and
    the others still go, and the exit status is 1."""
    from .quarantine import QuarantineError

    failed = False
    for item in items:
        try:
            out.print(decide(item), highlight=False)
        except QuarantineError as exc:
            err.print(f"[red]{exc}[/]", highlight=False, soft_wrap=True)
            failed = True
    if failed:
        raise typer.Exit(1)


@quarantine_app.command("release")
def quarantine_release(
    items: Annotated[
        list[int], typer.Argument(metavar="ID", help="Ids from 'quarantine list' or 'quarantine review'.")
    ],
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Send items back on their way: processed again under the current rules, or offered to their
    destination again (a photo held for review: sent). De-identification is never skipped."""
    from ..audit.trail import operator
    from .quarantine import released_text

    q = _quarantine(config, data_dir)

    def release(item: int) -> str:
        return released_text(q.release(item, operator()))

    _each(items, release)


@quarantine_app.command("delete")
def quarantine_delete(
    items: Annotated[
        list[int], typer.Argument(metavar="ID", help="Ids from 'quarantine list' or 'quarantine review'.")
    ],
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete held items and their files for good (the audit trail keeps the record); for a photo
    held for review, this is withdrawing it."""
    from ..audit.trail import operator

    q = _quarantine(config, data_dir)
    which = ", ".join(str(i) for i in items)
    if not yes and not typer.confirm(f"Delete quarantine item(s) {which} and their files?"):
        raise typer.Exit(1)

    def delete(item: int) -> str:
        q.delete(item, operator())
        return f"deleted quarantine item {item}"

    _each(items, delete)


@quarantine_app.command("review")
def quarantine_review(
    output: Annotated[
        Path, typer.Option("-o", "--output", help="PNG to write; more pages are numbered (held-1.png ...).")
    ] = Path("held.png"),
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    size: SheetSizeOption = 240,
    columns: ColumnsOption = 5,
    per_page: PerPageOption = 30,
) -> None:
    """Draw the photos a route holds for review (`hold_for_review: true`), each labelled with the
    item id to release or delete it by.

    Each patient's photos are together, with the pool photo the face was given, the oval size and
    SFace's similarity to the patient (from the service's audit trail). Look for a seam, a patch,
    heavy brows, or one patient shown as two new people; then `dicom-anon quarantine release ID...`
    sends the good ones and `dicom-anon quarantine delete ID...` withdraws the others.
    """
    from rich.progress import track

    from ..audit.trail import read_records
    from ..review import output_problem, qa_notes, read_tile, save_sheets
    from .store import AWAITING_REVIEW

    if problem := output_problem(output):
        raise fail(problem)
    q = _quarantine(config, data_dir)
    everything = q.list()
    held = [r for r in everything if r.code == AWAITING_REVIEW]
    # The sheet's hint names the same service the operator gave, so it can be typed as it is.
    where = "".join(
        f" {flag} {value}" for flag, value in (("--config", config), ("--data-dir", data_dir)) if value
    )
    others = len(everything) - len(held)
    other_items = (
        f"; {others} other item(s) held for other reasons: dicom-anon quarantine list{where}"
        if others
        else ""
    )
    if not held:
        out.print(f"no photos are held for review{other_items}", highlight=False, soft_wrap=True)
        return
    trail = q.audit.path
    notes = qa_notes(read_records(trail)) if trail.is_file() else {}
    tiles = [
        read_tile(q.layout.abs(r.path) / "instance.dcm", size, notes, name=f"item {r.id} -> {r.destination}")
        for r in track(held, description="reading", console=err, transient=True, disable=not err.is_terminal)
    ]
    try:
        paths = save_sheets(tiles, output, size, columns, per_page)
    except OSError as exc:
        raise fail(f"cannot write {exc.filename or output}: {exc.strerror or exc}") from None
    out.print(
        f"{len(held)} photo(s) held for review on {len(paths)} page(s): "
        + ", ".join(str(p) for p in paths)
        + other_items,
        highlight=False,
        soft_wrap=True,
    )
    out.print(
        f"send the good ones: dicom-anon quarantine release ID...{where}\n"
        f"withdraw the others: dicom-anon quarantine delete ID...{where}",
        highlight=False,
        soft_wrap=True,
    )
    withheld = [t for t in tiles if t.withheld]
    for tile in withheld:
        err.print(f"[red]{tile.name}:[/] {tile.withheld}", highlight=False, soft_wrap=True)
    if withheld:
        raise typer.Exit(1)


# --- db ---------------------------------------------------------------------------------

db_app = typer.Typer(
    help="The state store's schema (a PostgreSQL store shared by several nodes).", no_args_is_help=True
)


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Create the state store's tables, or migrate them to this version; prints the version before and
    after. A PostgreSQL store is migrated only by this command (the nodes refuse to start on an older
    schema): run it once after installing a new version, before starting the nodes. SQLite migrates
    itself at start; this works on it too."""
    from .store import open_store

    settings = settings_or_exit(config, data_dir)
    try:
        store = open_store(settings, check_schema=False)
    except StoreUnavailable as exc:
        raise fail(str(exc)) from None
    except sqlite3.OperationalError as exc:
        raise fail(f"cannot open the state store {settings.state_path} ({exc})") from None
    try:
        before = store.opened_version
        _, after = store.upgrade()
    except StoreUnavailable as exc:
        raise fail(str(exc)) from None
    finally:
        store.close()
    where = settings.state_path if settings.state.backend == "sqlite" else f"{settings.state.backend} store"
    was = "no schema" if before is None else f"schema version {before}"
    out.print(f"{where}: {was} -> schema version {after}", highlight=False)
