"""The PS3.15 Annex E profile options, their table columns and their CID 7050 codes.

Kept in one place so that the table loader, the engine, the CLI and the markers
written into the output all speak of an option by the same name.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Option(StrEnum):
    """A PS3.15 Table E.1-1 option, named as a records officer types it on the CLI."""

    CLEAN_PIXEL_DATA = "clean-pixel-data"
    CLEAN_RECOGNIZABLE_VISUAL_FEATURES = "clean-recognizable-visual-features"
    CLEAN_GRAPHICS = "clean-graphics"
    CLEAN_STRUCTURED_CONTENT = "clean-structured-content"
    CLEAN_DESCRIPTORS = "clean-descriptors"
    RETAIN_FULL_DATES = "retain-full-dates"
    RETAIN_MODIFIED_DATES = "retain-modified-dates"
    RETAIN_PATIENT_CHARACTERISTICS = "retain-patient-characteristics"
    RETAIN_DEVICE_IDENTITY = "retain-device-identity"
    RETAIN_UIDS = "retain-uids"
    RETAIN_SAFE_PRIVATE = "retain-safe-private"
    RETAIN_INSTITUTION_IDENTITY = "retain-institution-identity"


# Options that describe work done on the pixels. The header engine only records
# them when the pixel stage says it did that work; a headers-only run cannot claim them.
PIXEL_OPTIONS: frozenset[Option] = frozenset(
    {Option.CLEAN_PIXEL_DATA, Option.CLEAN_RECOGNIZABLE_VISUAL_FEATURES}
)


@dataclass(frozen=True)
class OptionInfo:
    """Where an option lives in the table JSON and how it is coded in (0012,0064)."""

    column: str | None
    code: str
    meaning: str


# CID 7050 "De-identification Method"; 113100 is the basic profile itself.
BASIC_PROFILE_CODE = OptionInfo("basicProfile", "113100", "Basic Application Confidentiality Profile")

OPTION_INFO: dict[Option, OptionInfo] = {
    Option.CLEAN_PIXEL_DATA: OptionInfo(None, "113101", "Clean Pixel Data Option"),
    Option.CLEAN_RECOGNIZABLE_VISUAL_FEATURES: OptionInfo(
        None, "113102", "Clean Recognizable Visual Features Option"
    ),
    Option.CLEAN_GRAPHICS: OptionInfo("cleanGraphOpt", "113103", "Clean Graphics Option"),
    Option.CLEAN_STRUCTURED_CONTENT: OptionInfo(
        "cleanStructContOpt", "113104", "Clean Structured Content Option"
    ),
    Option.CLEAN_DESCRIPTORS: OptionInfo("cleanDescOpt", "113105", "Clean Descriptors Option"),
    Option.RETAIN_FULL_DATES: OptionInfo(
        "rtnLongFullDatesOpt", "113106", "Retain Longitudinal Temporal Information Full Dates Option"
    ),
    Option.RETAIN_MODIFIED_DATES: OptionInfo(
        "rtnLongModifDatesOpt",
        "113107",
        "Retain Longitudinal Temporal Information Modified Dates Option",
    ),
    Option.RETAIN_PATIENT_CHARACTERISTICS: OptionInfo(
        "rtnPatCharsOpt", "113108", "Retain Patient Characteristics Option"
    ),
    Option.RETAIN_DEVICE_IDENTITY: OptionInfo("rtnDevIdOpt", "113109", "Retain Device Identity Option"),
    Option.RETAIN_UIDS: OptionInfo("rtnUIDsOpt", "113110", "Retain UIDs Option"),
    Option.RETAIN_SAFE_PRIVATE: OptionInfo("rtnSafePrivOpt", "113111", "Retain Safe Private Option"),
    Option.RETAIN_INSTITUTION_IDENTITY: OptionInfo(
        "rtnInstIdOpt", "113112", "Retain Institution Identity Option"
    ),
}


def parse_options(names: list[str] | tuple[str, ...]) -> frozenset[Option]:
    """Turn user-typed option names into Options; raise ValueError naming the bad one and the choices."""
    result = set()
    valid = ", ".join(o.value for o in Option)
    for name in names:
        try:
            result.add(Option(name.strip().lower().replace("_", "-")))
        except ValueError:
            raise ValueError(f"unknown option {name!r}; choose from: {valid}") from None
    if Option.RETAIN_FULL_DATES in result and Option.RETAIN_MODIFIED_DATES in result:
        raise ValueError("retain-full-dates and retain-modified-dates exclude each other; choose one")
    return frozenset(result)
