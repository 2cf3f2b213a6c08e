"""Stripping metadata segments from every frame of encapsulated Pixel Data.

The image data is never re-encoded: each frame goes through
``jpeg_markers.strip_and_measure`` and, only when something was removed, the frames
are encapsulated again. The offset table keeps the form it had: a Basic Offset Table
when the input had a non-empty one, an Extended Offset Table (with its lengths) when
the input had one, otherwise none. Untouched Pixel Data stays byte-identical.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from itertools import pairwise

from pydicom import Dataset
from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames
from pydicom.uid import (
    UID,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
    RLETransferSyntaxes,
)

from .errors import Refused
from .jpeg_markers import FrameSize, strip_and_measure

# How every frame of a transfer syntax's codestream starts (ISO 10918 / 14495 SOI, JPEG 2000
# SOC and SIZ). ``jpeg_markers`` walks a stream by what it starts with and returns anything else
# unread, so a frame under a JPEG transfer syntax that starts otherwise (one flipped bit in its
# SOI) would be forwarded with its Exif and comments still in it.
_STARTS = {
    **dict.fromkeys(JPEGTransferSyntaxes + JPEGLSTransferSyntaxes, (b"\xff\xd8", "SOI (FF D8)")),
    **dict.fromkeys(JPEG2000TransferSyntaxes, (b"\xff\x4f\xff\x51", "SOC and SIZ (FF 4F FF 51)")),
}
# An RLE frame's 64-byte header: the number of segments (1 to 15) and their offsets.
_RLE_HEADER = 64
_RLE_MAX_SEGMENTS = 15

# libjpeg writes 10 scans for a progressive colour photo, optimisers a few dozen at most; each
# scan of a 12 MP photo costs a decoder about 10 ms however few bytes it holds.
MAX_SCANS = 100


@dataclass(frozen=True)
class Stripped:
    """What stripping did: one description per removed segment, prefixed by its frame number."""

    removed: tuple[str, ...]


def _has_extended_offsets(ds: Dataset) -> bool:
    return "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds


def frames_of(ds: Dataset) -> list[bytes]:
    """Every frame of ``ds``'s encapsulated Pixel Data, or ``Refused("corrupt-pixel-data")``."""
    extended = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths) if _has_extended_offsets(ds) else None
    try:
        count = int(ds.get("NumberOfFrames", 1) or 1)
        return list(generate_frames(ds.PixelData, number_of_frames=count, extended_offsets=extended))
    except Exception as exc:  # pydicom raises several types for broken item framing; all mean the same
        reason = f"cannot split the encapsulated Pixel Data into frames ({exc})"
        raise Refused("corrupt-pixel-data", reason) from None


def check_frame_headers(ds: Dataset, sizes: list[FrameSize | None]) -> None:
    """Refuse frames whose own JPEG or JPEG 2000 header declares another size than the DICOM
    header, or that hold more scans than any encoder writes (``sizes``: ``jpeg_markers.frame_size``
    of each frame, None where a frame has no such header).

    Decoders allocate what the frame declares (a 1 kB frame declaring 65,000 x 65,000 under a
    header of 16 x 16 took 24 GB) and pass over the whole image once per scan. The pixel stage
    checks before it decodes; the header stage checks too, so that no route forwards such a
    frame to an archive's decoder.
    """
    try:
        header = (int(ds.Rows), int(ds.Columns), int(ds.get("SamplesPerPixel", 1)))
    except (AttributeError, TypeError, ValueError):
        header = None  # nothing to compare with; the pixel stage refuses such a header before decoding
    for index, size in enumerate(sizes, 1):
        if size is None:
            continue
        if header is not None and (size.rows, size.columns, size.components) != header:
            raise Refused(
                "corrupt-pixel-data",
                f"frame {index} declares {size.columns} x {size.rows} pixels with {size.components} "
                f"components, but the header says {header[1]} x {header[0]} with {header[2]}",
            )
        if size.scans > MAX_SCANS:
            raise Refused(
                "corrupt-pixel-data",
                f"frame {index} holds {size.scans} scans; encoders write up to a few dozen, and a "
                f"decoder passes over the whole image for each (more than {MAX_SCANS} are refused)",
            )


def strip_pixel_data(ds: Dataset) -> Stripped:
    """Strip JPEG COM/APPn (and JPEG 2000 COM) segments from every frame of ``ds`` in place.

    ``ds`` is the engine's private copy. Native (uncompressed) Pixel Data is left alone.
    """
    file_meta = getattr(ds, "file_meta", None)
    tsyntax = getattr(file_meta, "TransferSyntaxUID", None) if file_meta is not None else None
    if "PixelData" not in ds or tsyntax is None or not UID(tsyntax).is_encapsulated:
        return Stripped(())
    buffer = ds.PixelData
    frames = frames_of(ds)

    cleaned: list[bytes] = []
    removed: list[str] = []
    sizes: list[FrameSize | None] = []
    for index, frame in enumerate(frames):
        new, descriptions, size = strip_and_measure(frame)
        _check_start(frame, index + 1, tsyntax)
        sizes.append(size)
        if descriptions:
            new = _unpad(new)
        cleaned.append(new)
        prefix = f"frame {index + 1}: " if len(frames) > 1 else ""
        removed.extend(prefix + text for text in descriptions)
    check_frame_headers(ds, sizes)
    if not removed:
        return Stripped(())

    if _has_extended_offsets(ds):
        ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = encapsulate_extended(cleaned)
    else:
        ds.PixelData = encapsulate(cleaned, has_bot=_bot_item_length(buffer) > 0)
    ds["PixelData"].is_undefined_length = True
    return Stripped(tuple(removed))


def _check_start(frame: bytes, number: int, tsyntax: str) -> None:
    """Refuse a frame that is not the codestream its transfer syntax names: whatever is not walked
    as one would leave with every segment in it."""
    start = _STARTS.get(tsyntax)
    if start is not None and not frame.startswith(start[0]):
        raise Refused(
            "corrupt-jpeg",
            f"frame {number} starts with {frame[:4].hex(' ').upper() or 'nothing'}, "
            f"not the {start[1]} that {UID(tsyntax).name} frames start with",
        )
    if tsyntax in RLETransferSyntaxes and not _is_rle_frame(frame):
        raise Refused("corrupt-pixel-data", f"frame {number} does not start with an RLE header")


def _is_rle_frame(frame: bytes) -> bool:
    """PS3.5 G.3.1: a count of 1 to 15 segments, the first at byte 64, each after the one before
    and inside the frame, the unused offsets zero. Written here because pydicom's header parser
    (``pixels.decoders.rle._rle_parse_header``) is private and checks the count alone."""
    if len(frame) <= _RLE_HEADER:
        return False
    count, *offsets = struct.unpack_from("<16I", frame)
    if not 1 <= count <= _RLE_MAX_SEGMENTS:
        return False
    used = offsets[:count]
    return (
        used[0] == _RLE_HEADER
        and all(a < b for a, b in pairwise(used))
        and used[-1] < len(frame)
        and not any(offsets[count:])
    )


def _unpad(frame: bytes) -> bytes:
    """Drop the NUL padding after EOI/EOC: encapsulation pads the new length again, so none piles up."""
    trimmed = frame.rstrip(b"\x00")
    return trimmed if trimmed.endswith(b"\xff\xd9") else frame


def _bot_item_length(buffer: bytes) -> int:
    """Length of the Basic Offset Table item: 0 when the input had no offset table."""
    return int.from_bytes(buffer[4:8], "little")
