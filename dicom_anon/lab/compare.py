"""Two evaluation runs compared photo by photo: which photos a change moved, and whether chance would.

``eval --per-photo`` writes one row per photo and method. Two runs of the same photos (a setting
changed between them) differ in a figure by the photos that moved one way minus those that moved
the other; on a hundred photos a handful of such moves happens by chance. The exact McNemar test
on the photos that changed says how often: it counts only the discordant photos, which is what a
paired comparison of two runs on the same photos needs (the runs' own intervals overlap far more
than their difference does).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..faces.embed import SFACE_SAME_PERSON
from ..faces.judge import DLIB_SAME_PERSON

Row = dict[str, str]


def _number(row: Row, column: str) -> float | None:
    value = row.get(column, "")
    return float(value) if value else None


def _held(row: Row) -> bool | None:
    return bool(row["refused"])


def _sface_reid(row: Row) -> bool | None:
    value = _number(row, "sface_to_original")
    return None if value is None else value >= SFACE_SAME_PERSON


def _dlib_reid(row: Row) -> bool | None:
    value = _number(row, "dlib_to_original")
    return None if value is None else value < DLIB_SAME_PERSON


def _flag(column: str) -> Callable[[Row], bool | None]:
    return lambda row: None if not row.get(column) else row[column] == "1"


# What is compared, and over which photos: being held over every photo both runs saw, the
# recognisers' verdicts over the photos both runs forwarded.
MEASURES: dict[str, tuple[Callable[[Row], bool | None], bool]] = {
    "held": (_held, False),
    "re-ID SFace": (_sface_reid, True),
    "rank-1 SFace": (_flag("sface_rank1"), True),
    "re-ID dlib": (_dlib_reid, True),
    "rank-1 dlib": (_flag("dlib_rank1"), True),
}


@dataclass(frozen=True)
class Change:
    """One measure in two runs: how many photos each run counts, which photos only one counts."""

    measure: str
    photos: int
    first: int
    second: int
    only_first: tuple[str, ...]
    only_second: tuple[str, ...]

    @property
    def p_value(self) -> float:
        return mcnemar(len(self.only_first), len(self.only_second))


@dataclass(frozen=True)
class Comparison:
    method: str
    changes: tuple[Change, ...]
    forwarded_both: int
    same_person: int


def mcnemar(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for ``b`` photos counted by the first run only and ``c`` by
    the second only: the chance of a split at least this uneven if either were as likely. Written
    out (a binomial sum) rather than taken from SciPy or statsmodels, which nothing else needs."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def read_per_photo(path: Path) -> dict[tuple[str, str], Row]:
    """``eval --per-photo``'s rows by (method, photo); ``ValueError`` naming the file if it is not one."""
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = {"method", "photo", "refused", "new_person"} - set(reader.fieldnames or ())
            if missing:
                raise ValueError(f"no {', '.join(sorted(missing))} column")
            return {(row["method"], row["photo"]): row for row in reader}
    except (ValueError, csv.Error) as exc:  # UnicodeDecodeError too: a binary file
        raise ValueError(f"{path}: not an eval --per-photo file ({exc})") from None


def compare(first: dict[tuple[str, str], Row], second: dict[tuple[str, str], Row]) -> list[Comparison]:
    """Every method both runs measured, on the photos both saw."""
    comparisons = []
    for method in sorted({m for m, _ in first} & {m for m, _ in second}):
        photos = sorted(p for m, p in first if m == method and (m, p) in second)
        both = [(p, first[method, p], second[method, p]) for p in photos]
        forwarded = [(p, a, b) for p, a, b in both if not a["refused"] and not b["refused"]]
        changes = []
        for name, (measure, forwarded_only) in MEASURES.items():
            seen = [(p, measure(a), measure(b)) for p, a, b in (forwarded if forwarded_only else both)]
            seen = [(p, x, y) for p, x, y in seen if x is not None and y is not None]
            changes.append(
                Change(
                    name,
                    len(seen),
                    sum(x for _, x, _ in seen),
                    sum(y for _, _, y in seen),
                    tuple(p for p, x, y in seen if x and not y),
                    tuple(p for p, x, y in seen if y and not x),
                )
            )
        same = sum(a["new_person"] == b["new_person"] for _, a, b in forwarded)
        comparisons.append(Comparison(method, tuple(changes), len(forwarded), same))
    return comparisons
