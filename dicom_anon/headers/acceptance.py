"""What the header profile refuses before touching an instance, and why.

The profile can only vouch for what it can read. Refused, with a stable code:

``missing-sop-class``
    No SOP Class UID: we cannot tell what the object is.
``missing-sop-instance-uid``
    No SOP Instance UID: the output could not be named or referenced.
``unsupported-sop-class``
    A private or unknown SOP class (its content is undocumented); an encapsulated
    document (PDF, CDA, STL, OBJ, MTL: the payload is a file of its own, with its own
    author fields and text that the header table never sees); Raw Data (vendor blobs);
    and every other non-image object (presentation states, waveforms, RT objects, ...),
    whose free text lives in places the table does not name.
``structured-content``
    A structured report or key object selection (content tree of text, names, dates)
    without the Clean Structured Content option. With the option it is accepted and
    its content tree is cleaned like any other sequence.
``burned-in-annotation``
    Burned In Annotation (0028,0301) is YES and the pixel stage did not clean the
    pixels: text in the image (names, MRNs) would be forwarded.
``unsupported-transfer-syntax``
    Encapsulated pixel data that we cannot scan for embedded metadata (video, JPEG XL,
    JPIP references, retired JPEG processes). Uncompressed, RLE, JPEG, JPEG-LS and
    JPEG 2000 (including HTJ2K) are accepted: their metadata segments are stripped.

``burned-in-annotation-unknown``
    Burned In Annotation is absent (or neither YES nor NO) on an ultrasound or secondary
    capture image, where names and dates are usually burned into the pixels (the
    deid-data ultrasound carries a patient name this way). Failing closed: the sender
    must say NO, or the route must clean the pixels. On other image classes an absent
    flag is taken at its word.
"""

from __future__ import annotations

from pydicom import Dataset
from pydicom.uid import (
    UID,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
    RLETransferSyntaxes,
    UID_dictionary,
)

from .errors import Refused
from .options import Option

# Encapsulated transfer syntaxes whose frames jpeg_markers.strip_jpeg_segments can walk.
STRIPPABLE_TRANSFER_SYNTAXES = frozenset(
    JPEGTransferSyntaxes + JPEGLSTransferSyntaxes + JPEG2000TransferSyntaxes + RLETransferSyntaxes
)

# SOP classes whose pixels usually carry burned-in text (screens, scanner overlays).
_USUALLY_BURNED_IN = ("Ultrasound", "Secondary Capture")

# SR-based IODs whose registered names do not contain "SR".
_SR_LIKE_NAMES = frozenset(
    {
        "Key Object Selection Document Storage",
        "Procedure Log Storage",
        "Macular Grid Thickness and Volume Report Storage",
        "Spectacle Prescription Report Storage",
    }
)


def sop_class_kind(uid: str) -> str:
    """'image', 'structured' or 'other' for a SOP Class UID; 'unknown' when not a registered SOP class."""
    entry = UID_dictionary.get(uid)
    if entry is None or entry[1] != "SOP Class":
        return "unknown"
    name = entry[0]
    if "Image Storage" in name:
        return "image"
    if " SR " in f" {name} " or name in _SR_LIKE_NAMES:
        return "structured"
    return "other"


def check_acceptable(ds: Dataset, options: frozenset[Option], pixels_cleaned: frozenset[Option]) -> None:
    """Raise Refused when the profile cannot make ``ds`` safe (see the module docstring)."""
    sop_class = str(ds.get("SOPClassUID", "") or "").strip()
    if not sop_class:
        raise Refused("missing-sop-class", "the dataset has no SOP Class UID")
    if not str(ds.get("SOPInstanceUID", "") or "").strip():
        raise Refused("missing-sop-instance-uid", "the dataset has no SOP Instance UID")
    kind = sop_class_kind(sop_class)
    name = UID(sop_class).name
    if kind == "unknown":
        raise Refused(
            "unsupported-sop-class",
            f"SOP class {sop_class} is private or unknown; its content cannot be checked",
        )
    if kind == "structured" and Option.CLEAN_STRUCTURED_CONTENT not in options:
        raise Refused(
            "structured-content",
            f"{name} holds a content tree of text, names and dates; "
            "it needs the clean-structured-content option",
        )
    if kind == "other":
        if name.startswith("Encapsulated"):
            why = "an encapsulated document carries a file of its own that the profile cannot read"
        else:
            why = "only images and structured reports are de-identified"
        raise Refused("unsupported-sop-class", f"{name}: {why}")

    burned_in = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if burned_in == "YES" and Option.CLEAN_PIXEL_DATA not in pixels_cleaned:
        raise Refused(
            "burned-in-annotation",
            "Burned In Annotation is YES: text in the pixels would be forwarded; "
            "route it through the pixel stage (clean-pixel-data)",
        )

    if (
        burned_in not in ("YES", "NO")
        and any(word in name for word in _USUALLY_BURNED_IN)
        and Option.CLEAN_PIXEL_DATA not in pixels_cleaned
    ):
        raise Refused(
            "burned-in-annotation-unknown",
            f"{name} without Burned In Annotation YES/NO: such images usually carry names in the pixels; "
            "the sender must set it to NO, or route it through the pixel stage",
        )

    file_meta = getattr(ds, "file_meta", None)
    tsyntax = getattr(file_meta, "TransferSyntaxUID", None) if file_meta is not None else None
    if (
        "PixelData" in ds
        and tsyntax is not None
        and UID(tsyntax).is_encapsulated
        and tsyntax not in STRIPPABLE_TRANSFER_SYNTAXES
    ):
        raise Refused(
            "unsupported-transfer-syntax",
            f"{UID(tsyntax).name}: embedded metadata in this encoding cannot be checked",
        )
