"""Free text: which attributes are prose, and what action C ("clean") leaves of them.

Names, phone numbers and diagnoses hide in descriptions and comments in any
wording ("husband John is emergency contact"). A cleaner that deletes the
identifiers it can recognise would forward the ones it cannot, so cleaning here
is honest rather than clever: the element stays present (its IOD type is
respected) and its value becomes :data:`CLEANED_TEXT`. Coded content (code
sequences, enumerated values) carries the clinical meaning a teaching archive
needs and is not free text.

The same rule covers free text the standard's table does not list (any ST, LT or
UT value, and shorter text whose name says it is a description or note) and
descriptions that an option would keep (Device Description under Retain Device
Identity can name the doctor who owns the camera). Values that an option keeps
for what they identify (Institution Address, Lens Serial Number) are kept: that is
the option's point, whatever their VR.

A code string is coded content only while it holds one of its attribute's terms:
``data/code_strings.json`` lists the Enumerated Values and Defined Terms of the code
strings the image objects carry (PS3.3), and a value outside them ("ORIGINAL\\PRIMARY\\
DR SMITH") is free text in a CS costume, cleaned like any other. pydicom's dictionary has
no terms and no maintained package ships them offline, hence the hand-kept list; code
strings it does not list are kept as they are.
"""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources

from .dummies import base_vr

CLEANED_TEXT = "CLEANED"

# VRs that exist to hold prose.
_PROSE_VRS = frozenset({"ST", "LT", "UT"})
# Shorter text VRs that hold prose when the attribute says so by its name.
_SHORT_TEXT_VRS = frozenset({"LO", "SH", "UC", "PN"})
_PROSE_WORDS = ("Description", "Comment", "Note", "Remark", "History", "Reason")


def is_free_text(vr: str, keyword: str) -> bool:
    """True for prose: ST/LT/UT values, and text values whose keyword names a description or note."""
    return base_vr(vr) in _PROSE_VRS or names_prose(vr, keyword)


def names_prose(vr: str, keyword: str) -> bool:
    """True for a text value whose keyword says it is a description, comment or note."""
    return base_vr(vr) in _PROSE_VRS | _SHORT_TEXT_VRS and any(word in keyword for word in _PROSE_WORDS)


def is_text(vr: str) -> bool:
    """Character-string VRs that action C replaces with :data:`CLEANED_TEXT` (UI and dates apart)."""
    return base_vr(vr) in _PROSE_VRS | _SHORT_TEXT_VRS | {"AE", "CS"}


@cache
def _code_string_terms() -> dict[str, frozenset[str] | re.Pattern[str]]:
    text = resources.files(__package__).joinpath("data", "code_strings.json").read_text(encoding="utf-8")
    terms: dict[str, frozenset[str] | re.Pattern[str]] = {}
    for keyword, entry in json.loads(text).items():
        if keyword.startswith("_"):
            continue
        terms[keyword] = re.compile(entry["pattern"]) if isinstance(entry, dict) else frozenset(entry)
    return terms


def _is_term(terms: frozenset[str] | re.Pattern[str], value: str) -> bool:
    if not value or value == CLEANED_TEXT:  # empty, or already cleaned
        return True
    return value in terms if isinstance(terms, frozenset) else terms.fullmatch(value) is not None


def clean_code_string(keyword: str, values: list[str]) -> list[str] | None:
    """None when every value of the code string ``keyword`` is one of its terms (or it has no list);
    otherwise the values to write, each unknown one replaced by :data:`CLEANED_TEXT` (so the value
    multiplicity, which some objects fix, stays as it was)."""
    terms = _code_string_terms().get(keyword)
    if terms is None or all(_is_term(terms, v) for v in values):
        return None
    return [v if _is_term(terms, v) else CLEANED_TEXT for v in values]
