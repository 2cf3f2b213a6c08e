"""``dicom-anon console`` and ``dicom-anon users add|list|disable``. Registered on the main app in
``dicom_anon/cli.py``; the web parts are imported inside the commands, so that every other command
starts without loading Starlette or uvicorn."""

from __future__ import annotations

import getpass
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from ..audit.trail import AuditTrail, operator
from ..config import DEFAULT_CONFIG, Settings, parse_host_port
from ..console import ConfigOption, DataDirOption, err, fail, out, settings_or_exit

if TYPE_CHECKING:
    from .accounts import Accounts


def accounts_path(settings: Settings) -> Path:
    return settings.data_dir / "console" / "accounts.sqlite"


def console_command(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    listen: Annotated[
        str, typer.Option(help="HOST:PORT to serve on; loopback by default (put a proxy in front for more).")
    ] = "127.0.0.1:8080",
    session_minutes: Annotated[
        int, typer.Option(min=1, max=24 * 60, help="Minutes without a request that end a session.")
    ] = 15,
) -> None:
    """Serve the web console: status, review of held photos, the audit trail and the rules.

    It needs the service's settings file and data dir, not the running service: they share the
    state store, the audit trail and the settings file. With ingress.tls configured it serves
    HTTPS with the same certificate. Make accounts first with `dicom-anon users add`.
    """
    import uvicorn

    from .accounts import Accounts
    from .app import Console, create_app

    settings = settings_or_exit(config, data_dir)
    config_path = _config_file(config)
    try:
        host, port = parse_host_port(listen)
    except ValueError as exc:
        raise fail(f"--listen {listen!r}: {exc}") from None
    try:
        accounts = Accounts(accounts_path(settings))
    except OSError as exc:
        raise fail(f"cannot open the console's accounts ({exc.strerror}: {exc.filename})") from None
    if not accounts.users():
        err.print(
            "[yellow]note:[/] there are no accounts yet; make one with: "
            "dicom-anon users add NAME --role officer|reviewer|operator",
            highlight=False,
        )
    tls = settings.ingress.tls
    console = Console(settings, config_path, accounts, idle_s=session_minutes * 60, https=tls is not None)
    scheme = "https" if tls else "http"
    out.print(f"dicom-anon console on {scheme}://{host}:{port}/", highlight=False)
    uvicorn.run(
        create_app(console),
        host=host,
        port=port,
        log_level="warning",
        ssl_certfile=str(tls.certificate) if tls else None,
        ssl_keyfile=str(tls.private_key) if tls else None,
        # Only loopback is believed about the client's address (a local reverse proxy).
        forwarded_allow_ips="127.0.0.1",
    )


def _config_file(config: Path | None) -> Path:
    """The settings file the Rules page shows and edits: the one given, else the installed one."""
    path = config or DEFAULT_CONFIG
    if not path.is_file():
        raise fail(f"no settings file at {path}; give --config (the file the service runs with)")
    return path


users_app = typer.Typer(help="Accounts of the web console (dicom-anon console).", no_args_is_help=True)


def _accounts(config: Path | None, data_dir: Path | None) -> tuple[Settings, Accounts]:
    from .accounts import Accounts

    settings = settings_or_exit(config, data_dir)
    try:
        return settings, Accounts(accounts_path(settings))
    except OSError as exc:
        raise fail(f"cannot open the console's accounts ({exc.strerror}: {exc.filename})") from None


def _read_password() -> str:
    """From standard input: typed twice at a terminal, else the first line (a password manager's
    pipe, a provisioning script); never an argument, which other users could read in ps."""
    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if getpass.getpass("again: ") != first:
            raise fail("the two passwords differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="The name to sign in with.")],
    role: Annotated[str, typer.Option(help="officer, reviewer or operator (see docs/console.md).")],
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Make a console account; the password is read from standard input."""
    from .accounts import AccountError

    settings, accounts = _accounts(config, data_dir)
    try:
        accounts.add(name, role, _read_password())
    except AccountError as exc:
        raise fail(str(exc)) from None
    _audit(settings, "console_user_added", name=name, role=role, by=operator())
    out.print(f"user {name} added ({role})", highlight=False)


@users_app.command("list")
def users_list(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """The console's accounts, their roles and last sign-in."""
    _, accounts = _accounts(config, data_dir)
    table = Table(title="console accounts", title_justify="left")
    for column in ("name", "role", "state", "last sign-in (UTC)"):
        table.add_column(column)
    now = datetime.now(UTC).timestamp()
    for user in accounts.users():
        state = "disabled" if user.disabled else ("locked" if user.locked_until > now else "active")
        last = (
            datetime.fromtimestamp(user.last_login, UTC).strftime("%Y-%m-%d %H:%M") if user.last_login else ""
        )
        table.add_row(user.name, user.role, state, last)
    out.print(table)


@users_app.command("disable")
def users_disable(
    name: Annotated[str, typer.Argument(help="The account to disable; its sessions end at once.")],
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Disable a console account (kept, so the audit trail's names stay meaningful)."""
    from .accounts import AccountError

    settings, accounts = _accounts(config, data_dir)
    try:
        accounts.disable(name)
    except AccountError as exc:
        raise fail(str(exc)) from None
    _audit(settings, "console_user_disabled", name=name, by=operator())
    out.print(f"user {name} disabled", highlight=False)


def _audit(settings: Settings, event: str, **fields: str) -> None:
    """An account change in the trail, as ``quarantine`` decisions are: who, on whom."""
    try:
        trail = AuditTrail(settings.audit_path, node=settings.node.id)
    except OSError as exc:
        raise fail(
            f"cannot write to the audit trail ({exc.strerror}); account changes must be recorded"
        ) from None
    trail.record(event, **fields)
    trail.close()
