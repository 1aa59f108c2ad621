"""Calendar-aligned budget periods in the tenant's time zone (weeks start Monday)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from budgets.models import Period

# Total and run budgets have one window that starts here and never ends.
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def _local_midnight(day: date, tz: ZoneInfo) -> datetime:
    # Midnight as a wall-clock time; zoneinfo resolves DST gaps and folds.
    return datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)


def window_bounds(period: str, at: datetime, tz: ZoneInfo) -> tuple[datetime, datetime | None]:
    """Return the UTC [start, end) of the ``period`` window containing ``at``."""
    if period == Period.TOTAL:
        return EPOCH, None
    local_day = at.astimezone(tz).date()
    if period == Period.DAY:
        first, following = local_day, local_day + timedelta(days=1)
    elif period == Period.WEEK:
        first = local_day - timedelta(days=local_day.weekday())
        following = first + timedelta(days=7)
    elif period == Period.MONTH:
        first = local_day.replace(day=1)
        following = (first + timedelta(days=32)).replace(day=1)
    else:
        raise ValueError(f"unknown period {period!r}")
    return _local_midnight(first, tz), _local_midnight(following, tz)
