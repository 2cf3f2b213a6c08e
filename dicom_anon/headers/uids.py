"""Which UIDs are replaced (action U) and which are names of things the standard defines.

Instance UIDs (study, series, SOP instance, frame of reference, ...) are replaced by
``SiteKey.uid``, an HMAC of the original, so the same original becomes the same new
UID in every instance and every run: references stay consistent without a lookup
table. UIDs that the standard registers (SOP classes, transfer syntaxes, coding
schemes, context groups: everything under ``1.2.840.10008.``, plus whatever pydicom's
UID dictionary lists) name a kind of thing rather than a patient's thing, and a
reader needs them unchanged.
"""

from __future__ import annotations

from pydicom.uid import UID_dictionary

from .pseudonyms import SiteKey

DICOM_ROOT = "1.2.840.10008."


def is_registered(uid: str) -> bool:
    """True for UIDs the DICOM standard defines (never replaced)."""
    uid = uid.strip()
    return uid.startswith(DICOM_ROOT) or uid in UID_dictionary


def new_uid(key: SiteKey, uid: str) -> str:
    """The replacement for one UID value: registered ones unchanged, empty stays empty."""
    uid = uid.strip().rstrip("\x00")
    if not uid or is_registered(uid):
        return uid
    return key.uid(uid)
