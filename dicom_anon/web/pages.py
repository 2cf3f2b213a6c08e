"""The console's pages: Status (everyone), Review (officers, operators), Audit (reviewers, operators)
and Rules (officers). Each calls the functions the command line calls, so the two cannot disagree:
``rules check|test`` (``rules.route_lines``, ``trial.try_file``), ``quarantine release|delete``
(``Quarantine``), ``quarantine review`` (``review.read_tile``, ``qa_lines``) and ``audit
query|export|chart|verify`` (``audit.query``, ``audit.chart``, ``audit.nodes``: every node's trail).
"""

from __future__ import annotations

import base64
import io
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from PIL import Image
from pydicom.dataset import Dataset
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..audit.chart import Bucket, draw, tally
from ..audit.nodes import combined, merged_records, node_trails, verify_nodes
from ..audit.query import Filters, query_columns, query_row, search, to_csv, to_json
from ..audit.trail import Verification, read_records, verify
from ..config import ConfigError, advice, load_settings
from ..dicomio import read_instance
from ..headers.errors import Refused, SiteKeyError
from ..pixels.codec import UnsupportedPixels, decode
from ..review import qa_lines, read_tile, sheets
from ..rules import route_lines
from ..service.quarantine import QuarantineError, released_text
from ..service.status import service_state
from ..service.store import AWAITING_REVIEW
from ..trial import default_caller, try_file, verdict
from .accounts import Session
from .app import Console, guarded, render
from .editor import apply_text, check_text, sha256_of

TILE = 320  # pixels across a photo on the Review page
TRIAL_PICTURE = 360  # pixels across the de-identified picture a rules test shows
AUDIT_LIMIT = 200  # rows shown on the Audit page (the newest); an export has them all


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _data_uri(image: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(_png(image)).decode()


def _when(ts: float | None) -> str:
    return "" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _records(console: Console) -> list[dict[str, Any]]:
    return read_records(console.settings.audit_path)


# --- Status ---------------------------------------------------------------------------------------


def _status(console: Console) -> dict[str, Any]:
    records = _records(console)
    state = service_state(records)
    store = console.store()
    counts = store.counts() if store else {}
    backlog = store.backlog() if store else {}
    held = store.quarantined() if store else []
    last_error: dict[str, str] = {}
    for r in records:
        if r.get("event") in ("delivery_retry", "instance_forwarded") and r.get("destination"):
            last_error[r["destination"]] = str(r.get("error") or "") if r["event"] == "delivery_retry" else ""
    destinations = []
    for name, dest in console.settings.destinations.items():
        waiting = backlog.get(name, {})
        retrying = int(waiting.get("retrying") or 0)
        state_text = "retrying" if retrying else ("sending" if waiting.get("pending") else "idle")
        destinations.append(
            {
                "name": name,
                "where": dest.describe(),
                "state": state_text,
                "pending": int(waiting.get("pending") or 0),
                "retrying": retrying,
                "oldest": _when(waiting.get("oldest")),
                "error": last_error.get(name, ""),
            }
        )
    return {
        "service": state,
        "waiting": counts.get("jobs.received", 0) + counts.get("jobs.processing", 0),
        "destinations": destinations,
        "quarantine": sorted(Counter(r.code for r in held).items()),
        "store_missing": store is None,
    }


@guarded("status")
async def status_page(request: Request, console: Console, session: Session) -> Response:
    return render(request, "status.html", session, **await run_in_threadpool(_status, console))


def _last_hour_chart(console: Console) -> bytes:
    path = console.settings.audit_path
    now = datetime.now(UTC)
    counts = tally(_records(console), Filters(since=now - timedelta(hours=1), until=now), Bucket.minute)
    buf = io.BytesIO()
    draw(counts, verify(path) if path.is_file() else Verification(0, ()), buf, footnote="the last hour")
    return buf.getvalue()


@guarded("status")
async def status_chart(request: Request, console: Console, session: Session) -> Response:
    return Response(await run_in_threadpool(_last_hour_chart, console), media_type="image/png")


# --- Review ---------------------------------------------------------------------------------------


def _review(console: Console, session: Session) -> dict[str, Any]:
    q = console.quarantine()
    if q is None:
        return {"patients": [], "others": [], "store_missing": True}
    reports = _pixel_reports(_records(console))
    patients: dict[str, list[dict[str, Any]]] = {}
    others = []
    for row in q.list():
        copy = q.store.delivered_copy(row.delivery_id) if row.delivery_id is not None else None
        item = {
            "id": row.id,
            "since": _when(row.created_at),
            "route": row.route or "",
            "destination": row.destination or "",
            "code": row.code,
            "reason": row.reason,
            "stage": row.stage,
            "patient": copy[1] if copy else "",
            "qa": _qa(reports.get(copy[0])) if copy else [],
            # Quarantined before de-identification, the held file is the original itself.
            "original": row.delivery_id is None,
        }
        if row.code == AWAITING_REVIEW:
            patients.setdefault(item["patient"], []).append(item)
        else:
            others.append(item)
    return {
        "patients": sorted(patients.items()),
        "others": others,
        "store_missing": False,
        "originals": session.user.may("originals"),
    }


def _pixel_reports(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """New SOP Instance UID -> what the pixel stage reported of it in its ``instance_deidentified``
    record: the QA figures of a replaced face, or why no face was replaced."""
    return {
        r["new_sop_uid"]: r.get("pixels") or {}
        for r in records
        if r.get("event") == "instance_deidentified" and r.get("new_sop_uid")
    }


def _qa(report: dict[str, Any] | None) -> list[str]:
    """The lines under a held photo's tile: its QA figures, or plainly that its face is the patient's."""
    if report is None:
        return []
    if report.get("qa"):
        return qa_lines(report["qa"])
    return [f"no face replaced: {report.get('reason', 'the pixel stage did not run')}"]


@guarded("review")
async def review_page(request: Request, console: Console, session: Session) -> Response:
    return render(
        request, "review.html", session, messages=[], **await run_in_threadpool(_review, console, session)
    )


def _decide(
    console: Console, session: Session, items: list[int], approve: bool
) -> tuple[list[str], list[str]]:
    q = console.quarantine()
    if q is None:
        return [], ["the service has no state store yet"]
    done, failed = [], []
    for item in items:
        try:
            if approve:
                done.append(released_text(q.release(item, session.user.name)))
            else:
                q.delete(item, session.user.name)
                done.append(f"deleted quarantine item {item}")
        except QuarantineError as exc:
            failed.append(str(exc))
    return done, failed


@guarded("review")
async def review_decide(request: Request, console: Console, session: Session) -> Response:
    form = await request.form()
    try:
        items = [int(v) for v in form.getlist("item")]
    except ValueError:
        items = []
    decision = form.get("decision")
    if not items or decision not in ("approve", "withdraw"):
        done, failed = [], ["choose one or more items, then approve or withdraw"]
    else:
        done, failed = await run_in_threadpool(_decide, console, session, items, decision == "approve")
    page = await run_in_threadpool(_review, console, session)
    return render(request, "review.html", session, messages=done, errors=failed, **page)


def _held_file(console: Console, qid: int) -> Any:
    store = console.store()
    row = store.quarantine_row(qid) if store else None
    return row, (console.layout.abs(row.path) / "instance.dcm" if row else None)


def _copy_picture(console: Console, qid: int) -> bytes | None:
    row, path = _held_file(console, qid)
    if row is None or path is None:
        return None
    tile = read_tile(path, TILE, name=f"item {qid}")
    # A file that is not de-identified, or cannot be drawn, is never drawn: its tile says why.
    return _png(tile.image if tile.image is not None else sheets([tile], TILE, 1, 1)[0])


@guarded("review")
async def review_picture(request: Request, console: Console, session: Session) -> Response:
    data = await run_in_threadpool(_copy_picture, console, int(request.path_params["qid"]))
    if data is None:
        return Response("no such quarantine item", status_code=404, media_type="text/plain")
    return Response(data, media_type="image/png")


def _original_picture(console: Console, qid: int) -> tuple[bytes | None, str]:
    row, path = _held_file(console, qid)
    if row is None or path is None:
        return None, "no such quarantine item"
    if row.delivery_id is not None:
        # A de-identified copy is held; its original is the job's spool file while it is kept.
        spool = console.store().job_spool_path(row.job_id) if console.store() else None
        path = console.layout.abs(spool) if spool else None
    if path is None or not path.is_file():
        return None, "the original is no longer kept (spool.keep_days)"
    try:
        frames = decode(read_instance(path)).frames
    except (Refused, UnsupportedPixels) as exc:
        return None, f"the original cannot be drawn: {exc}"
    image = Image.fromarray(frames[0])
    image.thumbnail((800, 800))
    return _png(image), ""


@guarded("originals")
async def review_original(request: Request, console: Console, session: Session) -> Response:
    qid = int(request.path_params["qid"])
    data, why = await run_in_threadpool(_original_picture, console, qid)
    row = console.store().quarantine_row(qid) if console.store() else None
    await run_in_threadpool(
        console.record,
        "original_shown",
        request,
        session.user,
        quarantine=qid,
        job=row.job_id if row else None,
        route=row.route if row else None,
        shown=data is not None,
    )
    if data is None:
        return Response(why, status_code=404, media_type="text/plain")
    return Response(data, media_type="image/png")


# --- Audit ----------------------------------------------------------------------------------------

_FILTER_FIELDS = ("since", "until", "event", "route", "destination", "status", "patient", "sop_uid")


def _filters(request: Request) -> Filters:
    p = request.query_params
    events = [e.strip() for e in p.get("event", "").split(",")]
    return Filters.parse(p.get("since"), p.get("until"), events, *(p.get(n) for n in _FILTER_FIELDS[3:]))


def _search(console: Console, filters: Filters) -> list[dict[str, Any]]:
    return search(node_trails(console.settings), filters, console.settings.secret_path)


def _audit_page(console: Console, request: Request, session: Session) -> dict[str, Any]:
    trails = node_trails(console.settings)
    several = len(trails) > 1
    form = {n: request.query_params.get(n, "") for n in _FILTER_FIELDS}
    page: dict[str, Any] = {"form": form, "columns": query_columns(several), "rows": None, "error": ""}
    if not any(path.is_file() for path in trails.values()):
        where = console.settings.audit.shared_dir or console.settings.audit_path
        page["error"] = f"no audit trail at {where} yet"
        return page
    result = combined(verify_nodes(trails))
    page["chain"] = result
    if "run" not in request.query_params:
        return page
    try:
        filters = _filters(request)
        found = _search(console, filters)
    except (ValueError, SiteKeyError) as exc:
        page["error"] = str(exc)
        return page
    console.record(
        "audit_read",
        request,
        session.user,
        filters=filters.describe(),
        by_sop_uid=filters.sop_uid is not None,
        records=len(found),
        chain_ok=result.ok,
    )
    page["rows"] = [query_row(r, several) for r in found[-AUDIT_LIMIT:]]
    page["found"] = len(found)
    page["query"] = request.url.query
    return page


@guarded("audit")
async def audit_page(request: Request, console: Console, session: Session) -> Response:
    return render(
        request, "audit.html", session, **await run_in_threadpool(_audit_page, console, request, session)
    )


def _export(console: Console, request: Request, session: Session, fmt: str) -> tuple[str, str]:
    filters = _filters(request)
    found = _search(console, filters)
    console.record(
        "audit_exported",
        request,
        session.user,
        filters=filters.describe(),
        by_sop_uid=filters.sop_uid is not None,
        records=len(found),
        format=fmt,
        output="download",
    )
    return (to_csv(found), "text/csv") if fmt == "csv" else (to_json(found), "application/json")


@guarded("audit")
async def audit_export(request: Request, console: Console, session: Session) -> Response:
    fmt = request.path_params["fmt"]
    if fmt not in ("csv", "json"):
        return Response("export as .csv or .json", status_code=404, media_type="text/plain")
    try:
        text, media = await run_in_threadpool(_export, console, request, session, fmt)
    except (ValueError, SiteKeyError) as exc:
        return Response(str(exc), status_code=400, media_type="text/plain")
    name = f"audit-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.{fmt}"
    return Response(text, media_type=media, headers={"content-disposition": f'attachment; filename="{name}"'})


def _audit_chart(console: Console, request: Request, session: Session) -> bytes:
    trails = node_trails(console.settings)
    full = _filters(request)
    filters = Filters(since=full.since, until=full.until, route=full.route, destination=full.destination)
    result = combined(verify_nodes(trails))
    counts = tally(merged_records(trails), filters)
    console.record(
        "audit_read",
        request,
        session.user,
        filters=filters.describe(),
        view="chart",
        bucket=counts.bucket.value,
        records=counts.events,
        chain_ok=result.ok,
    )
    buf = io.BytesIO()
    drawn = datetime.now(UTC).strftime("%Y-%m-%d %H:%M")
    where = console.settings.audit.shared_dir or console.settings.audit_path
    draw(counts, result, buf, footnote=f"{where}, drawn {drawn} UTC by {session.user.name} in the console")
    return buf.getvalue()


@guarded("audit")
async def audit_chart(request: Request, console: Console, session: Session) -> Response:
    try:
        data = await run_in_threadpool(_audit_chart, console, request, session)
    except ValueError as exc:
        return Response(str(exc), status_code=400, media_type="text/plain")
    return Response(data, media_type="image/png")


# --- Rules ----------------------------------------------------------------------------------------


def _rules(
    console: Console, text: str | None = None, base: str | None = None, **extra: Any
) -> dict[str, Any]:
    """The Rules page for the file as it is on disk, or for ``text`` being edited from the file
    whose SHA-256 was ``base`` (what Apply checks the file still is)."""
    on_disk = console.config_path.read_text(encoding="utf-8")
    shown = on_disk if text is None else text
    checked = check_text(console.config_path, shown)
    settings = checked.settings
    return {
        "text": shown,
        "base": base or sha256_of(on_disk),
        "problems": checked.problems,
        "numbered": checked.numbered(),
        "lines": route_lines(settings) if settings else [],
        "destinations": [(n, d.describe()) for n, d in settings.destinations.items()] if settings else [],
        "advice": advice(settings) if settings else [],
        "edited": text is not None and text != on_disk,
        "trial": None,
        "messages": [],
        "errors": [],
        **extra,
    }


@guarded("rules")
async def rules_page(request: Request, console: Console, session: Session) -> Response:
    return render(request, "rules.html", session, **await run_in_threadpool(_rules, console))


@guarded("rules")
async def rules_check(request: Request, console: Console, session: Session) -> Response:
    form = await request.form()
    text = str(form.get("text", "")).replace("\r\n", "\n")
    page = await run_in_threadpool(_rules, console, text, str(form.get("base", "")))
    return render(request, "rules.html", session, **page)


def _apply(console: Console, request: Request, session: Session, text: str, base: str) -> dict[str, Any]:
    def record(**fields: Any) -> None:
        console.record("config_changed", request, session.user, **fields)

    result = apply_text(console.config_path, console.settings.audit_path, text, base, record)
    if result.applied:
        return _rules(console, messages=[result.message])
    return _rules(console, text, base, errors=[result.message])


@guarded("rules")
async def rules_apply(request: Request, console: Console, session: Session) -> Response:
    form = await request.form()
    text = str(form.get("text", "")).replace("\r\n", "\n")
    page = await run_in_threadpool(_apply, console, request, session, text, str(form.get("base", "")))
    return render(request, "rules.html", session, **page)


def _trial(console: Console, data: bytes, name: str, calling_ae: str) -> dict[str, Any]:
    try:
        settings = load_settings(console.config_path)
    except ConfigError as exc:
        return _rules(console, errors=[f"the settings file has errors; fix them first: {exc}"])
    trial = try_file(settings, data, calling_ae or None)
    shown = [
        {
            "outcome": o,
            "verdict": verdict(o),
            "qa": qa_lines(o.qa) if o.qa else [],
            "picture": _picture(o.deidentified) if o.deidentified is not None else None,
        }
        for o in trial.outcomes
    ]
    return _rules(
        console,
        trial=trial,
        trial_name=name,
        trial_caller=calling_ae or default_caller(settings),
        shown=shown,
    )


def _picture(ds: Dataset) -> str | None:
    """The de-identified copy's first frame, scaled down, inline: it exists only in this answer."""
    try:
        image = Image.fromarray(decode(ds).frames[0])
    except (Refused, UnsupportedPixels):
        return None
    image.thumbnail((TRIAL_PICTURE, TRIAL_PICTURE))
    return _data_uri(image)


@guarded("rules")
async def rules_test(request: Request, console: Console, session: Session) -> Response:
    form = await request.form()
    upload = form.get("dicom")
    if not isinstance(upload, UploadFile) or not upload.filename:
        page = await run_in_threadpool(_rules, console, errors=["choose a DICOM file to try the rules on"])
        return render(request, "rules.html", session, **page)
    data = await upload.read()
    page = await run_in_threadpool(
        _trial, console, data, upload.filename, str(form.get("calling_ae", "")).strip()
    )
    return render(request, "rules.html", session, **page)


routes = [
    Route("/", status_page, methods=["GET"]),
    Route("/status/chart.png", status_chart, methods=["GET"]),
    Route("/review", review_page, methods=["GET"]),
    Route("/review", review_decide, methods=["POST"]),
    Route("/review/item/{qid:int}.png", review_picture, methods=["GET"]),
    Route("/review/item/{qid:int}/original.png", review_original, methods=["GET"]),
    Route("/audit", audit_page, methods=["GET"]),
    Route("/audit/export.{fmt:str}", audit_export, methods=["GET"]),
    Route("/audit/chart.png", audit_chart, methods=["GET"]),
    Route("/rules", rules_page, methods=["GET"]),
    Route("/rules/check", rules_check, methods=["POST"]),
    Route("/rules/apply", rules_apply, methods=["POST"]),
    Route("/rules/test", rules_test, methods=["POST"]),
]
