"""Trying the rules on one file, as ``rules test`` and the console's Rules page show it: which route
each rule gives, and what its profile would do to the headers. Nothing is sent or written.

De-identification is really run (in memory, with a throwaway key) so that a file the profile would
refuse shows up as 'quarantine' with the reason, and the header changes are the ones ``deid
--dry-run`` lists; the pseudonyms differ from the service's, whose key never leaves it.
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
from .headers.pseudonyms import SiteKey
from .rules import Rules, route_action


@dataclass(frozen=True)
class Outcome:
    """What one applying route would do: forward (with the de-identified copy and its changes),
    drop, or quarantine (``refused`` says why when the profile cannot make the file safe)."""

    route: str
    action: str
    does: str
    refused: Refused | None = None
    changes: tuple[Change, ...] = ()
    deidentified: Dataset | None = None
    pixels: bool = False  # the route's profile replaces the face (the copy here has headers done only)


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
    outcomes = []
    for d in decisions:
        if d.action != "forward" or d.profile is None:
            outcomes.append(Outcome(d.route.name, d.action, d.action))
            continue
        try:
            result = deidentify(ds, key, Profile(options=d.profile.options))
        except Refused as refused:
            outcomes.append(Outcome(d.route.name, "quarantine", "quarantine", refused=refused))
            continue
        outcomes.append(
            Outcome(
                d.route.name,
                "forward",
                route_action(settings, d.route),
                changes=result.changes,
                deidentified=result.dataset,
                pixels=d.profile.pixels is not None,
            )
        )
    return Trial(
        verdicts=verdicts,
        outcomes=tuple(outcomes),
        unmatched=None if decisions else settings.unmatched,
        original=ds,
    )
