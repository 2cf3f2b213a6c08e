"""Remove metadata segments that can carry PHI from one encapsulated JPEG frame, without re-encoding.

Cameras and photo desks write the photographer, the patient's name, serial numbers,
dates and GPS into EXIF/XMP/IPTC (APP1, APP13) and comments (COM) *inside* the
compressed image. The DICOM header profile never sees them, so every encapsulated
frame goes through :func:`strip_jpeg_segments`. Only marker segments are touched:
entropy-coded data is copied byte for byte, so the decoded pixels are identical
(the tests decode both and compare).

Kept, because decoding or colour needs them and they hold no free text:

* the frame, table, scan and restart segments (SOFn, DHT, DAC, DQT, DRI, DNL, DHP,
  EXP, SOS, JPEG-LS SOF55 and LSE);
* APP0 ``JFIF`` cut to its 14 fixed bytes (version, density): the marker tells
  decoders the components are YCbCr; its optional thumbnail (a picture of the
  patient) is removed;
* APP14 ``Adobe`` cut to its 12 fixed bytes: its transform flag tells a decoder
  whether to convert YCbCr to RGB, so dropping it would change the decoded colours;
  likewise JPEG-LS APP8 ``mrfx`` (HP colour transform, written by CharLS) cut to 5 bytes;
* APP2 ``ICC_PROFILE``: the colour space of the camera, which a skin-lesion photo
  needs to be judged; the profile describes a device class (header, tone curves,
  a colour-space name), never a patient or an encounter.

Removed: COM, APP1 (Exif, XMP), APP13 (Photoshop/IPTC), APP0 other than JFIF
(JFXX thumbnails, AVI1), APP14 other than Adobe, every other APPn (MPF, FPXR, maker
data, JPEG-LS SPIFF headers, which decoders do not need), and bytes after EOI other
than 0x00/0xFF padding (MPF appends whole second pictures there). COM/APPn between
the scans of a progressive or multi-scan image are removed too; the entropy-coded
segments around them stay identical.

JPEG 2000 codestreams: the only text segment is COM (0xFF64). One in the main
header is removed with no other change (tile-part lengths count from SOT, not from
the start of the codestream). One in a tile-part header shortens that tile-part, so
its Psot and, when the main header has TLM segments, its TLM entry are decreased by
the removed length; nothing else refers to byte positions in the headers.

Anything that is neither (RLE frames start with a segment count) is returned
unchanged: the caller (``encapsulated``) then refuses a frame that does not start
as its transfer syntax's codestream must. A stream that starts like JPEG but cannot
be walked to its end is refused: passing it on unread could forward a segment we
never looked at.

Hand-written because no maintained Python library edits JPEG marker segments in
place: Pillow and piexif re-encode or only handle EXIF, and pydicom leaves the
codestream alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NoReturn

from .errors import Refused

_SOI = 0xD8
_EOI = 0xD9
_SOS = 0xDA
_COM = 0xFE
_APP0 = 0xE0
_APP2 = 0xE2
_APP8 = 0xE8
_APP14 = 0xEE
_SOF55 = 0xF7  # JPEG-LS start of frame
_LSE = 0xF8  # JPEG-LS preset parameters

# ISO/IEC 10918-1 and 14495-1 segments a decoder needs, all with a length field.
_KEEP_10918 = frozenset(
    {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}  # SOFn
    | {0xC4, 0xCC, 0xDB, 0xDC, 0xDD, 0xDE, 0xDF}  # DHT DAC DQT DNL DRI DHP EXP
    | {_SOS, _SOF55, _LSE}
)
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0-7: no length field

# End of an entropy-coded segment: 0xFF followed by a marker code. In 10918 data an
# 0xFF is followed by a stuffed 0x00 or is a restart marker; in JPEG-LS the byte
# after 0xFF has its high bit clear (bit stuffing), so markers are 0xFF 0x80-0xFE.
# 0xFF 0xFF is fill before a marker, matched at the last 0xFF.
_NEXT_MARKER_10918 = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_NEXT_MARKER_LS = re.compile(rb"\xff[\x80-\xfe]")

# What encoders put after EOI/EOC to reach an even fragment length.
_PADDING = b"\x00\xff"

# APPn identifiers we name in descriptions. Unknown identifiers are not echoed:
# the first bytes of an unknown segment may themselves be a patient's name, and
# descriptions go to logs and the dry-run listing.
_KNOWN_APP_IDS = {
    b"JFIF\x00": "JFIF",
    b"JFXX\x00": "JFXX",
    b"AVI1": "AVI1",
    b"Exif\x00": "Exif",
    b"http://ns.adobe.com/xap/1.0/\x00": "XMP",
    b"http://ns.adobe.com/xmp/extension/\x00": "XMP extension",
    b"ICC_PROFILE\x00": "ICC_PROFILE",
    b"MPF\x00": "MPF",
    b"FPXR\x00": "FPXR",
    b"Photoshop 3.0\x00": "Photoshop",
    b"Ducky": "Ducky",
    b"Adobe": "Adobe",
    b"SPIFF\x00": "SPIFF",
}
_JFIF_FIXED = 14  # "JFIF\0", version 2, units 1, densities 2+2, thumbnail size 1+1
_ADOBE_FIXED = 12  # "Adobe", version 2, flags0 2, flags1 2, transform 1
_MRFX_FIXED = 5  # "mrfx", colour transform id (HP's JPEG-LS extension, written by CharLS)

# JPEG 2000 (ISO/IEC 15444-1) codestream markers.
_J2K_SOC = b"\xff\x4f"
_J2K_SIZ = 0x51
_J2K_TLM = 0x55
_J2K_COM = 0x64
_J2K_SOT = 0x90
_J2K_SOD = 0x93
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


def strip_jpeg_segments(frame: bytes) -> tuple[bytes, list[str]]:
    """Return ``frame`` without its PHI-bearing segments, and one description per removal.

    Descriptions name the segment and the number of bytes it took in the stream,
    e.g. ``"APP1 Exif (2345 bytes)"``, never its content. Raises
    ``Refused("corrupt-jpeg", ...)`` when a JPEG or JPEG 2000 stream is truncated or
    malformed.
    """
    if frame[:2] == b"\xff\xd8":
        stripped, removed, _ = _strip_10918(frame)
        return stripped, removed
    stripped, removed, _ = strip_and_measure(frame)
    return stripped, removed


def strip_and_measure(frame: bytes) -> tuple[bytes, list[str], FrameSize | None]:
    """``strip_jpeg_segments``, and from the same walk the size a JPEG, JPEG-LS or JPEG 2000 frame
    declares (its SOF or SIZ segment) and how many scans a JPEG frame holds; None for data with
    no such header (RLE).

    Why the size: a decoder allocates what the stream declares (a 1 kB frame whose SOF said
    65,000 x 65,000 under a DICOM header of 16 x 16 took 24 GB), and decodes every scan over the
    whole image (a 12 MP progressive JPEG with a 26-byte empty scan repeated 1,000 times took
    10 s). The header stage measures every frame it strips; the pixel stage walks each frame the
    same way before anything is decoded, so that a stream one route refuses as damaged is refused
    on every route."""
    if frame[:2] == b"\xff\xd8":
        stripped, removed, measure = _strip_10918(frame)
        return stripped, removed, measure.size()
    if frame[:2] == _J2K_SOC:
        return *_strip_j2k(frame), _j2k_size(frame)
    if frame[:12] == _JP2_SIGNATURE:
        _corrupt("a JP2 file (with metadata boxes) instead of a bare JPEG 2000 codestream")
    if frame[:1] == b"\xff":
        _corrupt(f"starts with marker 0x{frame[:2].hex().upper()}, not SOI")
    return frame, [], None


@dataclass(frozen=True)
class FrameSize:
    """What a frame's own headers declare: decoders allocate and work by this, whatever the DICOM
    header says."""

    rows: int
    columns: int
    components: int
    scans: int  # each is a pass over the whole image when decoded; JPEG 2000: 1


# Start-of-frame codes whose segment begins P (1 byte), Y, X (2 bytes each), Nf (1 byte).
_SOF_CODES = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, _SOF55})


def _j2k_size(frame: bytes) -> FrameSize:
    """What a JPEG 2000 codestream's SIZ segment declares (it must follow SOC)."""
    _, seg_end = _j2k_segment(frame, 2)
    if frame[3] != _J2K_SIZ or seg_end < 42:
        _corrupt("JPEG 2000: SIZ does not follow SOC")
    x, y, x0, y0 = (int.from_bytes(frame[i : i + 4], "big") for i in (8, 12, 16, 20))
    return FrameSize(max(y - y0, 0), max(x - x0, 0), int.from_bytes(frame[40:42], "big"), 1)


class _Measure:
    """The first frame header's size and the number of scans, segment by segment."""

    def __init__(self) -> None:
        self.declared: tuple[int, int, int] | None = None
        self.scans = 0

    def segment(self, data: bytes, marker: int, at: int, seg_end: int) -> None:
        if marker in _SOF_CODES and self.declared is None:
            length = int.from_bytes(data[at + 1 : at + 3], "big")
            if length < 8 or at + 1 + length > len(data):
                _corrupt(f"frame header 0xFF{marker:02X} truncated")
            y, x = (int.from_bytes(data[i : i + 2], "big") for i in (at + 4, at + 6))
            self.declared = (y, x, data[at + 8])
        elif marker == _SOS:
            self.scans += 1

    def size(self) -> FrameSize:
        if self.declared is None:
            _corrupt("no frame header (SOF) before the stream ends or breaks")
        return FrameSize(*self.declared, self.scans)


def _segments_10918(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(marker, where its code byte is, where its segment ends) of each marker segment of an
    ISO 10918 / 14495 stream after SOI, in order, EOI last (ending just after it). What lies
    between one segment's end and the next one's 0xFF is fill bytes and, after an SOS, the
    entropy-coded data, skipped up to the next marker.

    Damage (a missing marker, a segment running past the end, no EOI) is refused with
    ``Refused("corrupt-jpeg")``: decoders read on past it and fill what is missing with grey,
    which a pixel route would then forward as the clinical area.
    """
    next_marker = _NEXT_MARKER_10918
    pos = 2
    end = len(data)
    while True:
        start = pos
        while pos < end and data[pos] == 0xFF:
            pos += 1
        if pos == start or pos >= end:
            _corrupt(f"expected a marker at byte {start}" if pos < end else "ends before EOI")
        marker = data[pos]
        if marker == _EOI:
            yield marker, pos, pos + 1
            return
        if marker in _STANDALONE or marker == _SOI:
            _corrupt(f"marker 0xFF{marker:02X} outside entropy-coded data")
        if pos + 3 > end:
            _corrupt(f"segment 0xFF{marker:02X} truncated")
        length = int.from_bytes(data[pos + 1 : pos + 3], "big")
        seg_end = pos + 1 + length
        if length < 2 or seg_end > end:
            _corrupt(f"segment 0xFF{marker:02X} at byte {pos - 1} runs past the end")
        if marker == _SOF55:
            next_marker = _NEXT_MARKER_LS
        yield marker, pos, seg_end
        pos = seg_end
        if marker == _SOS:
            match = next_marker.search(data, pos)
            if match is None:
                _corrupt("entropy-coded data runs to the end without EOI")
            pos = match.start()


def _corrupt(what: str) -> NoReturn:
    raise Refused("corrupt-jpeg", f"encapsulated frame: {what}")


def _app_name(marker: int, payload: bytes) -> str:
    for ident, name in _KNOWN_APP_IDS.items():
        if payload.startswith(ident):
            return f"APP{marker - _APP0} {name}"
    return f"APP{marker - _APP0}"


def _strip_10918(data: bytes) -> tuple[bytes, list[str], _Measure]:
    """Walk an ISO 10918 / 14495 stream segment by segment from SOI to EOI."""
    out = bytearray(data[:2])
    removed: list[str] = []
    measure = _Measure()
    copied = 2  # fill bytes and entropy-coded data, up to each segment's 0xFF, are kept as they are
    for marker, at, seg_end in _segments_10918(data):
        out += data[copied : at - 1]
        copied = seg_end
        if marker == _EOI:
            out += b"\xff\xd9"
            break
        payload = data[at + 3 : seg_end]
        size = seg_end - (at - 1)
        measure.segment(data, marker, at, seg_end)
        if marker in _KEEP_10918:
            out += data[at - 1 : seg_end]
        elif marker == _COM:
            removed.append(f"COM ({size} bytes)")
        elif marker == _APP0 and payload.startswith(b"JFIF\x00") and len(payload) >= _JFIF_FIXED:
            fixed = payload[: _JFIF_FIXED - 2] + b"\x00\x00"
            out += b"\xff\xe0" + (_JFIF_FIXED + 2).to_bytes(2, "big") + fixed
            if fixed != payload:
                removed.append(f"APP0 JFIF thumbnail ({len(payload) - len(fixed)} bytes)")
        elif marker == _APP14 and payload.startswith(b"Adobe"):
            kept = payload[:_ADOBE_FIXED]
            out += b"\xff\xee" + (len(kept) + 2).to_bytes(2, "big") + kept
            if len(payload) > len(kept):
                removed.append(f"APP14 Adobe extra data ({len(payload) - len(kept)} bytes)")
        elif marker == _APP8 and payload.startswith(b"mrfx"):
            kept = payload[:_MRFX_FIXED]
            out += b"\xff\xe8" + (len(kept) + 2).to_bytes(2, "big") + kept
            if len(payload) > len(kept):
                removed.append(f"APP8 mrfx extra data ({len(payload) - len(kept)} bytes)")
        elif marker == _APP2 and payload.startswith(b"ICC_PROFILE\x00"):
            out += data[at - 1 : seg_end]
        elif _APP0 <= marker <= 0xEF:
            removed.append(f"{_app_name(marker, payload)} ({size} bytes)")
        else:
            # Reserved codes (JPG, JPGn, RES): no decoder uses them, so they can only
            # carry data we cannot judge.
            _corrupt(f"reserved marker 0xFF{marker:02X} at byte {at - 1}")
    trailer = data[copied:]
    if _stream_goes_on(trailer):
        _corrupt(
            f"an end-of-image marker {len(trailer)} bytes before the end, and the stream goes on after it"
        )
    if trailer.strip(_PADDING):
        removed.append(f"data after EOI ({len(trailer)} bytes)")
    else:
        out += trailer
    return bytes(out), removed, measure


def _stream_goes_on(trailer: bytes) -> bool:
    """Whether what follows a stream's EOI is the rest of the stream, not a trailer: it ends with
    EOI itself but is no second picture (those start with SOI: MPF previews, phones' extra shots).
    An FF D9 inside the entropy-coded data (a bit flip, a hostile sender) ends the walk early;
    decoders stop there too and fill the rest of the image with grey."""
    rest = trailer.strip(b"\x00")
    return bool(rest) and rest.endswith(b"\xff\xd9") and not rest.startswith(b"\xff\xd8")


def _j2k_segment(data: bytes, pos: int) -> tuple[int, int]:
    """(marker code, end offset) of the marker segment at ``pos`` in a JPEG 2000 header."""
    if pos + 4 > len(data) or data[pos] != 0xFF:
        _corrupt(f"JPEG 2000: expected a marker segment at byte {pos}")
    marker = data[pos + 1]
    length = int.from_bytes(data[pos + 2 : pos + 4], "big")
    if length < 2 or pos + 2 + length > len(data):
        _corrupt(f"JPEG 2000: segment 0xFF{marker:02X} at byte {pos} runs past the end")
    # Parameter-bearing header markers live in 0xFF50-0xFF7F (Part 1 and Part 2).
    if not (0x50 <= marker <= 0x7F or marker == _J2K_SOT):
        _corrupt(f"JPEG 2000: unexpected marker 0xFF{marker:02X} at byte {pos}")
    return marker, pos + 2 + length


@dataclass
class _TilePart:
    sot: int  # offset of the SOT marker
    psot: int  # its length field; 0 means "up to EOC"
    removed: int = 0


def _tlm_fields(data: bytes, start: int, end: int) -> list[tuple[int, int]]:
    """(offset, width) of each Ptlm tile-part length in a TLM segment [start, end)."""
    stlm = data[start + 5]
    t_width = (stlm >> 4) & 0x3
    p_width = 4 if stlm & 0x40 else 2
    if t_width == 3:
        _corrupt("JPEG 2000: TLM segment with an invalid Stlm")
    fields = []
    pos = start + 6
    while pos < end:
        pos += t_width
        if pos + p_width > end:
            _corrupt("JPEG 2000: TLM segment truncated")
        fields.append((pos, p_width))
        pos += p_width
    return fields


def _strip_j2k(data: bytes) -> tuple[bytes, list[str]]:
    """Remove COM segments from a JPEG 2000 codestream, fixing the tile-part lengths they shorten."""
    drop: list[tuple[int, int]] = []
    removed: list[str] = []
    tlm: list[tuple[int, int]] = []
    pos = 2
    first = True
    while True:
        marker, seg_end = _j2k_segment(data, pos)
        if first and marker != _J2K_SIZ:
            _corrupt("JPEG 2000: SIZ does not follow SOC")
        first = False
        if marker == _J2K_SOT:
            break
        if marker == _J2K_COM:
            drop.append((pos, seg_end))
            removed.append(f"COM ({seg_end - pos} bytes)")
        elif marker == _J2K_TLM:
            tlm += _tlm_fields(data, pos, seg_end)
        pos = seg_end

    tiles: list[_TilePart] = []
    while data[pos : pos + 2] == b"\xff\x90":
        if pos + 12 > len(data):
            _corrupt("JPEG 2000: SOT truncated")
        tile = _TilePart(pos, int.from_bytes(data[pos + 6 : pos + 10], "big"))
        tiles.append(tile)
        hdr = pos + 12
        while data[hdr : hdr + 2] != b"\xff\x93":
            marker, seg_end = _j2k_segment(data, hdr)
            if marker == _J2K_COM:
                drop.append((hdr, seg_end))
                removed.append(f"COM in tile-part header ({seg_end - hdr} bytes)")
                tile.removed += seg_end - hdr
            hdr = seg_end
        if tile.psot == 0:
            pos = len(data.rstrip(_PADDING)) - 2
            break
        if tile.psot < hdr + 2 - pos or pos + tile.psot > len(data):
            _corrupt(f"JPEG 2000: tile-part at byte {pos} has an impossible length")
        pos += tile.psot
    if data[pos : pos + 2] != b"\xff\xd9":
        _corrupt("JPEG 2000: codestream does not end with EOC")
    if tlm and len(tlm) != len(tiles):
        _corrupt("JPEG 2000: TLM lists a different number of tile-parts than the codestream holds")
    if data[pos + 2 :].strip(_PADDING):
        drop.append((pos + 2, len(data)))
        removed.append(f"data after EOC ({len(data) - pos - 2} bytes)")

    if not drop:
        return data, []
    patched = bytearray(data)
    for i, tile in enumerate(tiles):
        if not tile.removed:
            continue
        if tile.psot:
            patched[tile.sot + 6 : tile.sot + 10] = (tile.psot - tile.removed).to_bytes(4, "big")
        if tlm:
            off, width = tlm[i]
            old = int.from_bytes(data[off : off + width], "big")
            patched[off : off + width] = (old - tile.removed).to_bytes(width, "big")
    out = bytearray()
    last = 0
    for start, stop in drop:
        out += patched[last:start]
        last = stop
    out += patched[last:]
    return bytes(out), removed
