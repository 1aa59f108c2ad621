"""How a budget's window will end: the shape of its trailing weeks, scaled to this window.

Spend is not flat. A feature used in office hours spends nothing at night and little at
weekends; a nightly job spends its whole day in one hour. A straight line through what
was spent so far (spent / elapsed × length) therefore alarms every Monday afternoon and
every night at 02:30. The forecast here expects the rest of the window to look like the
same hours did in the trailing weeks:

- **Profile.** For each hour of the week (tenant-local: Monday 00:00 … Sunday 23:00) the
  budget's average spend in that hour over the last ``N`` complete weeks before today
  (``N`` up to ``PROFILE_WEEKS``; only weeks the budget's features and models were in use
  count). With less than one week of history there is no forecast: nothing is known yet
  of how the budget spends, and a guess would alarm.
- **Trend.** ``usual_so_far`` is what the profile expected from the window's start until
  now, ``usual_rest`` what it expects from now to the end. The window runs at
  ``level = (spent + prior) / (usual_so_far + prior)`` of its usual pace, where ``prior``
  is a fifth of the usual window: early on the window is assumed usual, and the evidence
  takes over as the window fills. Projected: ``spent + level × usual_rest``.
- **Seen enough.** No alarm until the profile says a tenth of the window's usual spend
  should have happened: a few minutes of a nightly job or Monday's first hours say little.
  The figure is shown before that (the prior makes it mostly the usual pattern).
- **Spike.** The last two hours against what the profile expected of them: when they
  usually see at least 20 calls, ran at least 1.5× the usual rate, and the excess is well
  beyond chance (three standard deviations of spend that arrives call by call, on a day
  that may run a quarter busier than usual), the forecast assumes the spike goes on:
  ``spent + min(spike level × usual_rest, the spike's hourly rate × hours left)``. Fewer
  calls than that cannot tell a spike from a busy afternoon; the trend still sees it.

Everything is integers (nano-USD or tokens); only the spike's significance test, a
statistic and never an amount, uses floating point.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

HOURS_A_WEEK = 168
PROFILE_WEEKS = 4
# The usual pace weighs as much as this share of a usual window's spend (the prior).
PRIOR_DENOMINATOR = 5
# No forecast before the profile expects this share of the window's spend to be done.
MIN_SEEN_DENOMINATOR = 10
SPIKE_SPAN = timedelta(hours=2)
# A spike is the last two hours at this rate or more (as a fraction: 3/2) …
SPIKE_RATIO = (3, 2)
# … with an excess of this many standard deviations …
SPIKE_SIGMAS = 3
# … over two hours that usually see at least this many calls …
SPIKE_MIN_CALLS = 20
# … where a day may run a quarter above or below its usual pace by chance.
DAY_SPREAD = (1, 4)
RUNNING_FROM = date(2000, 1, 3)  # a Monday: running totals count weeks from it
UNITS = ("usd", "tokens")


@dataclass(frozen=True)
class HourlySpend:
    """Spend in one tenant-local hour of the history."""

    hour: datetime  # UTC start of the hour
    nano: int
    tokens: int
    calls: int


@dataclass(frozen=True)
class Profile:
    """A budget's usual spend in each hour of the week (per hour, in nano-USD and tokens)."""

    weeks: int
    tz: ZoneInfo
    nano: tuple[int, ...]
    tokens: tuple[int, ...]
    per_call_nano: int
    per_call_tokens: int
    # Running sums of the series over the week (169 entries, from 0), for ``usual``.
    nano_sums: tuple[int, ...] = ()
    tokens_sums: tuple[int, ...] = ()

    def series(self, unit: str) -> tuple[int, ...]:
        return self.nano if unit == "usd" else self.tokens

    def per_call(self, unit: str) -> int:
        """Return the mean spend of one call (at least 1)."""
        return max(self.per_call_nano if unit == "usd" else self.per_call_tokens, 1)

    def usual(self, unit: str, start: datetime, end: datetime) -> int:
        """Return the usual spend from ``start`` to ``end`` (hours cut short count pro rata).

        The difference of two running totals (``_running``), so a month costs what an hour does:
        the beat evaluates every live window each minute.
        """
        if end <= start:
            return 0
        # Wall-clock time: the hour repeated when clocks go back counts once, so a span inside
        # it could come out below zero.
        return max(self._running(unit, end) - self._running(unit, start), 0) // 3600

    def _running(self, unit: str, at: datetime) -> int:
        """Return the usual spend from a fixed Monday to the local wall-clock time ``at``, × 3600."""
        series = self.series(unit)
        cumulative = self._cumulative(unit)
        local = at.astimezone(self.tz)
        monday = local.date() - timedelta(days=local.weekday())
        weeks = (monday - RUNNING_FROM).days // 7
        slot = local.weekday() * 24 + local.hour
        into = local.minute * 60 + local.second
        return (weeks * cumulative[-1] + cumulative[slot]) * 3600 + series[slot] * into

    def _cumulative(self, unit: str) -> tuple[int, ...]:
        return self.nano_sums if unit == "usd" else self.tokens_sums


def history_bounds(*, today: date, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """Return the UTC [start, end) of the history a profile reads: the weeks before today."""
    end = datetime.combine(today, time(0), tzinfo=tz).astimezone(UTC)
    start = datetime.combine(today - timedelta(days=7 * PROFILE_WEEKS), time(0), tzinfo=tz).astimezone(UTC)
    return start, end


def _weekend(day: date) -> bool:
    return day.weekday() >= 5


def profile_build(hours: Iterable[HourlySpend], *, today: date, tz: ZoneInfo) -> Profile | None:
    """Return the profile of these hours of history, or None with less than a week of it.

    Weeks count back from today's local midnight; history starts at the first day with
    any spend, so a feature launched ten days ago has one week of profile, not four weeks
    of which three are empty. The usual spend of an hour is its weekday's usual total
    times the share that hour of the day takes (pooled over working days, and over
    weekends, apart): an hour of one weekday is too few calls to estimate on its own.
    Recent weeks weigh more (4, 3, 2, 1), so growth and a lever just pulled show sooner.
    """
    rows = [h for h in hours if h.calls or h.nano or h.tokens]
    if not rows:
        return None
    first_day = min(h.hour for h in rows).astimezone(tz).date()
    weeks = min((today - first_day).days // 7, PROFILE_WEEKS)
    if weeks < 1:
        return None
    first = today - timedelta(days=7 * weeks)
    # Per unit: weighted day totals by weekday, weighted hour sums by (weekend?, hour).
    day_totals = {unit: [0] * 7 for unit in UNITS}
    hour_sums = {unit: {kind: [0] * 24 for kind in (False, True)} for unit in UNITS}
    kind_totals = {unit: {False: 0, True: 0} for unit in UNITS}
    calls = spend = tokens = 0
    for h in rows:
        local = h.hour.astimezone(tz)
        day = local.date()
        if not first <= day < today:
            continue
        weight = weeks - ((today - day).days - 1) // 7
        for unit, amount in (("usd", h.nano), ("tokens", h.tokens)):
            day_totals[unit][day.weekday()] += weight * amount
            hour_sums[unit][_weekend(day)][local.hour] += weight * amount
            kind_totals[unit][_weekend(day)] += weight * amount
        calls += h.calls
        spend += h.nano
        tokens += h.tokens
    # Each weekday occurs once a week: its weights add up to 1 + 2 + … + weeks.
    weights = weeks * (weeks + 1) // 2
    tables = {}
    for unit in UNITS:
        table = []
        for weekday in range(7):
            kind = weekday >= 5
            for hour in range(24):
                denominator = weights * kind_totals[unit][kind]
                table.append(day_totals[unit][weekday] * hour_sums[unit][kind][hour] // denominator if denominator else 0)
        tables[unit] = tuple(table)
    return Profile(
        weeks=weeks, tz=tz, nano=tables["usd"], tokens=tables["tokens"],
        per_call_nano=spend // calls if calls else 0, per_call_tokens=tokens // calls if calls else 0,
        nano_sums=_running_sums(tables["usd"]), tokens_sums=_running_sums(tables["tokens"]),
    )


def _running_sums(series: tuple[int, ...]) -> tuple[int, ...]:
    total, sums = 0, [0]
    for value in series:
        total += value
        sums.append(total)
    return tuple(sums)


@dataclass(frozen=True)
class Outlook:
    """The forecast of one measure of one window."""

    unit: str
    spent: int
    limit: int
    projected: int
    reaches_limit_at: datetime | None  # None when the projection stays within the limit
    basis: str  # "trend" or "spike"
    weeks: int  # of history behind the profile
    usual_total: int  # what a usual window spends
    recent: int = 0  # spend of the last two hours (for a spike)
    recent_usual: int = 0  # what the profile expected of them
    # Whether enough of the window has passed to trust the trend (``seen_enough``); before
    # that the figure is mostly the usual pattern, shown but never alarmed on.
    settled: bool = True

    @property
    def over(self) -> bool:
        return self.projected > self.limit

    @property
    def alarming(self) -> bool:
        """Return whether this forecast is evidence enough to tell people the limit is at risk."""
        return self.over and (self.settled or self.basis == "spike")


def outlook(
    *,
    unit: str,
    spent: int,
    limit: int,
    start: datetime,
    end: datetime,
    now: datetime,
    profile: Profile | None,
    recent_spend: Callable[[datetime], int],
) -> Outlook | None:
    """Return where a window of ``start``..``end`` ends, given ``spent`` by ``now``, or None.

    ``recent_spend(since)`` returns the spend from ``since`` to now; it is asked only when
    the last two hours usually see enough calls to tell a spike. None without a profile,
    when the window is not under way, or when nothing is usual in it. Before the window
    has seen enough (``seen_enough``) the outlook is marked not ``settled``.
    """
    if profile is None or not start < now < end:
        return None
    usual_total = profile.usual(unit, start, end)
    if usual_total <= 0:
        return None
    usual_so_far = profile.usual(unit, start, now)
    usual_rest = usual_total - usual_so_far
    prior = usual_total // PRIOR_DENOMINATOR
    # projected = spent + level × usual_rest, level = (spent + prior) / (usual_so_far + prior)
    projected = spent + (spent + prior) * usual_rest // (usual_so_far + prior)
    level = (spent + prior, usual_so_far + prior)
    basis = "trend"

    recent_start = max(start, now - SPIKE_SPAN)
    recent_usual = profile.usual(unit, recent_start, now)
    per_call = profile.per_call(unit)
    recent = recent_spend(recent_start) if recent_usual >= SPIKE_MIN_CALLS * per_call else 0
    if _is_spike(recent, recent_usual, per_call=per_call):
        by_level = recent * usual_rest // recent_usual if recent_usual else None
        span_s = max(int((now - recent_start).total_seconds()), 1)
        by_rate = recent * int((end - now).total_seconds()) // span_s
        extra = by_rate if by_level is None else min(by_level, by_rate)
        if spent + extra > projected:
            projected, basis = spent + extra, "spike"
            level = (recent, recent_usual) if by_level is not None and by_level <= by_rate else (0, 0)
    reaches = None
    if projected > limit and spent > 0:
        reaches = _reaches_limit(unit, spent=spent, limit=limit, now=now, end=end, profile=profile,
                                 level=level, recent=recent, recent_start=recent_start)
    return Outlook(
        unit, spent, limit, projected, reaches, basis, profile.weeks, usual_total, recent, recent_usual,
        settled=usual_so_far * MIN_SEEN_DENOMINATOR >= usual_total,
    )


def seen_enough(profile: Profile, unit: str, *, start: datetime, end: datetime, now: datetime) -> bool:
    """Return whether the window is far enough along for a forecast (a tenth of its usual spend)."""
    if not start < now < end:
        return False
    usual_total = profile.usual(unit, start, end)
    return usual_total > 0 and profile.usual(unit, start, now) * MIN_SEEN_DENOMINATOR >= usual_total


def _is_spike(recent: int, usual: int, *, per_call: int) -> bool:
    """Return whether ``recent`` spend is too far above ``usual`` for chance to explain it.

    Spend arrives call by call (a compound Poisson process): its variance over a span is
    the usual number of calls times the mean square cost of a call, taken as twice the
    square of the mean (costs spread as wide as their mean). On top of that a whole day
    runs busier or quieter than usual (``DAY_SPREAD``), which no number of calls averages out.
    """
    if usual < SPIKE_MIN_CALLS * per_call:
        return False  # a handful of calls more or less is no evidence
    if recent <= 0 or recent * SPIKE_RATIO[1] < usual * SPIKE_RATIO[0]:
        return False
    calls_part = 2 * max(usual, per_call) * per_call
    day_part = usual * DAY_SPREAD[0] // DAY_SPREAD[1]
    return recent - usual >= SPIKE_SIGMAS * math.sqrt(calls_part + day_part * day_part)


def _reaches_limit(unit: str, *, spent: int, limit: int, now: datetime, end: datetime, profile: Profile,
                   level: tuple[int, int], recent: int, recent_start: datetime) -> datetime | None:
    """Return when the projection meets the limit (to the second), or None if it does not by the end.

    Spend projected to a moment only grows with it, so the first second it reaches the limit
    is found by halving: some twenty steps, each two running totals.
    """
    span_s = max(int((now - recent_start).total_seconds()), 1)

    def projected(seconds: int) -> int:
        if level[1]:
            return spent + profile.usual(unit, now, now + timedelta(seconds=seconds)) * level[0] // level[1]
        return spent + recent * seconds // span_s

    low, high = 0, int((end - now).total_seconds())
    if projected(high) < limit:
        return None
    while low < high:
        middle = (low + high) // 2
        if projected(middle) >= limit:
            high = middle
        else:
            low = middle + 1
    return now + timedelta(seconds=low)
