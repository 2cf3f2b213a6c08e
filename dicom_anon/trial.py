"""Trying the rules on one file, as ``rules test`` and the console's Rules page show it: which route
each rule gives, and what its profile would do to the pixels and the headers. Nothing is sent or
written.

De-identification is really run, the way the service's worker runs it (the face pipeline for a
photo profile, then the headers, then the last gate), in memory and with a throwaway key, so that a
file the service would hold shows up as 'quarantine' with its stage and reason, the header changes
are the ones ``deid --dry-run`` lists, and a photo's new face is the one a reviewer would see. The
pseudonyms, and so the new person chosen for the face, differ from the service's, whose key never
leaves it; no state store is consulted, so a patient's remembered new face is not used either.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset

from .config import Settings
from .dicomio import read_instance
from .headers.engine import Change, Profile, deidentify
from .headers.errors import Refused
from .headers.gate import GateFailed, release
from .headers.options import Option
from .headers.pseudonyms import SiteKey
from .rules import Decision, Rules, route_action
from .service.failures import describe_exception


@dataclass(frozen=True)
class Outcome:
    """What one applying route would do: forward (with the de-identified copy and its changes),
    drop, or quarantine (``refused`` says why the file cannot be made safe, ``stage`` where:
    ``pixels`` the face pipeline, ``deid`` the header profile, ``gate`` the last check)."""

    route: str
    action: str
    does: str
    refused: Refused | None = None
    stage: str = ""
    changes: tuple[Change, ...] = ()
    deidentified: Dataset | None = None
    pixels: bool = False  # the route's profile ran the face pipeline on the copy
    qa: dict | None = None  # the face pipeline's QA figures, as the audit trail would record them


# Who stops a file at each stage, in the words ``rules test`` and the Rules page print.
_STOPPED_BY = {
    "pixels": "the face pipeline holds it",
    "deid": "the profile refuses it",
    "gate": "the last gate refuses it",
}


def verdict(outcome: Outcome) -> str:
    """One route's outcome as a line: what the CLI prints and the page shows, so both say the same."""
    if outcome.refused is not None:
        why = f"{_STOPPED_BY[outcome.stage]} ({outcome.refused.code}): {outcome.refused.reason}"
        return f"route {outcome.route}: quarantine, {why}"
    return f"route {outcome.route}: {outcome.does}"


@dataclass(frozen=True)
class Trial:
    """One file against the rules: each route's verdict (None: it matches), then what applies."""

    unreadable: str | None = None
    verdicts: tuple[tuple[str, str | None], ...] = ()
    outcomes: tuple[Outcome, ...] = ()
    unmatched: str | None = None  # what happens when no route matches
    original: Dataset | None = field(default=None, repr=False)


def default_caller(settings: Settings) -> str:
    """The calling AE title a test pretends the file came from: the first allowed caller's."""
    callers = settings.ingress.allowed_callers
    return callers[0].ae_title if callers else ""


def try_file(settings: Settings, source: Path | bytes, calling_ae: str | None = None) -> Trial:
    """Route ``source`` (a path or a file's bytes) with ``settings`` and de-identify it in memory."""
    try:
        ds = read_instance(source)
    except Refused as refused:
        return Trial(unreadable=f"quarantine: cannot read it ({refused.code}): {refused.reason}")
    except OSError as exc:
        return Trial(unreadable=f"cannot read the file ({exc.strerror})")
    caller = default_caller(settings) if calling_ae is None else calling_ae
    rules = Rules(settings)
    verdicts = tuple((route.name, why_not) for route, why_not in rules.explain(ds, caller))
    decisions = rules.decide(ds, caller)
    key = SiteKey(secrets.token_bytes(32))
    outcomes = [_outcome(settings, d, ds, key) for d in decisions]
    return Trial(
        verdicts=verdicts,
        outcomes=tuple(outcomes),
        unmatched=None if decisions else settings.unmatched,
        original=ds,
    )


def _outcome(settings: Settings, d: Decision, ds: Dataset, key: SiteKey) -> Outcome:
    """One route's verdict, reached in the worker's order (``service/worker.py`` ``_apply``)."""
    if d.action != "forward" or d.profile is None:
        return Outcome(d.route.name, d.action, route_action(settings, d.route))
    qa = None
    cleaned: frozenset[Option] = frozenset()
    dataset = ds
    stage = "pixels"
    try:
        if d.profile.pixels is not None:
            # Imported here, as the service does, so that torch loads only for a photo route.
            from .faces.pipeline import process_instance

            photo = process_instance(ds, d.profile.pixels, key)
            dataset, cleaned, qa = photo.dataset, photo.options_cleaned, photo.qa_figures
        stage = "deid"
        profile = Profile(options=d.profile.options)
        result = deidentify(dataset, key, profile, pixels_cleaned=cleaned)
        release(result, profile)
    except Refused as refused:
        stage = "gate" if isinstance(refused, GateFailed) else stage
        return Outcome(d.route.name, "quarantine", "quarantine", refused=refused, stage=stage, qa=qa)
    except Exception as exc:  # fail closed, as the worker does: such a file would not leave either
        refused = Refused("internal-error", f"internal error ({describe_exception(exc)})")
        return Outcome(d.route.name, "quarantine", "quarantine", refused=refused, stage=stage, qa=qa)
    return Outcome(
        d.route.name,
        "forward",
        route_action(settings, d.route),
        changes=result.changes,
        deidentified=result.dataset,
        pixels=d.profile.pixels is not None,
        qa=qa,
    )
