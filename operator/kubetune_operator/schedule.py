"""Cron arithmetic for recurring retraining (pure)."""

from __future__ import annotations

import datetime as dt

from croniter import croniter


def parse_time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def due_time(schedule: str, last: dt.datetime, now: dt.datetime) -> dt.datetime | None:
    """The latest scheduled time in (last, now], or None when no run is due.

    >>> t = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    >>> due_time("0 * * * *", t, t + dt.timedelta(minutes=59)) is None
    True
    >>> due_time("0 * * * *", t, t + dt.timedelta(hours=3)).hour
    3
    """
    itr = croniter(schedule, last)
    due = None
    # Missed slots collapse into one run (like a CronJob with concurrencyPolicy Forbid), but walk at
    # most a bounded number of slots so a years-old lastScheduleTime cannot spin the operator.
    for _ in range(10_000):
        slot = itr.get_next(dt.datetime)
        if slot > now:
            break
        due = slot
    return due
