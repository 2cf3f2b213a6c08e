"""The console's web application: signing in and out, the role and CSRF check every request passes,
and the security headers every answer carries. The pages themselves are in ``pages.py``.

Built from Starlette's parts (routing, forms, Jinja2 templates) and served by uvicorn; no
JavaScript at all, so the Content-Security-Policy allows none. Sessions live on the server
(``accounts.py``), so a timeout, a sign-out or a disabled account ends them at once; the cookie
only carries the session's random token, HttpOnly and SameSite=Strict.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..audit.trail import AuditTrail
from ..config import Settings
from ..service.files import Layout
from ..service.quarantine import Quarantine
from ..service.store import StateStore, StoreUnavailable, open_store
from .accounts import PERMISSIONS, Accounts, Session, User

HERE = Path(__file__).parent
COOKIE = "dicom_anon_session"
LOGIN_COOKIE = "dicom_anon_login"  # the sign-in form's CSRF token (double submit: no session yet)
# Uploads (a DICOM file to try the rules on, a settings file) beyond this are refused unread.
MAX_UPLOAD = 256 * 2**20

Handler = Callable[[Request, "Console", Session], Awaitable[Response]]


@dataclass
class Console:
    """What every request shares: the settings file the service runs with, its data dir, the
    accounts, and the live audit trail every console event is written to."""

    settings: Settings
    config_path: Path
    accounts: Accounts
    idle_s: float = 15 * 60
    max_s: float = 8 * 3600
    https: bool = False
    _store: StateStore | None = field(default=None, repr=False)
    _audit: AuditTrail | None = field(default=None, repr=False)

    @property
    def audit(self) -> AuditTrail:
        if self._audit is None:
            self._audit = AuditTrail(self.settings.audit_path, node=self.settings.node.id)
        return self._audit

    @property
    def layout(self) -> Layout:
        return Layout.for_settings(self.settings)

    def store(self) -> StateStore | None:
        """The service's state store, once the service has created it (the console starts without)."""
        shared = self.settings.state.backend != "sqlite"
        if self._store is None and (shared or self.settings.state_path.exists()):
            self._store = open_store(self.settings)
        return self._store

    def quarantine(self) -> Quarantine | None:
        store = self.store()
        return None if store is None else Quarantine(store, self.layout, self.audit)

    def record(self, event: str, request: Request, user: User | None, **fields: Any) -> None:
        """A console event in the audit trail, with who and from where."""
        by = {"by": user.name, "role": user.role} if user is not None else {}
        self.audit.record(event, **by, peer=_peer(request), via="console", **fields)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
        if self._audit is not None:
            self._audit.close()


def _peer(request: Request) -> str:
    return request.client.host if request.client else ""


templates = Jinja2Templates(directory=HERE / "templates")


def render(
    request: Request, name: str, session: Session | None, status_code: int = 200, **context: Any
) -> Response:
    """A page, with the signed-in user, the pages their role opens and their CSRF token."""
    user = session.user if session else None
    pages = sorted(PERMISSIONS.get(user.role, frozenset()) - {"originals"}) if user else []
    base = {"user": user, "csrf": session.csrf if session else "", "pages": pages}
    return templates.TemplateResponse(request, name, {**base, **context}, status_code=status_code)


def _to_login(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    response = RedirectResponse(f"/login?next={quote(target)}", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


async def _refused(request: Request, console: Console, user: User | None, why: str) -> None:
    """Audit a refused request (``console_refused``) off the event loop."""
    where = {"path": request.url.path, "method": request.method}
    await run_in_threadpool(console.record, "console_refused", request, user, **where, why=why)


def guarded(permission: str) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
    """Wrap a page so that it runs only for a live session whose role has ``permission`` and, for a
    form sent to it, with that session's CSRF token; every refusal is audited."""

    def wrap(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            console: Console = request.app.state.console
            token = request.cookies.get(COOKIE)
            session, why = (
                await run_in_threadpool(console.accounts.session, token, console.idle_s, console.max_s)
                if token
                else (None, "not signed in")
            )
            if session is None:
                # A first visit is no refusal; an ended session or a form sent without one is.
                if token or request.method != "GET":
                    await _refused(request, console, None, f"session {why}")
                return _to_login(request)
            user = session.user
            if not user.may(permission):
                await _refused(request, console, user, f"the {user.role} role may not use {permission}")
                return render(
                    request, "refused.html", session, 403, why=f"The {user.role} role cannot do this."
                )
            if request.method == "POST":
                form = await request.form(max_part_size=MAX_UPLOAD)
                sent = str(form.get("csrf", ""))
                if not hmac.compare_digest(sent.encode(), session.csrf.encode()):
                    await _refused(request, console, user, "the form carried no valid CSRF token")
                    return render(
                        request, "refused.html", session, 403, why="The form was not sent from this console."
                    )
            return await handler(request, console, session)

        return endpoint

    return wrap


# --- signing in and out -----------------------------------------------------------------------


def _safe_next(target: str) -> str:
    """Only a path on this console: an open redirect would carry a fresh session's user elsewhere."""
    return target if target.startswith("/") and not target.startswith("//") else "/"


async def login_page(request: Request) -> Response:
    token = secrets.token_urlsafe(32)
    response = render(
        request, "login.html", None, login_csrf=token, next=_safe_next(request.query_params.get("next", "/"))
    )
    _set_cookie(request, response, LOGIN_COOKIE, token, max_age=3600)
    return response


async def login(request: Request) -> Response:
    console: Console = request.app.state.console
    form = await request.form()
    name, password = str(form.get("name", "")).strip(), str(form.get("password", ""))
    cookie = request.cookies.get(LOGIN_COOKIE, "")
    sent = str(form.get("csrf", ""))
    if not cookie or not hmac.compare_digest(sent.encode(), cookie.encode()):
        await run_in_threadpool(
            console.record,
            "console_refused",
            request,
            None,
            path="/login",
            method="POST",
            why="the sign-in form carried no valid CSRF token",
            name=name[:64],
        )
        return render(
            request, "refused.html", None, 403, why="The sign-in form was not sent from this console."
        )
    result = await run_in_threadpool(console.accounts.sign_in, name, password, _peer(request))
    if result.user is None:
        await run_in_threadpool(
            console.record,
            "console_sign_in_failed",
            request,
            None,
            name=name[:64],
            why=result.refusal,
            locked=result.locked_now,
            address_locked=result.address_locked_now,
        )
        if result.refusal == "address locked" or result.address_locked_now:
            message = "Too many failed sign-ins from this computer; try again later or ask an operator."
        elif result.refusal == "locked" or result.locked_now:
            message = (
                "This account is locked after too many wrong passwords; try again later or ask an operator."
            )
        else:
            message = "Wrong name or password."
        response = render(
            request, "login.html", None, 401, error=message, login_csrf=cookie, next=form.get("next", "/")
        )
        return response
    token = await run_in_threadpool(console.accounts.open_session, result.user)
    await run_in_threadpool(console.record, "console_signed_in", request, result.user)
    response = RedirectResponse(_safe_next(str(form.get("next", "/"))), status_code=303)
    _set_cookie(request, response, COOKIE, token, max_age=int(console.max_s))
    response.delete_cookie(LOGIN_COOKIE, path="/")
    return response


@guarded("status")
async def logout(request: Request, console: Console, session: Session) -> Response:
    await run_in_threadpool(console.accounts.close_session, session)
    await run_in_threadpool(console.record, "console_signed_out", request, session.user)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


def _set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    console: Console = request.app.state.console
    response.set_cookie(
        name, value, max_age=max_age, path="/", httponly=True, samesite="strict", secure=console.https
    )


# --- every answer ---------------------------------------------------------------------------------


class SecurityHeaders:
    """Headers that keep the pages out of frames, caches and other sites' scripts. Hand-written:
    six fixed headers are less than a dependency that sets them."""

    def __init__(self, app: ASGIApp, https: bool) -> None:
        self.app = app
        self.headers = [
            (
                b"content-security-policy",
                b"default-src 'none'; img-src 'self' data:; style-src 'self'; "
                b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
            (b"x-content-type-options", b"nosniff"),
            (b"x-frame-options", b"DENY"),
            (b"referrer-policy", b"no-referrer"),
            # Pages hold pseudonyms, photos and the trail: nothing is kept by a browser or a proxy.
            (b"cache-control", b"no-store"),
            (b"cross-origin-opener-policy", b"same-origin"),
        ]
        if https:
            self.headers.append((b"strict-transport-security", b"max-age=31536000"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], *self.headers]
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def store_unavailable(_request: Request, exc: Exception) -> Response:
    """A page that needs the state store while it cannot be reached (a shared PostgreSQL that is
    down): one line that says so, not Starlette's bare "Internal Server Error"."""
    return PlainTextResponse(
        f"The service's state store cannot be used now: {exc}\n"
        "The other pages still work; try again once it is back (docs/operations.md, Many machines).\n",
        status_code=503,
    )


def create_app(console: Console) -> ASGIApp:
    """The console's ASGI application for ``console``."""
    from . import pages

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        console.close()

    app = Starlette(
        max_body_size=MAX_UPLOAD,
        lifespan=lifespan,
        exception_handlers={StoreUnavailable: store_unavailable},
        routes=[
            Route("/login", login_page, methods=["GET"]),
            Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"]),
            *pages.routes,
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ],
    )
    app.state.console = console
    return SecurityHeaders(app, console.https)
