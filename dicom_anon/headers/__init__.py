"""Header de-identification: PS3.15 Annex E with every option, keyed pseudonyms, UID map, date shift.

Nothing here knows about networking or pixels beyond the metadata segments inside
encapsulated frames; callers hand in a pydicom Dataset and get a de-identified copy.
"""

from .engine import DEFAULT_SAFE_PRIVATE, Change, DeidResult, Profile, deidentify, patient_pseudonym
from .errors import Refused, SiteKeyError
from .options import PIXEL_OPTIONS, Option, parse_options
from .pseudonyms import SiteKey

__all__ = [
    "DEFAULT_SAFE_PRIVATE",
    "PIXEL_OPTIONS",
    "Change",
    "DeidResult",
    "Option",
    "Profile",
    "Refused",
    "SiteKey",
    "SiteKeyError",
    "deidentify",
    "parse_options",
    "patient_pseudonym",
]
