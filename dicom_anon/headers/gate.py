"""The last gate: the bytes of a de-identified instance are checked before they may leave.

``release`` is the one way the service (worker) and ``dicom-anon deid`` (batch) turn a
``DeidResult`` into bytes to write or send. It serialises the dataset, reads those bytes
back with the same strict reader as the input (``dicomio.read_instance``), and walks the
re-read dataset against the profile, independently of the walk that produced it:

* nothing the profile removes is there: no private element outside the safe list that
  Retain Safe Private allows, no group length, command or file-meta element in the
  dataset, no overlay, curve, waveform, icon or directory attribute, no attribute the
  dictionary does not know, no attribute whose Table E.1-1 action is X;
* Z attributes are empty, prose (free text the engine cleans) says ``CLEANED`` or nothing,
  kept code strings hold only their terms (``text.clean_code_string``), and Patient Identity
  Removed is YES;
* no text it keeps, in any attribute, holds the input's patient name or IDs (``echo``).

A failure is a ``Refused`` with a ``gate-`` code: the caller quarantines (service) or
refuses (deid), so an engine bug or a value pydicom writes differently from how it holds
it fails closed instead of leaving.
"""

from __future__ import annotations

from io import BytesIO

from pydicom.datadict import dictionary_has_tag, repeater_has_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from ..dicomio import read_instance
from .echo import find
from .engine import PSEUDONYM_TAGS, DeidResult, Profile, private_creator, removed_everywhere, value_vr
from .errors import Refused
from .options import Option
from .table import Table, load_table, resolve
from .text import CLEANED_TEXT, clean_code_string, is_free_text, is_text, names_prose


class GateFailed(Refused):
    """The de-identified bytes broke a rule; the instance must not leave."""


def release(result: DeidResult, profile: Profile) -> bytes:
    """The Part 10 bytes of ``result``, once they passed the gate; raise ``GateFailed`` otherwise."""
    buf = BytesIO()
    try:
        result.dataset.save_as(buf, enforce_file_format=True)
    except Exception as exc:  # pydicom refuses some datasets (command elements, bad values): same answer
        reason = f"the de-identified copy cannot be encoded ({type(exc).__name__})"
        raise GateFailed("gate-unwritable", reason) from None
    data = buf.getvalue()
    try:
        ds = read_instance(data)
    except Refused as refused:
        raise GateFailed(f"gate-{refused.code}", f"the de-identified copy: {refused.reason}") from None
    if ds.get("PatientIdentityRemoved") != "YES":
        raise GateFailed("gate-unmarked", "the de-identified copy does not say Patient Identity Removed YES")
    _Check(load_table(), result.options, profile).dataset(ds, "", dummy=False)
    if (echoed := find(ds, result.identifiers)) is not None:
        what, where = echoed
        reason = f"the de-identified copy still holds the patient's {what} in {where}"
        raise GateFailed("gate-identifier-echo", reason)
    return data


class _Check:
    def __init__(self, table: Table, options: frozenset[Option], profile: Profile) -> None:
        self.table = table
        self.options = options
        self.safe_private = profile.safe_private if Option.RETAIN_SAFE_PRIVATE in options else frozenset()

    def dataset(self, ds: Dataset, prefix: str, *, dummy: bool) -> None:
        for elem in ds:
            tag = elem.tag
            where = f"{prefix}({tag.group:04X},{tag.element:04X})"
            if tag.is_private:
                if not tag.is_private_creator:
                    self._private(ds, elem, where)
                continue
            if tag.element == 0 or tag.group in (0x0000, 0x0002) or removed_everywhere(tag) is not None:
                self._fail("gate-removed-attribute", where, "an attribute the profile removes is present")
            if dummy:
                self._items(elem, where, dummy=True)
                continue
            if not (dictionary_has_tag(tag) or repeater_has_tag(tag)):
                self._fail("gate-unknown-attribute", where, "an attribute the dictionary does not know")
            if int(tag) in PSEUDONYM_TAGS:
                continue
            self._public(elem, where)

    def _public(self, elem: DataElement, where: str) -> None:
        vr = value_vr(elem)
        row = self.table.lookup(elem.tag)
        if row is None:
            if vr == "SQ":
                self._items(elem, where, dummy=False)
            elif is_free_text(vr, elem.keyword):
                self._cleaned(elem, where)
            else:
                self._code_string(elem, where)
            return
        action = resolve(row, self.options, vr=vr, keyword=elem.keyword)
        code = action.code
        if code == "X":
            self._fail("gate-removed-attribute", where, "an attribute the profile removes is present")
        elif code == "Z" and not _is_empty(elem):
            self._fail("gate-not-emptied", where, "an attribute the profile empties holds a value")
        elif vr == "SQ":
            self._items(elem, where, dummy=code == "D")
        elif _must_be_cleaned(code, action.option, vr, elem.keyword):
            self._cleaned(elem, where)
        elif code == "K":
            self._code_string(elem, where)

    def _private(self, ds: Dataset, elem: DataElement, where: str) -> None:
        creator = private_creator(ds, elem.tag)
        key = (creator, elem.tag.element & 0xFF)
        if creator is None or elem.tag.element < 0x1000 or key not in self.safe_private:
            self._fail("gate-private", where, "a private attribute the profile removes is present")
        self._items(elem, where, dummy=False)

    def _items(self, elem: DataElement, where: str, *, dummy: bool) -> None:
        if elem.VR != "SQ":
            return
        for index, item in enumerate(elem.value or ()):
            self.dataset(item, f"{where}[{index}] > ", dummy=dummy)

    def _cleaned(self, elem: DataElement, where: str) -> None:
        if not _is_empty(elem) and str(elem.value) != CLEANED_TEXT:
            self._fail("gate-uncleaned-text", where, "free text the profile cleans is still there")

    def _code_string(self, elem: DataElement, where: str) -> None:
        if value_vr(elem) != "CS" or _is_empty(elem):
            return
        values = [str(v) for v in elem.value] if isinstance(elem.value, MultiValue) else [str(elem.value)]
        if clean_code_string(elem.keyword, values) is not None:
            self._fail("gate-uncleaned-text", where, "a code string holds a value outside its terms")

    @staticmethod
    def _fail(code: str, where: str, what: str) -> None:
        raise GateFailed(code, f"the de-identified copy, {where}: {what}")


def _must_be_cleaned(code: str, option: Option | None, vr: str, keyword: str) -> bool:
    """Prose an option keeps, and text action C cleans (dates it shifts and UIDs it replaces apart)."""
    if code == "K":
        return names_prose(vr, keyword)
    return code == "C" and option is not Option.RETAIN_MODIFIED_DATES and vr != "UI" and is_text(vr)


def _is_empty(elem: DataElement) -> bool:
    value = elem.value
    if isinstance(value, MultiValue | Sequence | list):
        return not value
    return value is None or value == "" or value == b""
