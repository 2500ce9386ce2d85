"""Sizes and ages for people, in one place for both faces."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import humanize


def size(n: int | None) -> str:
    return "-" if n is None else str(humanize.naturalsize(n, binary=False))


def duration(seconds: float) -> str:
    """A span for people: "12 minutes", "an hour", "45 seconds"."""
    return str(humanize.naturaldelta(timedelta(seconds=max(0.0, seconds))))


def age(dt: datetime | None, now: datetime | None = None) -> str:
    if dt is None:
        return "-"
    return f"{humanize.naturaldelta((now or datetime.now(UTC)) - dt)} ago"


def short_age(dt: datetime | None, now: datetime | None = None) -> str:
    """An age for narrow table columns: 45s, 12m, 26h (under two days, so that "over 24 hours"
    is plain), 9d, 14w; "future" for a clock ahead of ours."""
    if dt is None:
        return "-"
    seconds = ((now or datetime.now(UTC)) - dt).total_seconds()
    if seconds < 0:
        return "future"
    for limit, unit, div in ((60, "s", 1), (3600, "m", 60), (48 * 3600, "h", 3600),
                             (70 * 86400, "d", 86400)):
        if seconds < limit:
            return f"{int(seconds // div)}{unit}"
    return f"{int(seconds // (7 * 86400))}w"
