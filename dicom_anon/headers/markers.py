"""The attributes that tell a receiver what was done to an instance (PS3.15 E.1.1, PS3.3 C.7.1.1).

Patient Identity Removed, De-identification Method (text) and its Code Sequence (CID
7050: the basic profile plus each option actually applied), and the image flags
Burned In Annotation, Recognizable Visual Features and Longitudinal Temporal
Information Modified. Values already in the input are replaced, never merged: a
marker must describe this output, not what some earlier tool claimed.
"""

from __future__ import annotations

from pydicom import Dataset
from pydicom.sequence import Sequence

from .. import __version__
from .options import BASIC_PROFILE_CODE, OPTION_INFO, Option

LO_MAX = 64


def method_text(options: frozenset[Option], key_fingerprint: str) -> list[str]:
    """De-identification Method values (LO, 64 characters each, so one fact per value)."""
    values = [f"dicom-anon {__version__}", "PS3.15 Annex E Basic Application Confidentiality Profile"]
    values += [f"option {opt.value}" for opt in sorted(options, key=lambda o: OPTION_INFO[o].code)]
    values.append(f"site key {key_fingerprint}")
    return [value[:LO_MAX] for value in values]


def method_codes(options: frozenset[Option]) -> Sequence:
    """De-identification Method Code Sequence items: 113100 and each applied option's code."""
    infos = [BASIC_PROFILE_CODE, *sorted((OPTION_INFO[o] for o in options), key=lambda i: i.code)]
    items = []
    for info in infos:
        item = Dataset()
        item.CodeValue = info.code
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = info.meaning
        items.append(item)
    return Sequence(items)


def temporal_flag(options: frozenset[Option]) -> str:
    """Longitudinal Temporal Information Modified: what happened to the dates."""
    if Option.RETAIN_MODIFIED_DATES in options:
        return "MODIFIED"
    if Option.RETAIN_FULL_DATES in options:
        return "UNMODIFIED"
    return "REMOVED"


def write_markers(
    ds: Dataset, options: frozenset[Option], key_fingerprint: str, *, is_image: bool
) -> dict[str, tuple[object, object]]:
    """Set every marker on ``ds``; return ``{keyword: (old value, new value)}`` for the review."""
    written: dict[str, tuple[object, object]] = {}

    def put(keyword: str, value: object) -> None:
        old = ds[keyword].value if keyword in ds else None
        setattr(ds, keyword, value)
        written[keyword] = (old, value)

    put("PatientIdentityRemoved", "YES")
    put("DeidentificationMethod", method_text(options, key_fingerprint))
    put("DeidentificationMethodCodeSequence", method_codes(options))
    if is_image:
        if Option.CLEAN_PIXEL_DATA in options:
            put("BurnedInAnnotation", "NO")
        if Option.CLEAN_RECOGNIZABLE_VISUAL_FEATURES in options:
            put("RecognizableVisualFeatures", "NO")
        put("LongitudinalTemporalInformationModified", temporal_flag(options))
    return written
