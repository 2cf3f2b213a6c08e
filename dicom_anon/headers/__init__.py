"""Header de-identification: PS3.15 Annex E with every option, keyed pseudonyms, UID map, date shift.

Nothing here knows about networking or pixels beyond the metadata segments inside
encapsulated frames; callers hand in a pydicom Dataset and get a de-identified copy.
"""

from importlib import import_module
from typing import Any

# Where each name lives. Imported on first use: ``dicom_anon.headers.options`` (the CLI's option
# names) must not pull in pydicom and the Annex E table through this package's ``__init__``.
_WHERE = {
    "DEFAULT_SAFE_PRIVATE": "engine",
    "Change": "engine",
    "DeidResult": "engine",
    "Profile": "engine",
    "deidentify": "engine",
    "patient_pseudonym": "engine",
    "Refused": "errors",
    "SiteKeyError": "errors",
    "PIXEL_OPTIONS": "options",
    "Option": "options",
    "parse_options": "options",
    "SiteKey": "pseudonyms",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_WHERE[name]}", __name__), name)


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
