"""Quarantine for operators: list what is held, release it back on its path, or delete it.

Release never bypasses de-identification: an item quarantined before or during
de-identification goes back to the worker and is processed again (only the route that
quarantined it) under the rules in force now; an item refused by a destination is
offered to that destination again. Both work while the service runs: the service picks
released work up from the state store within a second.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass

from ..audit.trail import AuditTrail
from .files import Layout, link_or_copy
from .store import AWAITING_REVIEW, HELD, QuarantineRow, StateStore


class QuarantineError(Exception):
    """An operator request that cannot be done; the message says why."""


@dataclass
class Quarantine:
    store: StateStore
    layout: Layout
    audit: AuditTrail

    def list(self, include_resolved: bool = False) -> list[QuarantineRow]:
        return self.store.quarantined(None if include_resolved else HELD)

    def _held(self, qid: int) -> QuarantineRow:
        row = self.store.quarantine_row(qid)
        if row is None:
            raise QuarantineError(f"no quarantine item {qid}; see 'dicom-anon quarantine list'")
        if row.state != HELD:
            raise QuarantineError(f"quarantine item {qid} was already {row.state} by {row.resolved_by}")
        return row

    def release(self, qid: int, by: str) -> QuarantineRow:
        row = self._held(qid)
        held = self.layout.abs(row.path) / "instance.dcm"
        if row.delivery_id is not None:
            if not held.exists():
                raise QuarantineError(f"quarantine item {qid} has no file to send; delete it instead")
            target = self.layout.outbox / f"{row.job_id}-{row.route}-q{qid}.dcm"
            link_or_copy(held, target)
        else:
            existing = self.store.job_spool_path(row.job_id)
            if existing is not None and self.layout.abs(existing).exists():
                target = self.layout.abs(existing)
            elif held.exists():
                target = self.layout.new_spool_path()
                link_or_copy(held, target)
            else:
                raise QuarantineError(
                    f"quarantine item {qid} has no received file to process again; delete it"
                )
        try:
            self.store.release(qid, by, self.layout.rel(target))
        except Exception as exc:
            raise QuarantineError(str(exc)) from None
        shutil.rmtree(self.layout.abs(row.path), ignore_errors=True)
        self._audit("quarantine_released", qid, row, by)
        return row

    def _audit(self, event: str, qid: int, row: QuarantineRow, by: str) -> None:
        """An operator's decision, with what it was about and who made it: for a de-identified
        copy (held for review, refused by a destination) also which one, so that an approval
        reads beside the photo it let through."""
        copy = self.store.delivered_copy(row.delivery_id) if row.delivery_id is not None else None
        self.audit.record(
            event,
            quarantine=qid,
            job=row.job_id,
            route=row.route,
            destination=row.destination,
            stage=row.stage,
            code=row.code,
            by=by,
            **({"new_sop_uid": copy[0], "patient": copy[1]} if copy else {}),
        )

    def delete(self, qid: int, by: str) -> QuarantineRow:
        row = self._held(qid)
        try:
            self.store.delete_quarantined(qid, by)
        except KeyError:
            raise QuarantineError(f"quarantine item {qid} is no longer held") from None
        shutil.rmtree(self.layout.abs(row.path), ignore_errors=True)
        self._audit("quarantine_deleted", qid, row, by)
        return row


def released_text(row: QuarantineRow) -> str:
    """What releasing ``row`` did, in the words ``quarantine release`` and the console both use."""
    if row.code == AWAITING_REVIEW:
        return f"released quarantine item {row.id}: approved, sent to {row.destination}"
    again = (
        f"offered to {row.destination} again"
        if row.delivery_id is not None
        else "queued for processing again"
    )
    return f"released quarantine item {row.id}: {again}"
