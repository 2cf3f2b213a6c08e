"""Strict reading: an instance is de-identified only if every element is what its header says.

pydicom reads leniently, and a lenient parse must not be trusted with patient data. The
worst case is a length that is too large: the element then swallows the elements after
it (Patient's Name, a private CSA block) into its own value, the profile never sees
them, and they leave inside an attribute the profile keeps. Such a value always breaks
a rule of its VR or of the attribute: a US with sixteen values where the dictionary
allows one, a code string with binary tag bytes in it, Pixel Data longer than its
rows and columns. So every element is checked against those rules, and the first
that fails refuses the instance with :class:`NotStrict` (a ``Refused``):

* the VR is one the data dictionary allows for the tag (or UN), its length fits the VR
  (a whole number of binary values, no undefined length outside sequences and
  encapsulated Pixel Data) and the value is complete (not cut short by the end of the file);
* the value multiplicity is one the dictionary allows for the keyword (so a single-valued
  UID holds one UID), and a binary value holds no element headers (``_holds_elements``:
  what a swallowing length leaves where VR and multiplicity cannot tell) and no sequence's
  item left open (``_opens_an_item``: its elements would be read out of their sequence);
* each value passes pydicom's own validation for its VR (maximum lengths, the character
  rules of AE, AS, CS, DA, DS, DT, IS, TM and UI, PN components), and text holds no
  control characters (pydicom does not check these for LO, SH, PN, ST, LT, UT; a value
  that swallowed binary element headers always has some) and nothing that could not
  be decoded in its character set, which must be one DICOM defines;
* sequences nest at most :data:`MAX_DEPTH` deep (real objects stay far below; deeper ones
  exist to exhaust a reader's stack);
* the elements of every data set come in ascending tag order, and a sequence of defined length
  holds whole items: a length cut short otherwise lets an item's elements be read as the
  enclosing data set's (pydicom ends the item silently where the sequence's bytes end), out of
  the place the profile judges them in: a Channel Source Sequence read out of the Waveform
  Sequence it belongs to, which the profile removes, kept its Code Meaning;
* Pixel Data is native with exactly the length its image attributes give, or
  encapsulated (item-framed) only under an encapsulated transfer syntax, with a
  Basic Offset Table of one entry per frame when present and fragments that make up
  exactly Number of Frames frames; an ICC Profile is as long as its own header says.

Private elements are checked only for framing (complete values, nesting depth, and no sequence
item opened inside a value and left open: ``_opens_an_item``): the profile removes them, and the
dictionary says nothing about them.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from functools import lru_cache

import numpy as np
from pydicom import config
from pydicom.charset import python_encoding
from pydicom.datadict import DicomDictionary, dictionary_VM, dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames, parse_basic_offsets, parse_fragments
from pydicom.multival import MultiValue
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import UID
from pydicom.valuerep import VR as VR_
from pydicom.valuerep import validate_value

from .errors import Refused

# Deeper than any real object nests (an SR content tree of a long report reaches about ten).
MAX_DEPTH = 16

UNDEFINED_LENGTH = 0xFFFFFFFF
PIXEL_DATA = 0x7FE00010
SPECIFIC_CHARACTER_SET = 0x00080005
ICC_PROFILE = 0x00282000
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_ITEM_DELIMITERS = frozenset({0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD})
# An item's header (tag group, tag element, length) by byte order, and the item delimiter in each.
_ITEM_HEADERS = {little: struct.Struct("<HHL" if little else ">HHL") for little in (True, False)}
_ITEM_END = {little: header.pack(0xFFFE, 0xE00D, 0) for little, header in _ITEM_HEADERS.items()}

# Bytes per value of the binary VRs: a length that is not a multiple cannot be decoded.
_VALUE_SIZE = {
    "AT": 4,
    "FD": 8,
    "FL": 4,
    "OD": 8,
    "OF": 4,
    "OL": 4,
    "OV": 8,
    "OW": 2,
    "SL": 4,
    "SS": 2,
    "SV": 8,
    "UL": 4,
    "US": 2,
    "UV": 8,
}
_TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
)
# PS3.5 6.1.3: text VRs hold no control characters but ESC (character set switches) and, in
# prose, TAB, LF, FF and CR. Those four are tolerated everywhere because modalities write them
# into LO values (the deid-data ultrasound has a CR in Reason for Study) and they carry no
# structure; a value that swallowed binary element headers always has a NUL or another control
# byte. U+FFFD is what a value that could not be decoded in its character set became.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f\x7f\ufffd]")
_BINARY_VRS = frozenset(_VALUE_SIZE) | {"OB", "UN"}
_ALL_VRS = frozenset(VR_.__members__)
# The VRs whose explicit VR header has two reserved bytes and a 4-byte length.
LONG_HEADER_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
_DICTIONARY_GROUPS = np.array(sorted({tag >> 16 for tag in DicomDictionary}), dtype=np.uint16)
_VM = re.compile(r"^(\d+)(?:-(\d*)(n)?)?$")


_OPENS_AN_ITEM = (
    "its value ends inside a sequence item it swallowed: what follows would be read out of its sequence"
)


class NotStrict(Refused):
    """The instance does not parse strictly; ``code`` says which rule it broke."""


def check_strict(ds: Dataset) -> None:
    """Raise :class:`NotStrict` unless every element of ``ds`` (file meta included) parses strictly."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        _check_dataset(meta, "", 0, meta=True)
    tsyntax = UID(meta.get("TransferSyntaxUID", "")) if meta is not None else UID("")
    # An unknown transfer syntax is read_instance's to refuse, with its own code.
    encapsulated = tsyntax.is_transfer_syntax and tsyntax.is_encapsulated
    explicit = not (tsyntax.is_transfer_syntax and tsyntax.is_implicit_VR)
    little = not (tsyntax.is_transfer_syntax and not tsyntax.is_little_endian)
    _check_dataset(ds, "", 0, explicit=explicit, little=little)
    if PIXEL_DATA in ds:
        _check_pixel_data(ds, encapsulated=encapsulated)
    if ICC_PROFILE in ds:
        _check_icc_profile(ds[ICC_PROFILE].value)


def _refuse(code: str, where: str, what: str) -> Refused:
    return NotStrict(code, f"{where}: {what}")


def _where(prefix: str, tag: int) -> str:
    """Where an element is, as a refusal names it; built only for a refusal (most elements pass)."""
    return f"{prefix}({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _refuse_at(code: str, prefix: str, tag: int, what: str) -> Refused:
    return _refuse(code, _where(prefix, tag), what)


def _check_dataset(
    ds: Dataset, prefix: str, depth: int, *, explicit: bool = True, meta: bool = False, little: bool = True
) -> None:
    previous = -1
    for tag in ds.keys():  # noqa: SIM118 - in the file's order; iterating a Dataset sorts and converts
        raw = ds.get_item(tag)
        group = tag >> 16
        if (group == 0x0002) != meta or group == 0x0000:
            # Command elements (and file meta elements) have no place in a dataset: pydicom cannot
            # even write them back, so they would stall the queue as an unwritable output.
            raise _refuse_at(
                "bad-structure", prefix, tag, "a command or file meta element inside the dataset"
            )
        if tag <= previous:
            raise _refuse_at("bad-structure", prefix, tag, f"out of order, after {_where('', previous)}")
        previous = tag
        if isinstance(raw, RawDataElement):
            _check_raw(raw, prefix)
        elem = ds[tag]
        if elem.VR == "SQ":
            if depth + 1 > MAX_DEPTH:
                raise _refuse_at("too-deep", prefix, tag, f"sequences nested more than {MAX_DEPTH} deep")
            if isinstance(raw, RawDataElement) and not _whole_items(raw, little):
                raise _refuse_at("bad-structure", prefix, tag, "its items do not fit its length")
            where = _where(prefix, tag)
            for index, item in enumerate(elem.value):
                _check_dataset(item, f"{where}[{index}] > ", depth + 1, explicit=explicit, little=little)
            continue
        undecoded = raw.value if isinstance(raw, RawDataElement) else None
        if not group & 1:
            # Binary values are checked as read: pydicom turns US, FL, FD... into numbers.
            _check_public(elem, undecoded, prefix, explicit, little)
        elif isinstance(undecoded, bytes) and _opens_an_item(undecoded, little):
            raise _refuse_at("bad-length", prefix, tag, _OPENS_AN_ITEM)


def _whole_items(raw: RawDataElement, little: bool) -> bool:
    """Whether a sequence's undecoded value (of defined length) is whole items, each within it.

    pydicom reads an item that claims more bytes than the sequence has as the bytes there are,
    without a word. An item of undefined length is taken on trust once an item delimiter
    follows it: pydicom finds where it ends.
    """
    value = raw.value
    if not isinstance(value, bytes) or raw.length == UNDEFINED_LENGTH:
        return True
    header = _ITEM_HEADERS[little]
    pos = 0
    while pos < len(value):
        if len(value) - pos < header.size:
            return False
        group, element, length = header.unpack_from(value, pos)
        if (group, element) != (0xFFFE, 0xE000):
            return False
        if length == UNDEFINED_LENGTH:
            return value.find(_ITEM_END[little], pos + header.size) >= 0
        pos += header.size + length
    return pos == len(value)


def _opens_an_item(value: bytes, little: bool) -> bool:
    """Whether a value holds a sequence's header and the header of its item, and the item does
    not end inside the value.

    A length too large on an element that no dictionary rule catches (a private one, a lookup
    table's data) can swallow a sequence's header and its item's header: the item's elements are
    then read as the enclosing data set's, out of the sequence the profile judges them in
    (benchmarks/fuzz_deid.py, seed 777: a Channel Source Sequence read out of the Waveform
    Sequence, Code Meaning and all). An item counts only right after a sequence's header or
    after a whole item before it, so a vendor's embedded data set (whole items) is left alone;
    random bytes match about once in 10^10 offsets (an item's tag right after what could be any
    private element's implicit-VR header).
    """
    header = _ITEM_HEADERS[little]
    item = header.pack(0xFFFE, 0xE000, 0)[:4]
    whole_ends: set[int] = set()  # where the whole items found so far end
    # The next item delimitation after the last item of undefined length, found once for all the
    # items before it: a value of many such headers would otherwise be scanned once for each.
    delimiter = -1
    pos = value.find(item)
    while pos >= 0:
        if pos % 2 == 0 and (pos in whole_ends or _sequence_header_ends_at(value, pos, little)):
            if pos + header.size > len(value):
                return True  # the value ends inside the item's header
            length = header.unpack_from(value, pos)[2]
            if length == UNDEFINED_LENGTH:
                if delimiter < pos + header.size:
                    delimiter = value.find(_ITEM_END[little], pos + header.size)
                if delimiter < 0:
                    return True
                whole_ends.add(delimiter + header.size)
            elif pos + header.size + length > len(value):
                return True
            else:
                whole_ends.add(pos + header.size + length)
        pos = value.find(item, pos + 1)
    return False


def _sequence_header_ends_at(value: bytes, pos: int, little: bool) -> bool:
    """Whether the header of a sequence element ends at ``pos``, in either VR encoding whatever the
    transfer syntax says (pydicom reads explicit VR where it finds it): in explicit VR any element
    that says SQ, in implicit VR a dictionary sequence or any private data element (whose VR only
    its creator knows)."""
    layout = "<HH" if little else ">HH"
    if pos >= 12 and value[pos - 8 : pos - 4] == b"SQ\x00\x00":
        group, element = struct.unpack_from(layout, value, pos - 12)
        if group & 1 or (group << 16 | element) in DicomDictionary:
            return True
    if pos < 8:
        return False
    group, element = struct.unpack_from(layout, value, pos - 8)
    if group & 1:
        return element >= 0x1000
    tag = group << 16 | element
    return tag in DicomDictionary and dictionary_VR(tag) == "SQ"


def _check_raw(raw: RawDataElement, prefix: str) -> None:
    """What only the undecoded element shows: its declared length against the bytes it got."""
    if raw.length != UNDEFINED_LENGTH and raw.value is not None and len(raw.value) != raw.length:
        raise _refuse_at(
            "corrupt-dicom",
            prefix,
            raw.tag,
            f"value truncated ({len(raw.value)} of {raw.length} bytes)",
        )
    if int(raw.tag) in _ITEM_DELIMITERS:
        raise _refuse_at(
            "bad-structure", prefix, raw.tag, "an item or delimiter tag where an element belongs"
        )


@lru_cache(maxsize=4096)
def _dictionary(tag: int) -> tuple[str, tuple[str, ...], str] | None:
    """The dictionary's VR (as written, and split) and VM for ``tag``, or None for a tag it does
    not know. Cached: a photo holds ~160 elements of a few dozen tags, and the lookup (with its
    repeater masks) was a tenth of the check."""
    try:
        allowed_vrs = dictionary_VR(tag)
        vm = dictionary_VM(tag)
    except KeyError:
        return None
    return allowed_vrs, tuple(allowed_vrs.split(" or ")), vm


def _check_public(
    elem: DataElement, undecoded: bytes | None, prefix: str, explicit: bool, little: bool
) -> None:
    tag = int(elem.tag)
    known = _dictionary(tag)
    if known is None:
        return  # not in the dictionary: the profile removes it
    allowed_vrs, allowed, vm = known
    vr = elem.VR
    if vr != "UN" and vr not in allowed:
        raise _refuse_at("wrong-vr", prefix, tag, f"VR {vr}, the dictionary says {allowed_vrs}")
    if elem.is_undefined_length and tag != PIXEL_DATA:
        raise _refuse_at("bad-length", prefix, tag, f"undefined length on a {vr} element")
    count = elem.VM
    if count and not _vm_allows(vm, count):
        raise _refuse_at("bad-multiplicity", prefix, tag, f"{count} values, the dictionary allows {vm}")
    value = elem.value
    binary = undecoded if undecoded is not None else value
    if vr in _BINARY_VRS and isinstance(binary, bytes | bytearray):
        size = _VALUE_SIZE.get(vr, 1)
        if len(binary) % size:
            raise _refuse_at(
                "bad-length", prefix, tag, f"{len(binary)} bytes is not a whole number of {vr} values"
            )
        if tag != PIXEL_DATA and _holds_elements(bytes(binary), explicit):
            raise _refuse_at(
                "bad-length", prefix, tag, "its value holds what look like the elements after it"
            )
        if tag != PIXEL_DATA and _opens_an_item(bytes(binary), little):
            raise _refuse_at("bad-length", prefix, tag, _OPENS_AN_ITEM)
    if vr in _TEXT_VRS:
        for text in _texts(value):
            _check_text(vr, text, prefix, tag)
    if tag == SPECIFIC_CHARACTER_SET and any(t not in python_encoding for t in _texts(value)):
        # pydicom would fall back to its default and decode the text as something it is not.
        raise _refuse_at("bad-value", prefix, tag, "a character set DICOM does not define")


@lru_cache(maxsize=1024)
def _vm_allows(vm: str, count: int) -> bool:
    """Whether the dictionary's VM ("1", "1-3", "1-n", "2-2n") allows ``count`` values."""
    match = _VM.match(vm)
    if match is None:
        return True  # a form the dictionary does not use today: do not guess
    low, high, unbounded = int(match[1]), match[2], match[3]
    if high is None:
        return count == low
    if unbounded:
        return count >= low and count % int(high or 1) == 0
    return low <= count <= int(high)


def _texts(value: object) -> Iterator[str]:
    if value is None:
        return
    values = value if isinstance(value, MultiValue | list) else [value]
    for v in values:
        if v is not None:
            yield str(v)


def _check_text(vr: str, text: str, prefix: str, tag: int) -> None:
    if _CONTROL.search(text):
        raise _refuse_at(
            "bad-value", prefix, tag, f"{vr} value holds control characters or undecodable bytes"
        )
    try:
        validate_value(vr, text, config.RAISE)
    except ValueError as exc:
        raise _refuse_at(
            "bad-value", prefix, tag, str(exc).replace(text, "…") if len(text) > 3 else str(exc)
        ) from None
    if vr == "UI" and not UID(text).is_valid:
        raise _refuse_at("bad-uid", prefix, tag, "not a valid UID")


def _check_pixel_data(ds: Dataset, *, encapsulated: bool) -> None:
    elem = ds[PIXEL_DATA]
    where = "(7FE0,0010) Pixel Data"
    # PS3.5 A.4 wants undefined length for encapsulated data; a defined length whose value is
    # framed exactly as fragments (checked below) is tolerated, as pydicom writes it when a
    # sender forgets to ask for undefined length. The other way round, items under a native
    # transfer syntax, is a decoder's guess and a hiding place: the metadata segments of a
    # JPEG nobody knows is there would never be stripped.
    if elem.is_undefined_length and not encapsulated:
        raise _refuse("encapsulation-mismatch", where, "encapsulated under a native transfer syntax")
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        raise _refuse("bad-value", "(0028,0008) Number of Frames", "not a number") from None
    if frames < 1:
        raise _refuse("bad-value", "(0028,0008) Number of Frames", "less than one frame")
    if encapsulated:
        buffer = elem.value or b""
        if not elem.is_undefined_length and buffer.endswith(_SEQUENCE_DELIMITER):
            buffer = buffer[: -len(_SEQUENCE_DELIMITER)]
        _check_encapsulated(ds, buffer, frames, where)
        return
    try:
        expected = get_expected_length(ds)
    except (AttributeError, TypeError, ValueError):
        raise _refuse("pixel-data-mismatch", where, "the image attributes it needs are missing") from None
    length = len(elem.value or b"")
    if length not in (expected, expected + expected % 2):
        raise _refuse("pixel-data-mismatch", where, f"{length} bytes where the image needs {expected}")


def _check_encapsulated(ds: Dataset, buffer: bytes, frames: int, where: str) -> None:
    """The offset table and the fragments must describe exactly ``frames`` frames, nothing outside them."""
    try:
        offsets = parse_basic_offsets(buffer)
        bot_end = 8 + 4 * len(offsets)
        count, starts = parse_fragments(buffer[bot_end:])
    except (ValueError, Exception) as exc:  # struct.error too: the framing is broken either way
        raise _refuse("bad-encapsulation", where, f"broken item framing ({exc})") from None
    if count == 0:
        raise _refuse("bad-encapsulation", where, "no fragment after the Basic Offset Table")
    lengths = [int.from_bytes(buffer[bot_end + s + 4 : bot_end + s + 8], "little") for s in starts]
    end = bot_end + starts[-1] + 8 + lengths[-1]
    if end != len(buffer):
        raise _refuse("bad-encapsulation", where, "the fragments do not end where the Pixel Data does")
    if offsets:
        if len(offsets) != frames or offsets[0] != 0 or not set(offsets) <= set(starts):
            raise _refuse(
                "bad-encapsulation", where, "the Basic Offset Table does not list one fragment per frame"
            )
    elif count < frames:
        raise _refuse("bad-encapsulation", where, f"{count} fragments for {frames} frames")
    extended = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        extended = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    try:
        found = sum(
            1
            for frame in generate_frames(buffer, number_of_frames=frames, extended_offsets=extended)
            if frame
        )
    except Exception as exc:  # pydicom raises several types for frames it cannot delimit
        raise _refuse("bad-encapsulation", where, f"cannot split it into frames ({exc})") from None
    if found != frames:
        raise _refuse("bad-encapsulation", where, f"{found} frames where Number of Frames says {frames}")


def _check_icc_profile(value: bytes | None) -> None:
    """ICC.1 7.2.2: the profile's first four bytes give its size; padding to even length adds one."""
    data = value or b""
    declared = int.from_bytes(data[:4], "big")
    if len(data) < 128 or len(data) not in (declared, declared + declared % 2):
        raise _refuse("bad-length", "(0028,2000) ICC Profile", "not as long as its own header says")


def _holds_elements(value: bytes, explicit: bool) -> bool:
    """Whether a binary value holds the header of an element that should have followed it.

    A too-long length on a binary attribute that may hold many values (a lookup table, an ICC
    profile, FD 1-n) leaves no trace in its VR or multiplicity: the swallowed elements are just
    more bytes, written out again unchanged. Their headers are still there, at even offsets. A
    strong sign is a tag the dictionary knows followed (explicit VR) by that tag's VR, or a
    private creator followed by LO, with a length that fits; random data shows one about once
    in 10^10 offsets. A weak sign (a private element with some VR; any known tag or private
    creator in implicit VR, where no VR letters follow) counts only when another header follows
    its value, or its value ends exactly where the swallowing value does.
    """
    count = len(value) // 2
    if count < 4:
        return False
    # In windows, so that the arrays stay small whatever the value's size: whole, a 100 MB value
    # took 1.1 GB (explicit VR) and 1.75 GB (implicit) of numpy arrays.
    for first in range(0, count - 1, _WINDOW_WORDS):
        stop = min(first + _WINDOW_WORDS, count - 1)
        candidates = _candidates(value, first, stop, count, explicit)
        if any(_header_at(value, 2 * int(k), explicit, follow=True) for k in candidates):
            return True
    return False


_WINDOW_WORDS = 1 << 20


def _candidates(value: bytes, first: int, stop: int, count: int, explicit: bool) -> np.ndarray:
    """Word offsets in ``[first, stop)`` where an element header could start (``_holds_elements``).

    Every array covers the window and the three words after it only: over everything before the
    window too, the work grew with the square of the value's size."""
    words = np.frombuffer(value, "<u2", count=min(count, stop + 3) - first, offset=2 * first)
    groups = words[: stop - first]
    odd = groups & 1 == 1
    possible = (groups >= 0x0008) & (np.isin(groups, _DICTIONARY_GROUPS) | odd)
    if explicit:
        raw = np.frombuffer(value, np.uint8, count=2 * len(words), offset=2 * first)
        upper = (raw >= 0x41) & (raw <= 0x5A)
        letters = upper[4::2] & upper[5::2]
        size = min(len(possible), len(letters))
        possible = possible[:size] & letters[:size]
    else:
        # No VR letters to go by: the 32-bit length that follows must fit in what is left.
        usable = max(0, min(stop, count - 3) - first)
        lengths = np.zeros(len(possible), dtype=np.int64)
        low, high = words[2 : 2 + usable].astype(np.int64), words[3 : 3 + usable].astype(np.int64)
        lengths[:usable] = low | (high << 16)
        offsets = 2 * np.arange(first, first + len(possible), dtype=np.int64)
        possible &= (np.arange(len(possible)) < usable) & (offsets + 8 + lengths <= len(value))
    return first + np.flatnonzero(possible)


def _header_at(value: bytes, offset: int, explicit: bool, *, follow: bool) -> bool:
    """Whether a plausible element header starts at ``offset`` (see ``_holds_elements``)."""
    if offset + 8 > len(value):
        return False
    group, element = struct.unpack_from("<HH", value, offset)
    tag = group << 16 | element
    creator = bool(group & 1) and 0x10 <= element <= 0xFF
    known = not group & 1 and tag in DicomDictionary
    if not (known or group & 1):
        return False
    if explicit:
        vr = value[offset + 4 : offset + 6].decode("latin-1")
        if vr not in _ALL_VRS:
            return False
        strong = (known and vr in dictionary_VR(tag).split(" or ")) or (creator and vr == "LO")
        if vr in LONG_HEADER_VRS:
            length, start = int.from_bytes(value[offset + 8 : offset + 12], "little"), offset + 12
        else:
            length, start = int.from_bytes(value[offset + 6 : offset + 8], "little"), offset + 8
    else:
        strong = False
        length, start = int.from_bytes(value[offset + 4 : offset + 8], "little"), offset + 8
    end = start + length
    if length == UNDEFINED_LENGTH or end > len(value):
        return False
    if strong or end == len(value):
        return True
    return follow and _header_at(value, end, explicit, follow=False)
