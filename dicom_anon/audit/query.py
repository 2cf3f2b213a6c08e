"""Searching and exporting the trail for compliance reviewers.

The questions are "what left the hospital, when, to whom, under which rule": so the
filters are time, event, route, destination, status, pseudonymous patient, and an
original SOP Instance UID, which is looked up through its keyed hash (only a holder of
the site secret can ask about an original identifier).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..headers.pseudonyms import SiteKey
from .nodes import merged_records

# Columns of the CSV export, in the order a reviewer reads them; anything else goes to 'details'.
CSV_COLUMNS = (
    "seq",
    "ts",
    "node",
    "event",
    "job",
    "route",
    "profile",
    "destination",
    "status",
    "code",
    "reason",
    "patient",
    "sop_uid_hash",
    "new_sop_uid",
    "calling_ae",
    "peer",
    "by",
)
_CHAIN_FIELDS = ("hash", "prev")


def parse_time(text: str) -> datetime:
    """ISO date or date-time; naive values are taken as UTC (the trail is written in UTC)."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is not a date or time; write e.g. 2025-01-31 or 2025-01-31T14:00"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Filters:
    since: datetime | None = None
    until: datetime | None = None
    events: frozenset[str] = frozenset()
    route: str | None = None
    destination: str | None = None
    status: str | None = None
    patient: str | None = None
    sop_uid: str | None = None

    @classmethod
    def parse(
        cls,
        since: str | None = None,
        until: str | None = None,
        events: Iterable[str] = (),
        route: str | None = None,
        destination: str | None = None,
        status: str | None = None,
        patient: str | None = None,
        sop_uid: str | None = None,
    ) -> Filters:
        """Filters as a person types them (``audit query`` options, the console's form): empty text
        is no filter; ValueError names a time that cannot be read."""
        return cls(
            since=parse_time(since) if since else None,
            until=parse_time(until) if until else None,
            events=frozenset(e for e in events if e),
            route=route or None,
            destination=destination or None,
            status=status or None,
            patient=patient or None,
            sop_uid=sop_uid or None,
        )

    def describe(self) -> dict[str, Any]:
        """The filters as given, for the audit_read event (the SOP UID only as its keyed hash)."""
        result: dict[str, Any] = {}
        for name in ("since", "until", "route", "destination", "status", "patient"):
            value = getattr(self, name)
            if value is not None:
                result[name] = value.isoformat() if isinstance(value, datetime) else value
        if self.events:
            result["events"] = sorted(self.events)
        return result


def _matches(record: dict[str, Any], f: Filters, sop_hash: str | None, jobs: set[Any]) -> bool:
    if f.since or f.until:
        try:
            ts = datetime.fromisoformat(str(record.get("ts")))
        except ValueError:
            return False
        if f.since and ts < f.since:
            return False
        if f.until and ts > f.until:
            return False
    if f.events and record.get("event") not in f.events:
        return False
    for name in ("route", "destination", "patient"):
        wanted = getattr(f, name)
        if wanted is not None and record.get(name) != wanted:
            return False
    if f.status is not None and f.status.lower() not in {
        str(record.get("status", "")).lower(),
        str(record.get("code", "")).lower(),
    }:
        return False
    if sop_hash is not None:
        return record.get("sop_uid_hash") == sop_hash or (
            record.get("job") is not None and record["job"] in jobs
        )
    return True


def query(
    records: Iterable[dict[str, Any]], filters: Filters, key: SiteKey | None = None
) -> list[dict[str, Any]]:
    """Records matching every filter. With ``sop_uid``, every event of the jobs that received that
    instance is returned (routed, de-identified, forwarded...), found through the keyed hash."""
    records = list(records)
    sop_hash = None
    jobs: set[Any] = set()
    if filters.sop_uid is not None:
        if key is None:
            raise ValueError("looking up an original SOP Instance UID needs the site secret")
        sop_hash = key.keyed_hash(filters.sop_uid.strip())
        jobs = {
            r.get("job") for r in records if r.get("sop_uid_hash") == sop_hash and r.get("job") is not None
        }
    return [r for r in records if _matches(r, filters, sop_hash, jobs)]


def search(trails: Mapping[str, Path], filters: Filters, secret: Path) -> list[dict[str, Any]]:
    """The records of every node's trail (node id -> path) matching ``filters``, in time order; the
    site secret at ``secret`` is read only for an original SOP Instance UID, and ValueError says
    when it is missing."""
    key = None
    if filters.sop_uid is not None:
        if not secret.is_file():
            raise ValueError(f"--sop-uid needs the site secret, which is not at {secret}")
        key = SiteKey.load_or_create(secret)
    return query(merged_records(trails), filters, key)


# The columns of ``audit query``'s table and the console's Audit page, in this order.
QUERY_COLUMNS = (
    "seq",
    "time (UTC)",
    "event",
    "job",
    "route",
    "destination",
    "status/code",
    "patient",
    "detail",
)


def query_columns(several_nodes: bool) -> tuple[str, ...]:
    """QUERY_COLUMNS, with the node after the time where the records come from several nodes."""
    return (*QUERY_COLUMNS[:2], "node", *QUERY_COLUMNS[2:]) if several_nodes else QUERY_COLUMNS


def query_row(r: dict[str, Any], several_nodes: bool = False) -> tuple[str, ...]:
    """One record as a row under ``query_columns(several_nodes)``: who did it (a quarantine decision,
    a reading of the trail) and on which quarantine item, before what it was about."""
    item = f"item {r['quarantine']} " if r.get("quarantine") is not None else ""
    who = f"{item}by {r['by']}" if r.get("by") else ""
    what = r.get("reason") or r.get("error") or r.get("new_sop_uid") or r.get("calling_ae") or ""
    return (
        str(r.get("seq", "")),
        short_time(r.get("ts")),
        *((str(r.get("node", "")),) if several_nodes else ()),
        str(r.get("event", "")),
        str(r.get("job", "") or ""),
        str(r.get("route", "") or ""),
        str(r.get("destination", "") or ""),
        str(r.get("status", "") or r.get("code", "") or ""),
        str(r.get("patient", "") or ""),
        "; ".join(str(part) for part in (who, what) if part),
    )


def short_time(ts: Any) -> str:
    """A trail time stamp to the second, as people read it."""
    try:
        return datetime.fromisoformat(str(ts)).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return str(ts)


def to_csv(records: Iterable[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow((*CSV_COLUMNS, "details"))
    for r in records:
        details = {k: v for k, v in r.items() if k not in CSV_COLUMNS and k not in _CHAIN_FIELDS}
        writer.writerow(
            (*(r.get(c, "") for c in CSV_COLUMNS), json.dumps(details, sort_keys=True, ensure_ascii=False))
        )
    return buf.getvalue()


def to_json(records: Iterable[dict[str, Any]]) -> str:
    return json.dumps(list(records), indent=1, ensure_ascii=False, sort_keys=True) + "\n"
