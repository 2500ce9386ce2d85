"""Sizes and ages for people, in one place for both faces."""

from __future__ import annotations

from datetime import UTC, datetime

import humanize


def size(n: int | None) -> str:
    return "-" if n is None else str(humanize.naturalsize(n, binary=False))


def age(dt: datetime | None, now: datetime | None = None) -> str:
    if dt is None:
        return "-"
    return f"{humanize.naturaldelta((now or datetime.now(UTC)) - dt)} ago"
