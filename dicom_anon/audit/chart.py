"""A picture of the trail for compliance reviewers: per hour (or day), what came in, what left for
which destination, what was held back and why, and who was turned away at the door.

Counting (``tally``) is kept apart from drawing (``draw``) so that the figures can be tested
without pixels; the picture only ever shows counts, destination names and reason codes, never
an identifier.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from .query import Filters, query
from .trail import Verification

RECEIVED = "instance_received"
FORWARDED = "instance_forwarded"
QUARANTINED = "instance_quarantined"
REJECTED = "association_rejected"

# A chart with more bars than this is a grey smear, not an answer.
MAX_BUCKETS = 1000


class Bucket(StrEnum):
    auto = "auto"
    minute = "minute"
    hour = "hour"
    day = "day"


STEP = {Bucket.minute: timedelta(minutes=1), Bucket.hour: timedelta(hours=1), Bucket.day: timedelta(days=1)}
# auto: the finest bucket that keeps a window of this length readable (at most 180 buckets).
AUTO_UP_TO = ((Bucket.minute, timedelta(hours=3)), (Bucket.hour, timedelta(days=7)))


def floor(ts: datetime, bucket: Bucket) -> datetime:
    """The start of the bar that ``ts`` falls in."""
    if bucket is Bucket.day:
        return ts.replace(hour=0, minute=0, second=0, microsecond=0)
    if bucket is Bucket.hour:
        return ts.replace(minute=0, second=0, microsecond=0)
    return ts.replace(second=0, microsecond=0)


def _ts(record: dict[str, Any]) -> datetime | None:
    try:
        ts = datetime.fromisoformat(str(record.get("ts")))
    except ValueError:
        return None
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Tally:
    """Counts per bar. ``forwarded`` and ``quarantined`` hold one row per destination and per
    reason code; ``rejected`` is None when the chart is for one route or destination, which an
    association (turned away before any instance) does not have."""

    bucket: Bucket
    starts: tuple[datetime, ...]
    received: tuple[int, ...]
    forwarded: dict[str, tuple[int, ...]]
    quarantined: dict[str, tuple[int, ...]]
    rejected: tuple[int, ...] | None
    filters: Filters

    @property
    def events(self) -> int:
        """How many records the chart counts."""
        rows = [self.received, *self.forwarded.values(), *self.quarantined.values(), self.rejected or ()]
        return sum(sum(row) for row in rows)

    @property
    def end(self) -> datetime | None:
        return self.starts[-1] + STEP[self.bucket] if self.starts else None


def select(records: Sequence[dict[str, Any]], filters: Filters) -> list[dict[str, Any]]:
    """The records that ``audit query`` with the same options returns, plus, for a route or
    destination, the receipt of each instance that went that way: a receipt names neither, so it
    is found through its job, as ``--sop-uid`` finds every event of an instance."""
    in_window = query(records, Filters(since=filters.since, until=filters.until))
    if filters.route is None and filters.destination is None:
        return in_window
    narrow = Filters(route=filters.route, destination=filters.destination)
    jobs = {r["job"] for r in query(records, narrow) if r.get("job") is not None}
    matching = {id(r) for r in query(in_window, narrow)}
    return [
        r for r in in_window if id(r) in matching or (r.get("event") == RECEIVED and r.get("job") in jobs)
    ]


def _window(
    records: Sequence[dict[str, Any]], counted: list[datetime], filters: Filters
) -> tuple[datetime, datetime] | None:
    """From ``--since`` to ``--until`` where given, else from the first to the last event counted;
    never outside the trail's own first and last record (before it began nothing was recorded,
    and empty bars there would read as 'nothing happened')."""
    stamps = [t for t in map(_ts, records) if t is not None]
    if not stamps or (not counted and (filters.since is None or filters.until is None)):
        return None
    start = max(filters.since, min(stamps)) if filters.since else min(counted)
    end = min(filters.until, max(stamps)) if filters.until else max(counted)
    return (start, end) if start <= end else None


def _choose(bucket: Bucket, span: timedelta) -> Bucket:
    if bucket is not Bucket.auto:
        return bucket
    return next((b for b, longest in AUTO_UP_TO if span <= longest), Bucket.day)


def tally(
    records: Sequence[dict[str, Any]], filters: Filters | None = None, bucket: Bucket = Bucket.auto
) -> Tally:
    """Count the chart's events per bar over the whole trail's ``records``.

    Raises ValueError when the window would need more than MAX_BUCKETS bars.
    """
    filters = filters or Filters()
    chosen = [
        (r, t)
        for r in select(records, filters)
        if r.get("event") in {RECEIVED, FORWARDED, QUARANTINED, REJECTED} and (t := _ts(r)) is not None
    ]
    window = _window(records, [t for _, t in chosen], filters)
    if window is None:
        bucket = Bucket.hour if bucket is Bucket.auto else bucket
        starts: list[datetime] = []
    else:
        bucket = _choose(bucket, window[1] - window[0])
        first, last = floor(window[0], bucket), floor(window[1], bucket)
        count = (last - first) // STEP[bucket] + 1
        if count > MAX_BUCKETS:
            raise ValueError(
                f"{count} bars of one {bucket.value} each are too many to read; "
                "choose a wider --bucket or a narrower --since/--until"
            )
        starts = [first + i * STEP[bucket] for i in range(count)]
    index = {start: i for i, start in enumerate(starts)}
    per_route = filters.route is not None or filters.destination is not None

    received = [0] * len(starts)
    rejected = [0] * len(starts)
    forwarded: dict[str, list[int]] = {}
    quarantined: dict[str, list[int]] = {}
    for record, ts in chosen:
        i = index[floor(ts, bucket)]
        event = record["event"]
        if event == RECEIVED:
            received[i] += 1
        elif event == REJECTED:
            rejected[i] += 1
        elif event == FORWARDED:
            forwarded.setdefault(str(record.get("destination") or "?"), [0] * len(starts))[i] += 1
        else:
            quarantined.setdefault(str(record.get("code") or "?"), [0] * len(starts))[i] += 1
    return Tally(
        bucket=bucket,
        starts=tuple(starts),
        received=tuple(received),
        forwarded={k: tuple(v) for k, v in sorted(forwarded.items())},
        quarantined={k: tuple(v) for k, v in sorted(quarantined.items(), key=lambda kv: -sum(kv[1]))},
        rejected=None if per_route else tuple(rejected),
        filters=filters,
    )


# --- drawing ------------------------------------------------------------------------------------

RECEIVED_COLOUR = "#78909c"
REJECTED_COLOUR = "#6a1b9a"
BROKEN_COLOUR = "#c62828"
OK_COLOUR = "#2e7d32"
SIZE_INCHES = (12.0, 6.2)
_LABEL_FORMAT = {Bucket.minute: "%H:%M", Bucket.hour: "%d %b %H:00", Bucket.day: "%Y-%m-%d"}


def _shades(cmap_name: str, n: int) -> list[Any]:
    """``n`` distinguishable shades of one hue: every destination green, every reason orange."""
    from matplotlib import colormaps

    cmap = colormaps[cmap_name]
    return [cmap(0.85 - 0.5 * i / max(n - 1, 1)) for i in range(n)]


def _tick_labels(tally: Tally) -> list[str]:
    fmt = _LABEL_FORMAT[tally.bucket]
    if tally.bucket is Bucket.minute and tally.starts and tally.starts[0].date() != tally.starts[-1].date():
        fmt = "%d %b %H:%M"
    return [s.strftime(fmt) for s in tally.starts]


def _range_text(tally: Tally) -> str:
    if not tally.starts or tally.end is None:
        return "no events in the range asked for"
    start, end = tally.starts[0], tally.end
    same_day = start.date() == (end - timedelta(microseconds=1)).date()
    end_fmt = "%H:%M" if same_day else "%Y-%m-%d %H:%M"
    return f"{start:%Y-%m-%d %H:%M} to {end:{end_fmt}} UTC, counted per {tally.bucket.value}"


def _chain_text(verification: Verification) -> str:
    if verification.ok:
        return f"Hash chain verified: {verification.records} records, none edited, deleted or reordered"
    first = verification.problems[0]
    more = len(verification.problems) - 1
    return (
        f"HASH CHAIN BROKEN at {first}"
        + (f" (and {more} more)" if more else "")
        + "\nThe trail has been altered: these figures cannot be trusted"
    )


def draw(tally: Tally, verification: Verification, out: Path, *, footnote: str = "") -> None:
    """Write the chart as a PNG: four bars per time bucket, side by side (received; forwarded,
    stacked per destination; quarantined, stacked per reason; associations rejected), and a title
    that says the time range and whether the hash chain verified."""
    # Imported here: matplotlib takes half a second to load, which every other command would pay.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.layout_engine import ConstrainedLayoutEngine
    from matplotlib.ticker import MaxNLocator

    n = len(tally.starts)
    # A broken chain gets a red frame round the whole picture, so the layout keeps clear of it.
    pad = 0.04 if verification.ok else 0.14
    fig = Figure(figsize=SIZE_INCHES, dpi=110, layout=ConstrainedLayoutEngine(w_pad=pad, h_pad=pad))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    # Every kind of bar is drawn and named in the legend even when it is all zero: "0 quarantined"
    # is an answer a reviewer wants to read, not to infer from a missing colour.
    zero = (0,) * n
    forwarded = tally.forwarded or {"": zero}
    quarantined = tally.quarantined or {"": zero}
    groups: list[list[tuple[str, tuple[int, ...], Any]]] = [
        [("received", tally.received, RECEIVED_COLOUR)],
        [
            (f"forwarded to {dest}" if dest else "forwarded", counts, colour)
            for (dest, counts), colour in zip(
                forwarded.items(), _shades("Greens", len(forwarded)), strict=True
            )
        ],
        [
            (f"quarantined: {code}" if code else "quarantined", counts, colour)
            for (code, counts), colour in zip(
                quarantined.items(), _shades("Oranges", len(quarantined)), strict=True
            )
        ],
    ]
    if tally.rejected is not None:
        groups.append([("associations rejected", tally.rejected, REJECTED_COLOUR)])
    width = 0.8 / len(groups)
    xs = range(n)
    for g, stack in enumerate(groups):
        offset = (g - (len(groups) - 1) / 2) * width
        bottom = [0] * n
        for label, counts, colour in stack:
            ax.bar(
                [x + offset for x in xs],
                counts,
                width,
                bottom=bottom,
                color=colour,
                edgecolor="white",
                linewidth=0.4,
                label=f"{label} ({sum(counts)})",
            )
            bottom = [b + c for b, c in zip(bottom, counts, strict=True)]

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("count")
    ax.set_xlabel(f"time (UTC), per {tally.bucket.value}")
    ax.grid(axis="y", color="#dddddd", linewidth=0.8)
    ax.set_axisbelow(True)
    ax.spines[["top", "right"]].set_visible(False)
    if n:
        step = max(1, -(-n // 14))  # at most ~14 labels, whatever the number of bars
        rotate = n > 8
        ax.set_xticks(
            list(xs)[::step],
            _tick_labels(tally)[::step],
            rotation=30 if rotate else 0,
            ha="right" if rotate else "center",
        )
        ax.set_xlim(-0.6, n - 0.4)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, title="total in range")
    else:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.text(0.5, 0.5, "no matching events", ha="center", va="center", transform=ax.transAxes)

    scope = [f"route {tally.filters.route}"] if tally.filters.route else []
    scope += [f"destination {tally.filters.destination}"] if tally.filters.destination else []
    fig.suptitle(
        f"Audit trail: {_range_text(tally)}" + (f" ({', '.join(scope)} only)" if scope else ""),
        fontsize=13,
        fontweight="bold",
    )
    if footnote:
        # Bottom right, under the legend: the one corner the layout leaves empty.
        width_in, height_in = SIZE_INCHES
        fig.text(
            1 - pad / width_in,
            pad / height_in,
            footnote,
            fontsize=8,
            color="#777777",
            ha="right",
            va="bottom",
        )
    ax.set_title(
        _chain_text(verification),
        color=OK_COLOUR if verification.ok else BROKEN_COLOUR,
        fontsize=11 if verification.ok else 14,
        fontweight="normal" if verification.ok else "bold",
        loc="left",
    )
    if not verification.ok:
        fig.patch.set_edgecolor(BROKEN_COLOUR)
        fig.patch.set_linewidth(8)
    fig.savefig(out, format="png", edgecolor=fig.get_edgecolor())
