"""The range of tenant-local days a report covers: defaults, and the limits every report shares."""

from __future__ import annotations

from datetime import date, timedelta

from governance.api.fields import EARLIEST_DAY, LATEST_DAY

DEFAULT_RANGE_DAYS = 30
MAX_RANGE_DAYS = 731  # two years, a leap day included


class RangeError(ValueError):
    """A range no report answers; ``field`` is the parameter to fix."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def resolve_range(
    *, start: date | None, end: date | None, today: date, max_days: int = MAX_RANGE_DAYS,
) -> tuple[date, date]:
    """Return ``start``..``end`` with the defaults filled in (the last 30 days up to today).

    Raise ``RangeError`` for a day outside the days the API accepts (``EARLIEST_DAY`` ..
    ``LATEST_DAY``), a reversed range, or one longer than ``max_days``: a missing end
    defaults to today, so ``start=2021-01-01`` alone is refused like any over-long range.
    """
    end = end or today
    start = start or end - timedelta(days=DEFAULT_RANGE_DAYS - 1)
    for name, day in (("start", start), ("end", end)):
        if not EARLIEST_DAY <= day <= LATEST_DAY:
            raise RangeError(name, f"Must be a day from {EARLIEST_DAY} to {LATEST_DAY}; {day} is outside.")
    if start > end:
        raise RangeError("end", "The end must not be before the start.")
    days = (end - start).days + 1
    if days > max_days:
        raise RangeError(
            "start", f"Choose at most {max_days} days (two years); {start} to {end} is {days:,} days."
        )
    return start, end
