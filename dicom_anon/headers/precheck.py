"""The bytes of an instance walked once before pydicom parses them: how much it would build.

pydicom builds every element of a data set in memory and inflates a deflated data set whole,
before strict reading (``headers.strict``) can look at any of it. Three inputs abuse that:

* a deflated data set: 2 MB of zeros deflated inflate to 2 GB (reading one took 4 GB);
* a data set of tiny elements: a 5 MB file of 500,000 two-byte private elements took 30 s and
  280 MB to read and refuse; the 512 MiB an instance may have would hold 60 million, half a
  day of one core and more memory than the machine has;
* text that switches character sets every few bytes: pydicom decodes it one escape sequence at
  a time, 0.35 s a MB (minutes for a large instance).

Here the element headers are walked with ``struct`` (values skipped, never converted) and
counted, sequence items, Pixel Data fragments and the escape sequences in text values
included, nested sequences followed (with the transfer syntax's VR rules, and implicit VR
inside an undefined-length UN, as pydicom reads it). The walk stops at :data:`MAX_ELEMENTS`;
damage it meets (a length past the end, a missing delimiter) ends it quietly, since strict
reading refuses such data with its own reason.
Hand-written because pydicom's own element generator builds what it walks.
"""

from __future__ import annotations

import struct
import zlib
from functools import lru_cache

from pydicom.datadict import dictionary_VR
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

from .errors import Refused
from .strict import LONG_HEADER_VRS

# Photos hold a few hundred elements; a long SR report or a multi-frame object with per-frame
# groups tens of thousands, a Japanese name four escape sequences. Reading 100,000 elements takes
# about 3 s and 35 MB, decoding 100,000 escape sequences 0.2 s.
MAX_ELEMENTS = 100_000

_LONG_VRS = frozenset(vr.encode() for vr in LONG_HEADER_VRS)
# The VRs pydicom decodes with the Specific Character Set, escape sequence by escape sequence.
_TEXT_VRS = frozenset({b"SH", b"LO", b"ST", b"LT", b"UC", b"UT", b"PN"})
_ESC = 0x1B
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
_DEEPEST = 64  # strict reading refuses far shallower nesting; deeper is not walked
_INFLATE_STEP = 16 * 2**20


def check_before_parsing(data: bytes, max_bytes: int, max_elements: int = MAX_ELEMENTS) -> None:
    """Refuse a Part 10 instance whose deflated data set inflates past ``max_bytes``
    (``too-large``), or that holds more than ``max_elements`` elements, items, fragments and
    escape sequences in text (``too-many-elements``). Data that is not Part 10 passes: pydicom
    refuses it itself."""
    start, syntax = _dataset_start(data)
    if syntax is None:
        return
    if syntax == DeflatedExplicitVRLittleEndian:
        data, start = _inflate(data[start:], max_bytes), 0
    walk = _Walk(data, little=syntax != ExplicitVRBigEndian, limit=max_elements)
    walk.dataset(start, len(data), explicit=syntax != ImplicitVRLittleEndian, depth=0)


def _dataset_start(data: bytes) -> tuple[int, UID | None]:
    """Where the data set begins after the file meta (explicit VR little endian in every file),
    and the transfer syntax it names; None when there is no Part 10 preamble."""
    if data[128:132] != b"DICM":
        return 0, None
    pos, syntax = 132, b""
    while len(data) >= pos + 8:
        group, element = struct.unpack_from("<HH", data, pos)
        if group != 0x0002:
            break
        if data[pos + 4 : pos + 6] in _LONG_VRS:
            length, pos = struct.unpack_from("<L", data, pos + 8)[0] if len(data) >= pos + 12 else 0, pos + 12
        else:
            length, pos = struct.unpack_from("<H", data, pos + 6)[0], pos + 8
        if element == 0x0010:
            syntax = data[pos : pos + length]
        pos += length
    return pos, UID(syntax.rstrip(b"\0 ").decode("ascii", "replace"))


def _inflate(deflated: bytes, max_bytes: int) -> bytes:
    """The inflated data set, in steps, refused as soon as it passes ``max_bytes``."""
    inflate = zlib.decompressobj(-zlib.MAX_WBITS)
    parts: list[bytes] = []
    size = 0
    try:
        chunk = inflate.decompress(deflated, _INFLATE_STEP)
        while True:
            parts.append(chunk)
            size += len(chunk)
            if size > max_bytes:
                limit = f"{max_bytes / 2**20:g} MiB, the largest instance read"
                raise Refused("too-large", f"the deflated data set inflates to more than {limit}")
            if not inflate.unconsumed_tail:
                break
            chunk = inflate.decompress(inflate.unconsumed_tail, _INFLATE_STEP)
    except zlib.error:
        return b""  # not deflate data: pydicom's own read refuses it with its reason
    return b"".join(parts)


@lru_cache(maxsize=4096)
def _implicit_vr(tag: int) -> bytes:
    """The VR pydicom gives an implicit VR element: the dictionary's (the first it allows)."""
    if (tag >> 16) % 2:
        return b"UN"  # private: read as UN, its value never parsed into elements or decoded
    try:
        return dictionary_VR(tag)[:2].encode()
    except KeyError:
        return b"UN"


class _Walk:
    def __init__(self, data: bytes, *, little: bool, limit: int) -> None:
        self.data = data
        self.limit = limit
        self.count = 0
        self.tag = struct.Struct("<HH" if little else ">HH")
        self.u16 = struct.Struct("<H" if little else ">H")
        self.u32 = struct.Struct("<L" if little else ">L")

    def _counted(self, pieces: int = 1) -> None:
        self.count += pieces
        if self.count > self.limit:
            raise Refused(
                "too-many-elements",
                f"more than {self.limit} elements, items, fragments and escape sequences in text; "
                "reading them would take minutes and gigabytes",
            )

    def dataset(self, pos: int, end: int, *, explicit: bool, depth: int) -> int:
        """Walk elements from ``pos`` to ``end`` or an item delimiter; the position after it."""
        data, u32 = self.data, self.u32
        while pos + 8 <= end:
            group, element = self.tag.unpack_from(data, pos)
            tag = group << 16 | element
            if tag in (_ITEM_END, _SEQUENCE_END):
                return pos + 8
            self._counted()
            if explicit and group != 0xFFFE:
                vr = data[pos + 4 : pos + 6]
                if vr in _LONG_VRS:
                    if pos + 12 > end:
                        return end
                    length, pos = u32.unpack_from(data, pos + 8)[0], pos + 12
                else:
                    length, pos = self.u16.unpack_from(data, pos + 6)[0], pos + 8
            else:
                vr = _implicit_vr(tag) if group != 0xFFFE else b""
                length, pos = u32.unpack_from(data, pos + 4)[0], pos + 8
            if length == _UNDEFINED:
                if tag == _PIXEL_DATA:
                    pos = self.items(pos, end, explicit=explicit, depth=depth, fragments=True)
                else:  # a sequence, or an undefined-length UN that pydicom reads as one in implicit VR
                    inner = explicit and vr != b"UN"
                    pos = self.items(pos, end, explicit=inner, depth=depth + 1, fragments=False)
                continue
            stop = min(pos + length, end)
            if vr == b"SQ":
                self.items(pos, stop, explicit=explicit, depth=depth + 1, fragments=False)
            elif vr in _TEXT_VRS:
                self._counted(data.count(_ESC, pos, stop))
            pos += length
        return end

    def items(self, pos: int, end: int, *, explicit: bool, depth: int, fragments: bool) -> int:
        """Walk the items (or fragments) of a sequence to ``end`` or its delimiter."""
        if depth > _DEEPEST:
            return end
        data = self.data
        while pos + 8 <= end:
            group, element = self.tag.unpack_from(data, pos)
            length = self.u32.unpack_from(data, pos + 4)[0]
            tag = group << 16 | element
            if tag == _SEQUENCE_END:
                return pos + 8
            if tag != _ITEM:
                return end
            self._counted()
            pos += 8
            if length == _UNDEFINED:
                if fragments:
                    return end
                pos = self.dataset(pos, end, explicit=explicit, depth=depth)
            else:
                if not fragments:
                    self.dataset(pos, min(pos + length, end), explicit=explicit, depth=depth)
                pos += length
        return end
