"""PS3.15 Table E.1-1 as data, and the one rule that turns a row plus options into an action.

The table is the package copy of ``shared/standard/confidentiality_profile_attributes.json``
(Innolitics' machine-readable Table E.1-1, MIT, see ``data/LICENSE-innolitics.txt``); no
tag is typed by hand here, so updating to a newer edition of the standard is a file copy.
That copy is of the 2024 table, and later editions added rows the engine would otherwise keep
as unlisted standard attributes (Ethnic Group Code Sequence, Secondary Capture Device ID, ...):
``data/profile_additions.json`` holds those rows, in the same format, until a newer copy does.

How an action is resolved, in order:

1. Start from the row's ``basicProfile`` code.
2. Each enabled option whose column has an entry for the row overrides it. When two
   enabled options disagree (only K against C happens, e.g. Calibration Date under both
   Retain Device Identity and Retain Modified Dates), the more protective C wins: the
   records officer asked for both, and only C honours both.
3. A combined code (``X/Z``, ``X/D``, ``Z/D``, ``X/Z/D``, ``X/Z/U*``) means "remove unless
   the IOD needs the attribute" (Type 3 -> X, Type 2 -> Z, Type 1 -> D). We have no IOD
   tables, so the rule is:

   * rows whose ``stdCompIOD`` column is ``N`` (no standard IOD uses the attribute) are
     removed (X);
   * otherwise the attribute is kept in the most conformant form the code allows, because
     a dummy satisfies Type 1, 2 and 3 and an empty value satisfies Type 2 and 3: D when
     allowed, else Z. This never keeps an original value, only its presence;
   * sequences are different: a dummy item means nothing, and a sequence with zero items
     is valid only where the sequence is Type 2 (dciodvfy rejects an empty Type 3 one).
     ``X/Z/U*`` (Referenced Image Sequence, Source Image Sequence) keeps the sequence and
     replaces the UIDs inside it (U), so references between de-identified instances work;
     any other combined code gives Z for the sequences listed in
     :data:`TYPE_2_SEQUENCES` and X for the rest.

   In the 2024 table every combined row is ``Y``, so in practice the second and third
   bullets apply.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from pydicom.tag import BaseTag

from .options import OPTION_INFO, Option

TABLE_FILE = "confidentiality_profile_attributes.json"
ADDITIONS_FILE = "profile_additions.json"

# Codes a resolved action can have. "C" is refined by the engine from the option that set it.
SINGLE_CODES = frozenset({"X", "Z", "D", "K", "C", "U"})
COMBINED_CODES = frozenset({"X/Z", "X/D", "Z/D", "X/Z/D", "X/Z/U*"})

# The combined-code sequences of Table E.1-1 that image IODs require as Type 2 (present,
# possibly empty). Keywords from pydicom's dictionary; types from PS3.3: the Acquisition
# Context Module (C.7.6.14) is mandatory in the VL, ophthalmic and other image IODs. The
# other combined-code sequences are Type 3 in the image modules that hold them (General
# Study: Referenced Study; General Series: Referenced Performed Procedure Step, Operator
# Identification; General Equipment: Institution Code) and are removed.
TYPE_2_SEQUENCES = frozenset({"AcquisitionContextSequence"})

# Option columns that can override a row, in the order the standard's table lists them.
_OPTION_COLUMNS: tuple[tuple[Option, str], ...] = tuple(
    (option, info.column) for option, info in OPTION_INFO.items() if info.column is not None
)


@dataclass(frozen=True)
class Row:
    """One row of Table E.1-1."""

    tag: str  # as the standard prints it: "(0010,0010)", "(60XX,3000)", "(GGGG,EEEE) WHERE GGGG IS ODD"
    name: str
    in_std_iod: bool  # the stdCompIOD column: used by some standard composite IOD
    basic: str
    option_codes: dict[Option, str] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class Resolved:
    """The action for one attribute: a single code, and the option that chose it (None = basic profile)."""

    code: str
    option: Option | None = None


class Table:
    """Rows by tag, plus the group wildcards (50xx curves, 60xx overlays) and the private row."""

    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows
        self._exact: dict[int, Row] = {}
        self._wildcard: dict[tuple[int, int | None], Row] = {}  # (base group, element or None = any)
        self.private: Row | None = None
        for row in rows:
            text = row.tag
            if "WHERE GGGG IS ODD" in text.upper():
                self.private = row
                continue
            group, element = text.strip("()").split(",")
            if group.upper().endswith("XX"):
                base = int(group[:2] + "00", 16)
                elem = None if element.upper() == "XXXX" else int(element, 16)
                self._wildcard[(base, elem)] = row
            else:
                self._exact[int(group + element, 16)] = row
        if self.private is None:
            raise ValueError("Table E.1-1 data has no 'Private Attributes' row")

    def __len__(self) -> int:
        return len(self.rows)

    def lookup(self, tag: int) -> Row | None:
        """The row governing ``tag``; None for attributes the standard does not list."""
        tag = BaseTag(tag)
        if tag.is_private:
            return self.private
        row = self._exact.get(int(tag))
        if row is not None:
            return row
        base = repeating_group_base(tag.group)
        if base is None:
            return None
        return self._wildcard.get((base, tag.element)) or self._wildcard.get((base, None))


def repeating_group_base(group: int) -> int | None:
    """0x5000 or 0x6000 for the even repeating groups 5000-501E (curves) and 6000-601E (overlays)."""
    for base in (0x5000, 0x6000):
        if base <= group <= base + 0x1E and group % 2 == 0:
            return base
    return None


def _data(name: str) -> Any:
    return json.loads(resources.files(__package__).joinpath("data", name).read_text(encoding="utf-8"))


@cache
def load_table() -> Table:
    """The packaged Table E.1-1 with the rows later editions added, parsed once per process."""
    rows = []
    for entry in [*_data(TABLE_FILE), *_data(ADDITIONS_FILE)["rows"]]:
        codes = {opt: entry[col] for opt, col in _OPTION_COLUMNS if entry.get(col)}
        rows.append(
            Row(
                tag=entry["tag"],
                name=" ".join(entry["name"].split()),
                in_std_iod=entry.get("stdCompIOD") == "Y",
                basic=entry["basicProfile"],
                option_codes=codes,
            )
        )
    return Table(rows)


def resolve(row: Row, options: frozenset[Option], *, vr: str, keyword: str) -> Resolved:
    """The single action for ``row`` under ``options`` (see the module docstring for the rule)."""
    chosen = [(code, opt) for opt, code in row.option_codes.items() if opt in options]
    if chosen:
        # Only K and C occur in option columns; C is the more protective.
        code, opt = min(chosen, key=lambda pair: (pair[0] != "C", pair[1].value))
        return Resolved(code, opt)
    return Resolved(choose_combined(row.basic, in_std_iod=row.in_std_iod, vr=vr, keyword=keyword))


def choose_combined(code: str, *, in_std_iod: bool, vr: str, keyword: str) -> str:
    """Turn a (possibly combined) basic-profile code into one of X, Z, D, U, K, C."""
    if code in SINGLE_CODES:
        return code
    if code not in COMBINED_CODES:
        raise ValueError(f"unknown action code {code!r} in Table E.1-1 data")
    allowed = code.rstrip("*").split("/")
    if not in_std_iod and "X" in allowed:
        return "X"
    if "U" in allowed:
        return "U"
    if vr == "SQ":
        return "Z" if keyword in TYPE_2_SEQUENCES and "Z" in allowed else "X"
    return "D" if "D" in allowed else "Z"
