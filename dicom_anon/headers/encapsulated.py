"""Stripping metadata segments from every frame of encapsulated Pixel Data.

The image data is never re-encoded: each frame goes through
``jpeg_markers.strip_jpeg_segments`` and, only when something was removed, the frames
are encapsulated again. The offset table keeps the form it had: a Basic Offset Table
when the input had a non-empty one, an Extended Offset Table (with its lengths) when
the input had one, otherwise none. Untouched Pixel Data stays byte-identical.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom import Dataset
from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames
from pydicom.uid import UID

from .errors import Refused
from .jpeg_markers import strip_jpeg_segments


@dataclass(frozen=True)
class Stripped:
    """What stripping did: one description per removed segment, prefixed by its frame number."""

    removed: tuple[str, ...]


def strip_pixel_data(ds: Dataset) -> Stripped:
    """Strip JPEG COM/APPn (and JPEG 2000 COM) segments from every frame of ``ds`` in place.

    ``ds`` is the engine's private copy. Native (uncompressed) Pixel Data is left alone.
    """
    file_meta = getattr(ds, "file_meta", None)
    tsyntax = getattr(file_meta, "TransferSyntaxUID", None) if file_meta is not None else None
    if "PixelData" not in ds or tsyntax is None or not UID(tsyntax).is_encapsulated:
        return Stripped(())
    buffer = ds.PixelData
    number_of_frames = int(ds.get("NumberOfFrames", 1) or 1)
    extended = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        extended = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    try:
        frames = list(generate_frames(buffer, number_of_frames=number_of_frames, extended_offsets=extended))
    except Exception as exc:  # pydicom raises several types for broken item framing; all mean the same
        reason = f"cannot split the encapsulated Pixel Data into frames ({exc})"
        raise Refused("corrupt-pixel-data", reason) from None

    cleaned: list[bytes] = []
    removed: list[str] = []
    for index, frame in enumerate(frames):
        new, descriptions = strip_jpeg_segments(frame)
        if descriptions:
            new = _unpad(new)
        cleaned.append(new)
        prefix = f"frame {index + 1}: " if len(frames) > 1 else ""
        removed.extend(prefix + text for text in descriptions)
    if not removed:
        return Stripped(())

    if extended is not None:
        ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = encapsulate_extended(cleaned)
    else:
        ds.PixelData = encapsulate(cleaned, has_bot=_bot_item_length(buffer) > 0)
    ds["PixelData"].is_undefined_length = True
    return Stripped(tuple(removed))


def _unpad(frame: bytes) -> bytes:
    """Drop the NUL padding after EOI/EOC: encapsulation pads the new length again, so none piles up."""
    trimmed = frame.rstrip(b"\x00")
    return trimmed if trimmed.endswith(b"\xff\xd9") else frame


def _bot_item_length(buffer: bytes) -> int:
    """Length of the Basic Offset Table item: 0 when the input had no offset table."""
    return int.from_bytes(buffer[4:8], "little")
