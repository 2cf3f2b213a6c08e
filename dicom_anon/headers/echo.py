"""The patient's own identifiers, looked for in a de-identified copy wherever text is kept.

The profile decides by attribute: it removes Patient's Name and keeps a Code Meaning. A value
that a sender put where the profile does not look (a local code whose meaning is "photo of John
Smith", an ID typed into Manufacturer's Model Name, an element a damaged file renamed) passes
every rule. So the last gate (``gate.release``) also asks the one question that does not depend
on where a value sits: does any text the copy keeps still hold this patient's name or IDs?

Only what cannot turn up by chance is looked for: the name as family and given name together, in
either order (a family name alone is also a lesion's colour or a manufacturer), and IDs of at
least ``MIN_ID_LENGTH`` characters as whole tokens. Dates, times, ages, numbers and UIDs are not
searched: the profile shifts or replaces them, and a date equal to an accession number is no leak.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from .text import is_text

# Shorter IDs ("1234") are also software versions, series numbers and lot numbers.
MIN_ID_LENGTH = 6
_ID_KEYWORDS = ("PatientID", "AccessionNumber", "MedicalRecordLocator", "OtherPatientIDs")
# Whole words: no letter or digit touching either end. Names: spaces, carets or commas between.
_START, _END, _SEPARATOR = r"(?<![^\W_])", r"(?![^\W_])", r"[\s^,]+"


@dataclass(frozen=True)
class Identifiers:
    """The patient's names (family, given) and IDs, lower-cased; never written, logged or shown
    (``repr`` says how many)."""

    names: tuple[tuple[str, str], ...] = ()
    ids: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"Identifiers({len(self.names)} names, {len(self.ids)} IDs)"


def identifiers(ds: Dataset) -> Identifiers:
    """The patient's name and IDs in ``ds`` (the top level, and Other Patient IDs Sequence)."""
    names = tuple((family.lower(), given.lower()) for family, given in _names(ds))
    return Identifiers(names, tuple(dict.fromkeys(v.lower() for v in _ids(ds))))


def find(ds: Dataset, ids: Identifiers) -> tuple[str, str] | None:
    """(what, where) for the first kept text of ``ds`` that holds one of ``ids``, or None.

    Plain substring tests first, a pattern only where they hit: the gate sees every instance,
    and compiling patterns for each one added a quarter to its time on a small instance."""
    if not (ids.names or ids.ids):
        return None
    for prefix, elem in _texts(ds, ""):
        text = _text(elem)
        if any(_token_in(value, text) for value in ids.ids):
            return "ID", _where(prefix, elem)
        for family, given in ids.names:
            if family in text and given in text and _name_in(family, given, text):
                return "name", _where(prefix, elem)
    return None


def _token_in(value: str, text: str) -> bool:
    """Whether ``value`` is in ``text`` with no letter or digit touching it on either side."""
    return value in text and re.search(rf"{_START}{re.escape(value)}{_END}", text) is not None


def _name_in(family: str, given: str, text: str) -> bool:
    f, g = re.escape(family), re.escape(given)
    return re.search(rf"{_START}(?:{f}{_SEPARATOR}{g}|{g}{_SEPARATOR}{f}){_END}", text) is not None


def _names(ds: Dataset) -> Iterator[tuple[str, str]]:
    names = [ds.get("PatientName"), ds.get("PatientBirthName")]
    for value in names:
        if not value:
            continue
        # The alphabetic group: ideographic and phonetic ones are other spellings of the same name.
        parts = str(value).split("=")[0].split("^")
        family, given = [*parts, "", ""][:2]
        # The first given name: many systems put the middle names there too, and "Marianne
        # Echolot" is as telling as "Marianne Louise Echolot".
        family, given = " ".join(family.split()), (given.split() or [""])[0]
        if len(family) >= 2 and len(given) >= 2:
            yield family, given


def _ids(ds: Dataset) -> Iterator[str]:
    values: list[str] = []
    for keyword in _ID_KEYWORDS:
        value = ds.get(keyword)
        values += [str(v) for v in value] if isinstance(value, MultiValue) else [str(value or "")]
    for item in ds.get("OtherPatientIDsSequence") or ():
        values.append(str(item.get("PatientID") or ""))
    for value in values:
        value = value.strip()
        if len(value) >= MIN_ID_LENGTH:
            yield value


def _texts(ds: Dataset, prefix: str) -> Iterator[tuple[str, DataElement]]:
    """Every non-empty text element at any depth (the character-string VRs, and URIs), with the
    path of the sequence items it sits in."""
    for elem in ds:
        if elem.VR == "SQ":
            for index, item in enumerate(elem.value or ()):
                yield from _texts(item, f"{_where(prefix, elem)}[{index}] > ")
        elif (is_text(elem.VR) or elem.VR == "UR") and not elem.is_empty:
            yield prefix, elem


def _text(elem: DataElement) -> str:
    value = elem.value
    return " ".join(map(str, value if isinstance(value, MultiValue | list) else [value])).lower()


def _where(prefix: str, elem: DataElement) -> str:
    return f"{prefix}({elem.tag.group:04X},{elem.tag.element:04X}) {elem.name}"
