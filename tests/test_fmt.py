"""Ages and sizes as the screens print them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tui.core.fmt import short_age

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("ago", "text"), [
    (timedelta(seconds=45), "45s"), (timedelta(minutes=12, seconds=59), "12m"),
    (timedelta(hours=26), "26h"), (timedelta(hours=47, minutes=59), "47h"),
    (timedelta(days=2), "2d"), (timedelta(days=9, hours=3), "9d"), (timedelta(days=98), "14w"),
    (timedelta(minutes=-5), "future"),
])
def test_short_age(ago: timedelta, text: str) -> None:
    assert short_age(NOW - ago, NOW) == text
    assert short_age(None, NOW) == "-"
