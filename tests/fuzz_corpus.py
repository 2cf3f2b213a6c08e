"""Hostile DICOM instances for fuzzing: planted markers everywhere PHI hides, then mutated.

Used by tests/test_fuzz_deid.py (a few hundred cases through ``deid``), by
benchmarks/fuzz_deid.py (a larger run) and by the network fuzz test, so the interface is small:

* ``MARKER``: the bytes every planted value contains (upper case, so it is also a valid code
  string). A written or forwarded file must never contain them.
* ``seeds(testdata=None)``: ``(name, bytes)`` of the planted instances: native and JPEG photos
  built here, plus the shared test data's ``*_noburn_*`` files when ``testdata`` is given
  (their manifests' strings are planted PHI too, searched for with ``leaks``).
* ``MUTATIONS``: name -> ``mutate(data, rng) -> bytes``; ``case(seed_bytes, mutation, rng)``.
* ``corpus(count, seed=0, testdata=None)``: ``count`` deterministic ``Case`` objects.
* ``leaks(data, testdata=None)``: the planted strings found in ``data``.
* byte helpers for hand-made cases: ``elements`` (top-level element offsets), ``set_length``,
  ``insert_element``, ``nested_sequences``, ``with_transfer_syntax``, ``jpeg_with_metadata``.

Mutations work on the bytes, as a hostile sender would: lying lengths (too long, so an element
swallows the next ones; too short), truncation, bit flips, wrong VRs, deep nesting (built as
bytes: pydicom itself cannot write 500 levels), broken encapsulation (the JPEG in the Basic
Offset Table's place, a lying fragment length, items under a native transfer syntax, a frame
declaring another size than the header), a wrong transfer syntax, multi-valued UIDs, command
elements in the dataset.
"""

from __future__ import annotations

import io
import json
import random
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from factories import camera_photo, item, to_bytes
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit

MARKER = b"ZQXPHI"
_M = MARKER.decode()

# Explicit VR little endian: these VRs have a 2-byte reserved field and a 4-byte length.
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_SHORT_VRS = [
    b"AE",
    b"AS",
    b"CS",
    b"DA",
    b"DS",
    b"IS",
    b"LO",
    b"PN",
    b"SH",
    b"ST",
    b"TM",
    b"UI",
    b"US",
    b"UL",
]


@dataclass(frozen=True)
class Element:
    """One top-level element of an explicit VR little endian file, by byte offsets."""

    tag: int
    vr: bytes
    start: int  # first byte of the tag
    length_at: int  # where the length field is
    length_size: int  # 2 or 4
    value_at: int
    length: int


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes


def elements(data: bytes) -> list[Element]:
    """The top-level elements after the preamble (file meta included); stops at anything odd."""
    found: list[Element] = []
    pos = 132
    while pos + 8 <= len(data):
        group, elem = struct.unpack_from("<HH", data, pos)
        vr = data[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            length_at, size = pos + 8, 4
        elif vr.isalpha() and vr.isupper():
            length_at, size = pos + 6, 2
        else:
            break
        length = int.from_bytes(data[length_at : length_at + size], "little")
        found.append(Element(group << 16 | elem, vr, pos, length_at, size, length_at + size, length))
        if length == 0xFFFFFFFF:
            break
        pos = length_at + size + length
    return found


# --- seeds --------------------------------------------------------------------------


def jpeg_with_metadata(comment: bytes) -> bytes:
    rng = np.random.default_rng(5)
    picture = Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x013B] = f"{_M} EXIF ARTIST"
    buf = io.BytesIO()
    picture.save(buf, format="JPEG", exif=exif.tobytes(), comment=comment)
    return buf.getvalue()


_ROOT = "1.2.826.0.1.3680043.8.498.61207"


def _planted(number: int) -> Dataset:
    """A camera photo with a marker in every place PHI hides that the profile must clear; its UIDs
    end in ``number``, so that two seed photos are two instances."""
    code = item(CodeValue="T-D0050", CodingSchemeDesignator="SRT", CodeMeaning="Skin")
    code.PatientName = f"{_M}^NESTED"
    code.ImageComments = f"{_M} nested comment"
    channel = item(CodeValue="1", CodingSchemeDesignator="DCM", CodeMeaning=f"{_M} channel source")
    waveform = item(ChannelSourceSequence=Sequence([channel]))
    ds = camera_photo(
        PatientName=f"{_M}^PATIENT",
        PatientID=f"{_M}-MRN",
        ReferringPhysicianName=f"{_M}^REFERRER",
        StudyDescription=f"{_M} study description",
        ImageComments=f"{_M} image comments",
        InstitutionName=f"{_M} HOSPITAL",
        OperatorsName=f"{_M}^OPERATOR",
        AdditionalPatientHistory=f"{_M} history",
        BurnedInAnnotation="NO",
        ImageType=["ORIGINAL", "PRIMARY", f"{_M}"],
        ConversionType=f"{_M}",
        ReferencedFileID=["PATIENTS", f"{_M}"],
        AnatomicRegionSequence=Sequence([code]),
        WaveformSequence=Sequence([waveform]),
        # Fixed UIDs: fresh ones differ in length from run to run, and every mutation's offsets with
        # them, so a seed would not give the same cases twice.
        sop_uid=f"{_ROOT}.1.{number}",
        StudyInstanceUID=f"{_ROOT}.2.{number}",
        SeriesInstanceUID=f"{_ROOT}.3.{number}",
    )
    block = ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True)
    block.add_new(0x10, "OB", f"CSA {_M} private".encode())
    block.add_new(0x11, "LO", f"{_M} private text")
    ds.add_new(0x60000010, "US", 4)
    ds.add_new(0x60000011, "US", 4)
    ds.add_new(0x60000022, "LO", f"{_M} overlay description")
    ds.add_new(0x60003000, "OW", bytes(2))
    return ds


def _jpeg_photo() -> bytes:
    ds = _planted(2)
    ds.Rows = ds.Columns = 16
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.LossyImageCompression = "01"
    ds.PixelData = encapsulate([jpeg_with_metadata(f"{_M} JPEG COMMENT".encode())])
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    return to_bytes(ds)


def seeds(testdata: Path | None = None) -> list[tuple[str, bytes]]:
    """The planted instances every case starts from."""
    found = [("photo-native", to_bytes(_planted(1))), ("photo-jpeg", _jpeg_photo())]
    if testdata is not None:
        for path in sorted((testdata / "dicom" / "generated").glob("*_noburn_*.dcm")):
            found.append((path.stem, path.read_bytes()))
    return found


def _manifest_strings(testdata: Path | None) -> list[bytes]:
    if testdata is None:
        return []
    strings: set[bytes] = set()
    for manifest in (testdata / "dicom" / "generated").glob("*_noburn_phi_manifest.json"):
        for text in json.loads(manifest.read_text(encoding="utf-8"))["strings"]["phi"]:
            if len(text) >= 8:  # shorter ones turn up by chance in pixels and UIDs
                strings.add(text.encode("utf-8"))
    return sorted(strings)


# Device *identity* values that the manifests file under "phi": Retain Device Identity
# keeps Device Serial Number, Lens Serial Number and Station Name (K in Table E.1-1),
# and "DERMCAM03" is the start of that station name.
DEVICE_IDENTITY = frozenset({"SN-0429-7781-XZ", "LENS-8842-0071", "DERMCAM03-RM214", "DERMCAM03"})


def leaks(data: bytes, testdata: Path | None = None, kept: frozenset[str] = frozenset()) -> list[bytes]:
    """The planted strings found in ``data`` (the marker, and the shared files' manifest strings),
    but for ``kept``: what the profile's options keep on purpose (``DEVICE_IDENTITY``)."""
    allowed = {k.encode("utf-8") for k in kept}
    return [s for s in [MARKER, *_manifest_strings(testdata)] if s in data and s not in allowed]


# --- mutations ----------------------------------------------------------------------


def _dataset_elements(data: bytes) -> list[Element]:
    return [e for e in elements(data) if e.tag >> 16 != 0x0002]


def set_length(data: bytes, element: Element, length: int) -> bytes:
    out = bytearray(data)
    limit = (1 << (8 * element.length_size)) - 1
    out[element.length_at : element.length_at + element.length_size] = min(length, limit).to_bytes(
        element.length_size, "little"
    )
    return bytes(out)


def lying_long(data: bytes, rng: random.Random) -> bytes:
    """An element's length reaches to a later element's end: it swallows everything between."""
    elems = [e for e in _dataset_elements(data) if e.length != 0xFFFFFFFF]
    if len(elems) < 2:
        return data
    i = rng.randrange(len(elems) - 1)
    j = rng.randrange(i + 1, len(elems))
    end = elems[j].value_at + elems[j].length if elems[j].length != 0xFFFFFFFF else len(data)
    return set_length(data, elems[i], end - elems[i].value_at)


def lying_short(data: bytes, rng: random.Random) -> bytes:
    elems = [e for e in _dataset_elements(data) if 0 < e.length != 0xFFFFFFFF]
    if not elems:
        return data
    e = rng.choice(elems)
    return set_length(data, e, rng.randrange(e.length))


def lying_random(data: bytes, rng: random.Random) -> bytes:
    elems = _dataset_elements(data)
    if not elems:
        return data
    e = rng.choice(elems)
    return set_length(
        data, e, rng.choice([e.length + 2, e.length + rng.randrange(2, 400), 0xFFFF, 0xFFFFFFFE])
    )


def sequence_cut_short(data: bytes, rng: random.Random) -> bytes:
    """A sequence's length cut to end just after one of its item headers: what the item held is
    then read in the enclosing data set, out of the sequence the profile judges it in (how the
    fuzzer first got a Waveform Sequence's Channel Source Code Meaning through)."""
    sequences = [e for e in _dataset_elements(data) if e.vr == b"SQ" and 0 < e.length != 0xFFFFFFFF]
    if not sequences:
        return data
    e = rng.choice(sequences)
    value = data[e.value_at : e.value_at + e.length]
    heads = [i for i in range(0, len(value) - 7) if value[i : i + 4] == b"\xfe\xff\x00\xe0"]
    if not heads:
        return data
    return set_length(data, e, rng.choice(heads) + 8)


def swallows_an_item_header(data: bytes, rng: random.Random) -> bytes:
    """An element's length reaches just past a later sequence's first item header: the item's
    elements are then read in the enclosing data set (how a lookup table's data could bring a
    Waveform Sequence's Channel Source Code Meaning to the top level)."""
    elems = _dataset_elements(data)
    sequences = [
        i
        for i, e in enumerate(elems)
        if i > 0 and e.vr == b"SQ" and data[e.value_at : e.value_at + 4] == b"\xfe\xff\x00\xe0"
    ]
    if not sequences:
        return data
    j = rng.choice(sequences)
    before = [e for e in elems[:j] if e.vr != b"SQ" and e.length != 0xFFFFFFFF]
    if not before:
        return data
    e = rng.choice(before)
    return set_length(data, e, elems[j].value_at + 8 - e.value_at)


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(132, len(data))]


def bit_flips(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        pos = rng.randrange(132, len(out))
        out[pos] ^= 1 << rng.randrange(8)
    return bytes(out)


def wrong_vr(data: bytes, rng: random.Random) -> bytes:
    """Another VR of the same header form, so the lengths still line up and only the type lies."""
    elems = [e for e in _dataset_elements(data) if e.length_size == 2]
    if not elems:
        return data
    e = rng.choice(elems)
    out = bytearray(data)
    out[e.start + 4 : e.start + 6] = rng.choice([v for v in _SHORT_VRS if v != e.vr])
    return bytes(out)


def nested_sequences(depth: int) -> bytes:
    """Content Sequence items nested ``depth`` deep, undefined lengths, each level with a marker."""
    leaf = _tagged(0x00100010, b"PN", f"{_M}^DEEP ".encode())
    body = leaf
    for _ in range(depth):
        item_bytes = b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + body + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
        body = (
            struct.pack("<HH", 0x0040, 0xA730)
            + b"SQ\x00\x00\xff\xff\xff\xff"
            + item_bytes
            + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
        )
    return body


def _tagged(tag: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b" "
    return struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr + struct.pack("<H", len(value)) + value


def insert_element(data: bytes, tag: int, raw: bytes) -> bytes:
    """``raw`` element bytes placed in tag order among the top-level elements."""
    for e in _dataset_elements(data):
        if e.tag > tag:
            return data[: e.start] + raw + data[e.start :]
    return data + raw


def deep_nesting(data: bytes, rng: random.Random) -> bytes:
    return insert_element(data, 0x0040A730, nested_sequences(rng.choice([17, 40, 100, 300, 500])))


def _pixel(data: bytes) -> Element | None:
    return next((e for e in elements(data) if e.tag == 0x7FE00010), None)


def jpeg_in_offset_table(data: bytes, rng: random.Random) -> bytes:
    """The whole JPEG as the only item, where the Basic Offset Table belongs."""
    e = _pixel(data)
    if e is None or e.length != 0xFFFFFFFF:
        return data
    frame = jpeg_with_metadata(f"{_M} COM IN BOT".encode())
    frame += b"\x00" * (len(frame) % 2)
    items = b"\xfe\xff\x00\xe0" + struct.pack("<I", len(frame)) + frame + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    return data[: e.value_at] + items


def fragment_length_lies(data: bytes, rng: random.Random) -> bytes:
    e = _pixel(data)
    if e is None or e.length != 0xFFFFFFFF:
        return data
    first_fragment = e.value_at + 8 + int.from_bytes(data[e.value_at + 4 : e.value_at + 8], "little")
    out = bytearray(data)
    old = int.from_bytes(out[first_fragment + 4 : first_fragment + 8], "little")
    out[first_fragment + 4 : first_fragment + 8] = struct.pack(
        "<I", max(0, old + rng.choice([-64, -2, 2, 64]))
    )
    return bytes(out)


def frame_size_lies(data: bytes, rng: random.Random) -> bytes:
    """The first JPEG frame's SOF declares another size than Rows and Columns (a decoder allocates
    what the frame declares: 65,000 x 65,000 is 12 GB)."""
    e = _pixel(data)
    sof = data.find(b"\xff\xc0", e.value_at) if e is not None else -1
    if sof == -1:
        return data
    size = rng.choice([(65000, 65000), (0, 16), (32, 32), (1, 1)])
    return data[: sof + 5] + struct.pack(">HH", *size) + data[sof + 9 :]


def frame_start_damaged(data: bytes, rng: random.Random) -> bytes:
    """One bit flipped in the first JPEG frame's SOI: a frame the segment walk does not recognise
    as JPEG was forwarded unread, its comment and Exif in it (found by fuzz_deid.py's bit flips)."""
    e = _pixel(data)
    soi = data.find(b"\xff\xd8", e.value_at) if e is not None else -1
    if soi == -1:
        return data
    at = soi + rng.randrange(2)
    return data[:at] + bytes([data[at] ^ (1 << rng.randrange(8))]) + data[at + 1 :]


def with_transfer_syntax(data: bytes, uid: str) -> bytes:
    """The file meta's Transfer Syntax UID replaced, its group length corrected."""
    elems = elements(data)
    ts = next((e for e in elems if e.tag == 0x00020010), None)
    group_length = next((e for e in elems if e.tag == 0x00020000), None)
    if ts is None or group_length is None:
        return data
    value = uid.encode() + (b"\x00" if len(uid) % 2 else b"")
    new = data[: ts.length_at] + struct.pack("<H", len(value)) + value + data[ts.value_at + ts.length :]
    delta = len(value) - ts.length
    old = int.from_bytes(data[group_length.value_at : group_length.value_at + 4], "little")
    at = group_length.value_at
    # Modulo 2^32: an earlier mutation may have left the group length lying, near 0 or 2^32.
    return new[:at] + struct.pack("<I", (old + delta) % 2**32) + new[at + 4 :]


def wrong_transfer_syntax(data: bytes, rng: random.Random) -> bytes:
    choices = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit, "1.2.840.10008.1.2.2"]
    return with_transfer_syntax(data, rng.choice(choices))


def multi_valued_uid(data: bytes, rng: random.Random) -> bytes:
    if rng.random() < 0.5:
        return with_transfer_syntax(data, f"{ExplicitVRLittleEndian}\\{ImplicitVRLittleEndian}")
    e = next((e for e in _dataset_elements(data) if e.tag == 0x00080018), None)
    if e is None:
        return data
    value = data[e.value_at : e.value_at + e.length].rstrip(b"\x00") + b"\\1.2.3.4"
    value += b"\x00" * (len(value) % 2)
    return data[: e.length_at] + struct.pack("<H", len(value)) + value + data[e.value_at + e.length :]


def command_element(data: bytes, rng: random.Random) -> bytes:
    raw = _tagged(0x00000100, b"US", struct.pack("<H", 1))
    elems = _dataset_elements(data)
    return data[: elems[0].start] + raw + data[elems[0].start :] if elems else data


MUTATIONS: dict[str, Callable[[bytes, random.Random], bytes]] = {
    "none": lambda data, rng: data,
    "lying-long": lying_long,
    "lying-short": lying_short,
    "lying-random": lying_random,
    "sequence-cut-short": sequence_cut_short,
    "swallows-an-item-header": swallows_an_item_header,
    "truncate": truncate,
    "bit-flips": bit_flips,
    "wrong-vr": wrong_vr,
    "deep-nesting": deep_nesting,
    "jpeg-in-offset-table": jpeg_in_offset_table,
    "fragment-length-lies": fragment_length_lies,
    "frame-size-lies": frame_size_lies,
    "frame-start-damaged": frame_start_damaged,
    "wrong-transfer-syntax": wrong_transfer_syntax,
    "multi-valued-uid": multi_valued_uid,
    "command-element": command_element,
}


def case(name: str, data: bytes, mutation: str, rng: random.Random) -> Case:
    """One mutated instance; a second mutation about a third of the time: damage rarely comes alone."""
    out = MUTATIONS[mutation](data, rng)
    label = f"{name}/{mutation}"
    if rng.random() < 0.3:
        second = rng.choice(sorted(MUTATIONS))
        out = MUTATIONS[second](out, rng)
        label += f"+{second}"
    return Case(label, out)


def corpus(count: int, seed: int = 0, testdata: Path | None = None) -> Iterator[Case]:
    """``count`` cases, the same for the same arguments: every mutation over every seed in turn."""
    rng = random.Random(seed)
    bases = seeds(testdata)
    names = sorted(MUTATIONS)
    for index in range(count):
        name, data = bases[index % len(bases)]
        yield case(f"{index:05d}-{name}", data, names[(index // len(bases)) % len(names)], rng)
