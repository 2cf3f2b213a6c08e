"""Values for action D ("replace with a non-zero length dummy value") and Z, valid for each VR.

A dummy must pass a validator (dciodvfy checks VR syntax and length) and must say
nothing about the original. Every text dummy is plain ASCII, so it is valid under any
Specific Character Set the instance declares, and short enough for the tightest VR
(16 characters for SH, CS and AE).
"""

from __future__ import annotations

from pydicom.valuerep import VR

# Replaces text that was removed; upper case and no spaces so it is also a valid CS and AE.
DUMMY_TEXT = "ANONYMIZED"
DUMMY_DATE = "19000101"
DUMMY_TIME = "000000"
DUMMY_DATETIME = DUMMY_DATE + DUMMY_TIME
DUMMY_AGE = "000Y"

_TEXT_VRS = frozenset({VR.AE, VR.CS, VR.LO, VR.LT, VR.PN, VR.SH, VR.ST, VR.UC, VR.UT})
_NUMBER_STRING_VRS = frozenset({VR.IS, VR.DS})
_BINARY_NUMBER_VRS = frozenset({VR.US, VR.SS, VR.UL, VR.SL, VR.FL, VR.FD, VR.SV, VR.UV, VR.AT})
_BYTES_VRS = frozenset({VR.OB, VR.OW, VR.OF, VR.OD, VR.OL, VR.OV, VR.UN})


def base_vr(vr: str) -> str:
    """One VR for ambiguous dictionary entries such as 'US or SS' or 'OB or OW'."""
    return vr.split(" or ")[0]


def dummy_value(vr: str) -> str | int | bytes:
    """A VR-valid value that carries no information (UI and SQ are the engine's job: they need context)."""
    vr = base_vr(vr)
    if vr in _TEXT_VRS:
        return DUMMY_TEXT
    if vr == VR.DA:
        return DUMMY_DATE
    if vr == VR.TM:
        return DUMMY_TIME
    if vr == VR.DT:
        return DUMMY_DATETIME
    if vr == VR.AS:
        return DUMMY_AGE
    if vr in _NUMBER_STRING_VRS:
        return "0"
    if vr in _BINARY_NUMBER_VRS:
        return 0
    if vr in _BYTES_VRS:
        # Binary blobs have no neutral non-empty content; an empty value is the honest dummy.
        return b""
    if vr == VR.UR:
        return ""
    raise ValueError(f"no dummy value for VR {vr}")


def empty_value(vr: str) -> str | bytes | list | None:
    """The zero-length value pydicom writes for ``vr`` (action Z)."""
    vr = base_vr(vr)
    if vr == VR.SQ:
        return []
    if vr in _BYTES_VRS:
        return b""
    return None
