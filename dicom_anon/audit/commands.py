"""``dicom-anon audit verify|query|export|chart|atna status``: the compliance reviewer's commands.

Reading or exporting the trail is itself audited (who, which filters, how many records).
Registered on the main app in ``dicom_anon/cli.py``.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ..config import Settings
from ..console import ConfigOption, DataDirOption, err, fail, out, settings_or_exit
from ..headers.errors import SiteKeyError
from .chart import Bucket, draw, tally
from .nodes import combined, merged_records, node_trails, trails_in, verify_nodes
from .query import Filters, query_columns, query_row, search, to_csv, to_json
from .trail import AuditTrail, operator

audit_app = typer.Typer(help="Verify, search and export the audit trail.", no_args_is_help=True)
atna_app = typer.Typer(help="The copy of the trail sent to the hospital's audit repository (IHE ATNA).")
audit_app.add_typer(atna_app, name="atna", no_args_is_help=True)

TrailOption = Annotated[
    Path | None,
    typer.Option(
        "--trail",
        help="The audit file itself, e.g. a copy under review; or a folder of several nodes' trails "
        "(one folder per node id, as audit.shared_dir keeps them).",
    ),
]


def _trails(settings: Settings, trail: Path | None) -> dict[str, Path]:
    """node id -> trail to read: every node's under a shared folder (``--trail FOLDER`` or
    audit.shared_dir), else the one file."""
    if trail is not None and trail.is_dir():
        found = trails_in(trail)
    elif trail is not None:
        found = {settings.node.id: trail}
    else:
        found = node_trails(settings)
    where = trail or settings.audit.shared_dir or settings.audit_path
    if not any(path.is_file() for path in found.values()):
        raise fail(f"no audit trail at {where}; give --data-dir, --config or --trail")
    return found


def _where(trails: dict[str, Path]) -> str:
    """The trails read, as a reviewer names them: the file, or the folder of several nodes' trails."""
    paths = list(trails.values())
    return str(paths[0]) if len(paths) == 1 else f"{len(paths)} nodes' trails in {paths[0].parent.parent}"


def _record(settings: Settings, trail: Path | None, event: str, **fields: Any) -> None:
    """Audit the reading itself, in the live trail (not in a copy under review)."""
    if trail is not None and trail != settings.audit_path:
        return
    try:
        audit = AuditTrail(settings.audit_path, node=settings.node.id)
    except OSError as exc:
        raise fail(f"cannot write to the audit trail ({exc.strerror}); reading it must be recorded") from None
    audit.record(event, by=operator(), **fields)
    audit.close()


@audit_app.command("verify")
def audit_verify(
    config: ConfigOption = None, data_dir: DataDirOption = None, trail: TrailOption = None
) -> None:
    """Check the hash chain: report the first edited, deleted or reordered line (exit 1 if any)."""
    settings = settings_or_exit(config, data_dir)
    trails = _trails(settings, trail)
    results = verify_nodes(trails)
    several = len(trails) > 1
    total = combined(results)
    _record(
        settings,
        trail,
        "audit_verified",
        records=total.records,
        ok=total.ok,
        **({"nodes": {node: r.ok for node, r in results.items()}} if several else {}),
    )
    for node, result in results.items():
        name = f"node {node}: {trails[node]}" if several else str(trails[node])
        if result.ok:
            out.print(f"[green]{name}: {result.records} records, chain intact[/]", highlight=False)
            continue
        first, *rest = result.problems
        err.print(f"[bold red]{name}: chain broken at {first}[/]", highlight=False, soft_wrap=True)
        for problem in rest[:20]:
            err.print(f"  also {problem}", highlight=False, soft_wrap=True)
        if len(rest) > 20:
            err.print(f"  ... and {len(rest) - 20} more", highlight=False)
    if not total.ok:
        raise typer.Exit(1)


class Format(StrEnum):
    csv = "csv"
    json = "json"


def _filters(
    since: str | None,
    until: str | None,
    event: list[str] | None,
    route: str | None,
    destination: str | None,
    status: str | None,
    patient: str | None,
    sop_uid: str | None,
) -> Filters:
    try:
        return Filters.parse(since, until, event or (), route, destination, status, patient, sop_uid)
    except ValueError as exc:
        raise fail(str(exc)) from None


def _select(settings: Settings, trails: dict[str, Path], filters: Filters) -> list[dict[str, Any]]:
    try:
        return search(trails, filters, settings.secret_path)
    except (ValueError, SiteKeyError) as exc:
        raise fail(str(exc)) from None


Since = Annotated[str | None, typer.Option(help="From this date/time (ISO, UTC unless an offset is given).")]
Until = Annotated[str | None, typer.Option(help="Up to this date/time.")]
EventOpt = Annotated[
    list[str] | None, typer.Option("--event", help="Event name, repeatable (e.g. instance_forwarded).")
]
RouteOpt = Annotated[str | None, typer.Option(help="Route name.")]
DestOpt = Annotated[str | None, typer.Option(help="Destination name.")]
StatusOpt = Annotated[str | None, typer.Option(help="DIMSE status (0x0000) or quarantine code.")]
PatientOpt = Annotated[str | None, typer.Option(help="Pseudonymous Patient ID (ANON...).")]
SopOpt = Annotated[
    str | None,
    typer.Option(help="Original SOP Instance UID: all events of that instance (needs the site secret)."),
]


@audit_app.command("query")
def audit_query(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    trail: TrailOption = None,
    since: Since = None,
    until: Until = None,
    event: EventOpt = None,
    route: RouteOpt = None,
    destination: DestOpt = None,
    status: StatusOpt = None,
    patient: PatientOpt = None,
    sop_uid: SopOpt = None,
    limit: Annotated[int, typer.Option(help="Show at most this many (the newest).")] = 200,
) -> None:
    """Search the trail: what left, when, to whom, under which rule."""
    settings = settings_or_exit(config, data_dir)
    trails = _trails(settings, trail)
    filters = _filters(since, until, event, route, destination, status, patient, sop_uid)
    found = _select(settings, trails, filters)
    _record(
        settings,
        trail,
        "audit_read",
        filters=filters.describe(),
        by_sop_uid=sop_uid is not None,
        records=len(found),
    )
    shown = found[-limit:] if limit > 0 else found
    table = Table(
        title=f"{len(found)} records" + (f", newest {len(shown)} shown" if len(shown) < len(found) else ""),
        title_justify="left",
    )
    several = len(trails) > 1
    for column in query_columns(several):
        # The event name is what a reviewer scans for: never broken across lines.
        table.add_column(column, overflow="fold", no_wrap=column == "event")
    for r in shown:
        table.add_row(*query_row(r, several))
    out.print(table)


@audit_app.command("export")
def audit_export(
    fmt: Annotated[Format, typer.Option("--format", "-f", help="csv or json.")] = Format.csv,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File to write (default: stdout).")
    ] = None,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    trail: TrailOption = None,
    since: Since = None,
    until: Until = None,
    event: EventOpt = None,
    route: RouteOpt = None,
    destination: DestOpt = None,
    status: StatusOpt = None,
    patient: PatientOpt = None,
    sop_uid: SopOpt = None,
) -> None:
    """Export matching records as CSV (one row per event, the rest as JSON in 'details') or JSON."""
    settings = settings_or_exit(config, data_dir)
    trails = _trails(settings, trail)
    filters = _filters(since, until, event, route, destination, status, patient, sop_uid)
    found = _select(settings, trails, filters)
    text = to_csv(found) if fmt is Format.csv else to_json(found)
    _record(
        settings,
        trail,
        "audit_exported",
        filters=filters.describe(),
        by_sop_uid=sop_uid is not None,
        records=len(found),
        format=fmt.value,
        output=str(output) if output else "stdout",
    )
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        err.print(f"{len(found)} records written to {output}", highlight=False)


@audit_app.command("chart")
def audit_chart(
    out_path: Annotated[Path, typer.Option("--out", "-o", help="PNG file to write.", show_default=False)],
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    trail: TrailOption = None,
    since: Since = None,
    until: Until = None,
    route: RouteOpt = None,
    destination: DestOpt = None,
    bucket: Annotated[
        Bucket, typer.Option(help="One bar per minute, hour or day; auto picks by the length of the range.")
    ] = Bucket.auto,
) -> None:
    """Draw a PNG of instances received, forwarded (per destination), quarantined (per reason) and
    associations rejected, per time bucket; the title says whether the hash chain verified, and a
    broken chain also exits 1 (after writing the chart, which says so)."""
    settings = settings_or_exit(config, data_dir)
    trails = _trails(settings, trail)
    filters = _filters(since, until, None, route, destination, None, None, None)
    if not out_path.parent.is_dir():
        raise fail(f"cannot write {out_path}: there is no folder {out_path.parent}")
    result = combined(verify_nodes(trails))
    try:
        counts = tally(merged_records(trails), filters, bucket)
    except ValueError as exc:
        raise fail(str(exc)) from None
    _record(
        settings,
        trail,
        "audit_read",
        filters=filters.describe(),
        view="chart",
        bucket=counts.bucket.value,
        records=counts.events,
        chain_ok=result.ok,
        output=str(out_path),
    )
    try:
        drawn = datetime.now(UTC).strftime("%Y-%m-%d %H:%M")
        draw(
            counts,
            result,
            out_path,
            footnote=f"{_where(trails)}, drawn {drawn} UTC by dicom-anon audit chart",
        )
    except OSError as exc:
        raise fail(f"cannot write {out_path}: {exc.strerror or exc}") from None
    if result.ok:
        out.print(f"{out_path}: {counts.events} events, chain intact", highlight=False, soft_wrap=True)
        return
    err.print(
        f"[bold red]{_where(trails)}: chain broken at {result.problems[0]}; the chart says so: {out_path}[/]",
        highlight=False,
        soft_wrap=True,
    )
    raise typer.Exit(1)


def _when(stamp: float | None) -> str:
    if stamp is None:
        return "never"
    moment = datetime.fromtimestamp(stamp, UTC)
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC ({_ago(datetime.now(UTC).timestamp() - stamp)} ago)"


def _ago(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{max(seconds, 0):.0f} s"


@atna_app.command("status")
def atna_status(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Where the repository copy stands: messages waiting, last sent, last error, a full queue.
    Exit 1 while the queue is full or the last attempt failed, so a monitoring check can call it."""
    from .atna_relay import read_status  # sqlite and the relay only for this command

    settings = settings_or_exit(config, data_dir)
    atna = settings.audit.atna
    if atna is None:
        raise fail("audit.atna is not configured: no audit messages are sent to a repository")
    try:
        status = read_status(settings)
    except sqlite3.Error as exc:
        raise fail(f"cannot read the ATNA queue at {settings.atna_outbox_path}: {exc}") from None
    out.print(f"repository   {atna.host}:{atna.port} ({atna.transport})", highlight=False)
    if status is None:
        out.print("queue        none yet: the service has not run with audit.atna", highlight=False)
        return
    waiting = f"{status.backlog} messages ({status.backlog_bytes / 2**20:.1f} of {atna.queue_mb} MB)"
    if status.oldest_queued_at is not None:
        waiting += f", oldest queued {_when(status.oldest_queued_at)}"
    out.print(f"backlog      {waiting}", highlight=False, soft_wrap=True)
    out.print(f"trail unread {status.trail_bytes_unread} bytes", highlight=False)
    out.print(f"sent         {status.sent} messages, last {_when(status.last_sent_at)}", highlight=False)
    problem = False
    if status.last_error:
        problem = True
        err.print(
            f"[red]last error   {_when(status.last_error_at)}: {status.last_error}[/]",
            highlight=False,
            soft_wrap=True,
        )
    else:
        out.print("last error   none since the last message sent", highlight=False)
    if status.full_since is not None:
        problem = True
        err.print(
            f"[bold red]queue full   since {_when(status.full_since)}: new events wait in the trail[/]",
            highlight=False,
            soft_wrap=True,
        )
    if problem:
        raise typer.Exit(1)
