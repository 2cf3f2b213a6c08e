"""Hostile photos for the face pipeline: a real face photo with its pixel data or its pixel
description broken the ways damaged files and hostile senders break them.

fuzz_corpus.py breaks headers and the bytes round them for ``deid``; this breaks what only a
pixel route reads (the JPEG stream, the encapsulation, the image pixel module's numbers), and
runs each case as the worker's pixel stage does: parse, then ``process_photo``. The invariant:
every case is written or refused with a code, never another exception, in bounded time.
tests/faces/test_photo_fuzz.py runs a few dozen cases; benchmarks/fuzz_pixels.py thousands.
"""

from __future__ import annotations

import io
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from facekit import FACE_A, load_face, photo_dataset
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames

from dicom_anon.config import PixelSettings
from dicom_anon.dicomio import read_instance
from dicom_anon.faces.identities import InMemoryIdentities
from dicom_anon.faces.pipeline import process_photo
from dicom_anon.headers.errors import Refused
from dicom_anon.headers.pseudonyms import SiteKey

KEY = SiteKey(b"photo-fuzz-secret-0123456789abcd")
# Stray markers a broken or hostile JPEG stream carries: an early end of image, a second start,
# a second frame header, a scan header with a short segment, a restart interval.
_MARKERS = (b"\xff\xd9", b"\xff\xd8", b"\xff\xc0\x00\x11", b"\xff\xda\x00\x0c", b"\xff\xdd\x00\x04\x00\x00")

# An item tag (FFFE,E000) of length 0: the Basic Offset Table, empty.
_EMPTY_OFFSET_TABLE = b"\xfe\xff\x00\xe0\x00\x00\x00\x00"


def seeds(testdata: Path) -> dict[str, bytes]:
    """The photos every case starts from, one face (SFHQ, 384 px): JPEG Baseline, progressive
    JPEG, native RGB, native grey, and two frames in JPEG."""
    face = load_face(testdata, FACE_A)
    built = {
        "jpeg": photo_dataset(face[None], jpeg=True),
        "progressive": photo_dataset(face[None], jpeg=True),
        "native": photo_dataset(face[None]),
        "grey": photo_dataset(np.asarray(Image.fromarray(face).convert("L"))[None]),
        "two frames": photo_dataset(np.stack([face, face[:, ::-1]]), jpeg=True),
    }
    buf = io.BytesIO()
    Image.fromarray(face).save(buf, format="JPEG", quality=90, progressive=True)
    built["progressive"].PixelData = encapsulate([buf.getvalue() + b"\x00" * (len(buf.getvalue()) % 2)])
    out = {}
    for name, ds in built.items():
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out[name] = buf.getvalue()
    return out


def _stream(ds: Dataset) -> bytearray:
    """The first frame's JPEG stream, its fragments joined (the mutations break that one)."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    return bytearray(next(generate_frames(ds.PixelData, number_of_frames=frames)))


def _encapsulated(ds: Dataset, stream: bytes) -> None:
    """``stream`` as the first frame, the others as they were."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    rest = list(generate_frames(ds.PixelData, number_of_frames=frames))[1:]
    ds.PixelData = encapsulate([bytes(f) + b"\x00" * (len(f) % 2) for f in [stream, *rest]])


def _bit_flips(ds: Dataset, rng: random.Random) -> None:
    stream = _stream(ds)
    for _ in range(rng.choice([1, 4, 32, 256])):
        i = rng.randrange(len(stream))
        stream[i] ^= 1 << rng.randrange(8)
    _encapsulated(ds, stream)


def _truncated(ds: Dataset, rng: random.Random) -> None:
    stream = _stream(ds)
    _encapsulated(ds, stream[: rng.randrange(2, len(stream))])


def _garbage(ds: Dataset, rng: random.Random) -> None:
    stream = _stream(ds)
    i = rng.randrange(len(stream))
    stream[i : i + 64] = rng.randbytes(64)
    _encapsulated(ds, stream)


def _stray_marker(ds: Dataset, rng: random.Random) -> None:
    stream = _stream(ds)
    i = rng.randrange(len(stream))
    stream[i:i] = rng.choice(_MARKERS)
    _encapsulated(ds, stream)


def _split_fragments(ds: Dataset, rng: random.Random) -> None:
    """The first frame's stream in two fragments and no offset table, the other frames dropped:
    a one-frame photo as valid as before (PS3.5 A.4), a multi-frame one's frames unfindable."""
    stream = bytes(_stream(ds))
    cut = rng.randrange(2, len(stream) - 2) & ~1
    ds.PixelData = encapsulate([stream[:cut], stream[cut:] + b"\x00" * (len(stream) % 2)], has_bot=False)


def _native_short(ds: Dataset, rng: random.Random) -> None:
    ds.PixelData = ds.PixelData[: rng.randrange(0, len(ds.PixelData)) & ~1]


def _native_long(ds: Dataset, rng: random.Random) -> None:
    ds.PixelData = ds.PixelData + bytes(rng.choice([2, 1024, 3 * ds.Columns]))


def _rows(ds: Dataset, rng: random.Random) -> None:
    ds.Rows = rng.choice(
        [0, 1, 7, max(0, ds.Rows - 1), min(65535, ds.Rows + 1), min(65535, ds.Rows * 2), 65535]
    )


def _columns(ds: Dataset, rng: random.Random) -> None:
    c = ds.Columns
    ds.Columns = rng.choice([0, 1, 7, max(0, c - 1), min(65535, c + 1), min(65535, c * 2), 65535])


def _samples(ds: Dataset, rng: random.Random) -> None:
    ds.SamplesPerPixel = rng.choice([0, 1, 2, 4])


def _bits(ds: Dataset, rng: random.Random) -> None:
    ds.BitsAllocated = rng.choice([0, 1, 12, 16, 32])
    ds.BitsStored = min(ds.BitsAllocated, rng.choice([1, 8, 12, 16]))


def _photometric(ds: Dataset, rng: random.Random) -> None:
    ds.PhotometricInterpretation = rng.choice(
        ["MONOCHROME2", "PALETTE COLOR", "YBR_FULL", "YBR_FULL_422", "RGB", "CMYK", "XYZ", ""]
    )


def _planar(ds: Dataset, rng: random.Random) -> None:
    ds.PlanarConfiguration = rng.choice([0, 1, 2])


def _frames(ds: Dataset, rng: random.Random) -> None:
    ds.NumberOfFrames = rng.choice([0, 2, 3, 1000])


def _no_pixels(ds: Dataset, rng: random.Random) -> None:
    """Pixel Data gone, or empty: an encapsulated one holds its offset table and no fragment."""
    if rng.random() < 0.5:
        del ds.PixelData
    else:
        ds.PixelData = _EMPTY_OFFSET_TABLE if ds.file_meta.TransferSyntaxUID.is_compressed else b""


# Each breaks one thing; a case applies one or two. The stream's own mutations need a JPEG.
ENCAPSULATED: dict[str, Callable[[Dataset, random.Random], None]] = {
    "bit flips in the JPEG stream": _bit_flips,
    "JPEG stream cut short": _truncated,
    "garbage inside the JPEG stream": _garbage,
    "a stray JPEG marker": _stray_marker,
    "a frame in two fragments": _split_fragments,
}
NATIVE: dict[str, Callable[[Dataset, random.Random], None]] = {
    "pixel data cut short": _native_short,
    "pixel data too long": _native_long,
}
EITHER: dict[str, Callable[[Dataset, random.Random], None]] = {
    "Rows lies": _rows,
    "Columns lies": _columns,
    "Samples per Pixel lies": _samples,
    "Bits Allocated lies": _bits,
    "Photometric Interpretation lies": _photometric,
    "Planar Configuration lies": _planar,
    "Number of Frames lies": _frames,
    "no pixel data": _no_pixels,
}


def hostile(base: bytes, rng: random.Random) -> tuple[bytes, list[str]]:
    """``base`` broken by one mutation, now and then a second that lies about the pixels; the
    bytes and what was done."""
    ds = pydicom.dcmread(io.BytesIO(base))
    mutations = (ENCAPSULATED if ds.file_meta.TransferSyntaxUID.is_compressed else NATIVE) | EITHER
    done = [rng.choice(sorted(mutations))]
    if rng.random() < 0.3 and done[0] != "no pixel data":
        done.append(rng.choice(sorted(EITHER)))
    for name in done:
        mutations[name](ds, rng)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue(), done


def run(data: bytes, settings: PixelSettings, pseudonym: str) -> tuple[str, float]:
    """One case as the worker's pixel stage runs it: "written" or "refused CODE", and seconds.
    Any other exception propagates: that is the invariant broken."""
    started = time.perf_counter()
    try:
        result = process_photo(read_instance(data), settings, pseudonym, KEY, InMemoryIdentities())
    except Refused as exc:
        if not exc.code or "\n" in exc.reason:
            raise AssertionError(f"a refusal without a code or a one-line reason: {exc!r}") from None
        return f"refused {exc.code}", time.perf_counter() - started
    out = result.dataset
    frames = int(out.get("NumberOfFrames", 1) or 1)
    if not out.file_meta.TransferSyntaxUID.is_compressed:
        expected = out.Rows * out.Columns * out.SamplesPerPixel * frames * out.BitsAllocated // 8
        if len(out.PixelData) not in (expected, expected + 1):
            held = len(out.PixelData)
            raise AssertionError(f"written with {held} bytes of pixel data, {expected} described")
    return "written", time.perf_counter() - started
