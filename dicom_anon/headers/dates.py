"""Shifting DA and DT values by a whole number of days (Retain Modified Dates option).

Every date of one patient moves by the same offset (``SiteKey.date_shift_days``), so
intervals between studies, and the patient's age at each study, are unchanged while
the calendar dates are not. Times of day and UTC offsets are not changed: a whole-day
shift leaves them meaningful and they do not date the study on their own.

Hand-written because pydicom parses DA/DT into ``datetime`` objects but does not
format a value back at the precision it was given (a DT of "202405" must stay a
year-month).
"""

from __future__ import annotations

import re
from datetime import date, timedelta

_DA = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
# YYYY[MM[DD]] then the rest (time, fraction, UTC offset), which is kept as written.
_DT = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)?([+-]\d{4})?$")


def shift_da(value: str, days: int) -> str | None:
    """``value`` moved by ``days``; None when it is not a valid DA (the caller then replaces it)."""
    match = _DA.match(value.strip())
    if match is None:
        return None
    moved = _shift(int(match[1]), int(match[2]), int(match[3]), days)
    return None if moved is None else moved.strftime("%Y%m%d")


def shift_dt(value: str, days: int) -> str | None:
    """A DT moved by ``days`` at the precision it was written with; None when it is not a valid DT.

    A DT of only a year or a year and month is moved as if it were the first day of
    that period, then written back at its own precision.
    """
    text = value.strip()
    match = _DT.match(text)
    if match is None:
        return None
    year, month, day, clock, offset = match.groups()
    if day is not None and month is None:
        return None
    moved = _shift(int(year), int(month or 1), int(day or 1), days)
    if moved is None:
        return None
    head = f"{moved.year:04d}"
    if month is not None:
        head += f"{moved.month:02d}"
    if day is not None:
        head += f"{moved.day:02d}"
    return head + (clock or "") + (offset or "")


def _shift(year: int, month: int, day: int, days: int) -> date | None:
    try:
        moved = date(year, month, day) + timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    return moved
