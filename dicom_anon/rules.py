"""Matching an instance to routes: the records officer's rules, applied in file order.

Kept free of networking and de-identification so that ``rules test`` can show exactly
what the service would decide, from the same code, without sending anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .config import Match, ProfileSettings, Route, Settings, compile_pattern
from .dicom_names import uid_keyword
from .views import covers, recognise

if TYPE_CHECKING:
    import re2
    from pydicom.dataset import Dataset

# pydicom itself is imported only where an instance is matched: ``rules check`` (the route table)
# needs none of it, and importing it was most of that command's start-up.


def attribute_text(ds: Dataset, keyword: str) -> str:
    """An attribute as text for matching: multiple values joined by a backslash, absent = ''."""
    from pydicom.multival import MultiValue

    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


@dataclass(frozen=True)
class Decision:
    """One route that applies to an instance, with what the service will do for it."""

    route: Route
    profile: ProfileSettings | None

    @property
    def action(self) -> str:
        return self.route.action


class _CompiledMatch:
    """A Match with its regular expressions compiled once per load, not once per instance."""

    def __init__(self, match: Match) -> None:
        self.match = match
        self.calling_ae = {a.upper() for a in match.calling_ae}
        self.sop_class = set(match.sop_class)
        self.modality = {m.strip().upper() for m in match.modality}
        self.body_part = {b.strip().upper() for b in match.body_part}
        # RE2 (``config.compile_pattern``): no header value can make a search take longer than its length.
        self.patterns: list[tuple[str, str, re2._Regexp]] = []
        for keyword, label, pattern in (
            ("StudyDescription", "study_description", match.study_description),
            ("SeriesDescription", "series_description", match.series_description),
            ("InstitutionName", "institution", match.institution),
        ):
            if pattern is not None:
                self.patterns.append((keyword, label, compile_pattern(pattern)))
        for keyword, pattern in match.attributes.items():
            self.patterns.append((keyword, f"attributes.{keyword}", compile_pattern(pattern)))
        self.views = list(match.view)

    def why_not(self, ds: Dataset, calling_ae: str) -> str | None:
        """None when the instance matches, else the first condition that failed (for ``rules test``)."""
        if self.calling_ae and calling_ae.strip().upper() not in self.calling_ae:
            return f"calling AE {calling_ae!r} is not one of {sorted(self.calling_ae)}"
        if self.sop_class and str(ds.get("SOPClassUID", "")) not in self.sop_class:
            return f"SOP class {ds.get('SOPClassUID', '(none)')} is not listed"
        for label, wanted, keyword in (
            ("modality", self.modality, "Modality"),
            ("body_part", self.body_part, "BodyPartExamined"),
        ):
            if wanted and attribute_text(ds, keyword).upper() not in wanted:
                return f"{label} {attribute_text(ds, keyword)!r} is not one of {sorted(wanted)}"
        for keyword, label, pattern in self.patterns:
            if not pattern.search(attribute_text(ds, keyword)):
                return f"{label} does not match {pattern.pattern!r}"
        if self.views:
            view = recognise(ds)
            if not covers(self.views, view.name):
                return f"view {view.name or '(not recognised)'} is not one of {self.views}"
        return None


class Rules:
    """The routes of one settings file, ready to apply. Replaced whole on reload, never edited."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._routes = [(route, _CompiledMatch(route.match)) for route in settings.routes]

    @property
    def unmatched(self) -> str:
        return self.settings.unmatched

    def decide(self, ds: Dataset, calling_ae: str) -> list[Decision]:
        """The routes that apply, in file order; the first without ``continue: true`` ends the list."""
        decisions = []
        for route, compiled in self._routes:
            if compiled.why_not(ds, calling_ae) is None:
                profile = self.settings.profile(route.profile) if route.profile else None
                decisions.append(Decision(route, profile))
                if not route.continue_:
                    break
        return decisions

    def explain(self, ds: Dataset, calling_ae: str) -> list[tuple[Route, str | None]]:
        """Every route with the reason it did not match (None: it matched), for ``rules test``."""
        return [(route, compiled.why_not(ds, calling_ae)) for route, compiled in self._routes]


# --- the routes as a person reads them (``rules check``, the console's Rules page) ---------------


@dataclass(frozen=True)
class RouteLine:
    """One row of the route table: a records officer reads the file in this form, so ``rules check``
    and the console print the same words."""

    number: int
    name: str
    matches: str
    does: str
    then: str


def match_summary(route: Route) -> str:
    """The route's conditions in words: ``modality in XC; study description ~ /ortho/``."""
    parts = []
    m = route.match
    for label, value in (
        ("calling AE", m.calling_ae),
        ("SOP class", [_sop_name(u) for u in m.sop_class]),
        ("modality", m.modality),
        ("body part", m.body_part),
        ("view", m.view),
    ):
        if value:
            parts.append(f"{label} in {', '.join(value)}")
    for label, pattern in (
        ("study description", m.study_description),
        ("series description", m.series_description),
        ("institution", m.institution),
    ):
        if pattern is not None:
            parts.append(f"{label} ~ /{pattern}/")
    for keyword, pattern in m.attributes.items():
        parts.append(f"{keyword} ~ /{pattern}/")
    return "; ".join(parts) or "everything"


def _sop_name(uid: str) -> str:
    return uid_keyword(uid) or uid


def route_action(settings: Settings, route: Route) -> str:
    """What the route does with an instance it matches, profile options and pixels included."""
    if route.action != "forward":
        return f"{route.action} ({route.reason})" if route.reason else route.action
    profile = settings.profile(route.profile or "")
    pixels = ""
    if profile.pixels is not None and profile.pixels.method == "keep":
        pixels = "; pixels: unchanged, held if a face or eyes are found"
    elif profile.pixels is not None:
        kept = ", ".join(profile.pixels.preserve) or "nothing"
        pixels = f"; pixels: replace the face ({profile.pixels.method}), keep {kept} exactly"
    options = ", ".join(sorted(o.value for o in profile.options)) or "no options"
    holds = {True: ", held for review", "unsure-sex": ", held for review where a new face's sex is a guess"}
    held = holds.get(route.hold_for_review, "")
    return f"de-identify ({route.profile}: {options}{pixels}) -> {', '.join(route.destinations)}{held}"


def route_lines(settings: Settings) -> list[RouteLine]:
    """Every route in the order it is applied, and last what happens to an instance none matches."""
    lines = [
        RouteLine(
            i,
            route.name,
            match_summary(route),
            route_action(settings, route),
            "later routes too" if route.continue_ else "stop",
        )
        for i, route in enumerate(settings.routes, start=1)
    ]
    return [*lines, RouteLine(0, "(no match)", "", settings.unmatched, "")]
