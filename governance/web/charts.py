"""Charts as SVG drawn on the server: readable without hovering, no script, no external assets.

Every point and bar carries an SVG ``<title>``, so hovering (or a long press) shows its value.

Each function returns markup that is safe to insert into a page (every label is
escaped). Amounts are integers (nano-USD or tokens); ``fmt`` renders an axis or
value label from one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from usage.models import NANO

# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
OTHER_COLOUR = "#9aa0a6"
SPENT = "#0072B2"
HELD = "#56B4E9"
OVER = "#C0392B"
TRACK = "#e8ebef"
INK = "#1f2933"
MUTED = "#616e7c"
GRID = "#e4e7eb"

Formatter = Callable[[int], str]


def usd_short(nano: int) -> str:
    """Return a compact USD label: $0.42, $12, $1.2k, $3.4M."""
    usd = Decimal(nano) / NANO
    sign = "-" if usd < 0 else ""
    usd = abs(usd)
    if usd >= 1_000_000:
        return f"{sign}${usd / 1_000_000:.1f}M"
    if usd >= 10_000:
        return f"{sign}${usd / 1000:.0f}k"
    if usd >= 1000:
        return f"{sign}${usd / 1000:.1f}k"
    if usd >= 100 or usd == usd.to_integral_value():
        return f"{sign}${usd:.0f}"
    if usd >= 1:
        return f"{sign}${usd:.2f}".rstrip("0").rstrip(".")
    return f"{sign}${usd:.2f}" if usd >= Decimal("0.01") else f"{sign}${usd:.4f}"


def tokens_short(tokens: int) -> str:
    if tokens >= 1_000_000_000:
        return f"{tokens / 1e9:.1f}B"
    if tokens >= 1_000_000:
        return f"{tokens / 1e6:.1f}M"
    if tokens >= 1000:
        return f"{tokens / 1e3:.0f}k"
    return str(tokens)


def nice_ceiling(value: int) -> int:
    """Return a round axis maximum at or above ``value`` (1, 2, 2.5 or 5 times a power of ten)."""
    if value <= 0:
        return 1
    exponent = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * exponent:
            return int(step * exponent)
    return int(10 * exponent)


def _svg(width: int, height: int, body: list[str], label: str, css: str = "chart") -> SafeString:
    return mark_safe(
        f'<svg class="{css}" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label)}" '
        f'xmlns="http://www.w3.org/2000/svg" font-family="system-ui, -apple-system, Segoe UI, sans-serif">'
        f"<title>{escape(label)}</title>{''.join(body)}</svg>"
    )


def _text(x: float, y: float, text: str, *, size: int = 11, anchor: str = "start", fill: str = MUTED,
          weight: str = "normal") -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" fill="{fill}" '
        f'font-weight="{weight}">{escape(text)}</text>'
    )


def _point_title(text: str) -> str:
    return f"<title>{escape(text)}</title>"


def _label_box(x: float, y: float, text: str, anchor: str, size: int = 11) -> tuple[float, float, float, float]:
    """Return the approximate (left, top, right, bottom) of a label drawn at x, y."""
    width = len(text) * size * 0.6
    left = x - width if anchor == "end" else (x - width / 2 if anchor == "middle" else x)
    return left, y - size, left + width, y + 2


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _limit_label(frame: Frame, ly: float, text: str, avoid: list[tuple[float, float, float, float]]) -> str:
    """Place the limit's label at the left, else at the right, else below the line: where nothing is."""
    for x, y, anchor in ((frame.left + 4, ly - 5, "start"), (frame.right - 4, ly - 5, "end"),
                         (frame.left + 4, ly + 14, "start"), (frame.right - 4, ly + 14, "end")):
        if not any(_overlap(_label_box(x, y, text, anchor), box) for box in avoid):
            return _text(x, y, text, anchor=anchor, fill=OVER, weight="600")
    return _text(frame.right - 4, ly + 14, text, anchor="end", fill=OVER, weight="600")


# --- budget bar --------------------------------------------------------------------


def _pct(value: int, scale: int) -> str:
    # A position on screen, not an amount: a float is fine here.
    return f"{100 * min(max(value, 0), scale) / scale:.2f}%"


CROWDED_DENOMINATOR = 7


def budget_bar(
    *,
    spent: int,
    held: int,
    limit: int,
    thresholds: Sequence[int] = (),
    forecast: int | None = None,
    fmt: Formatter = usd_short,
) -> SafeString:
    """Draw one window as a bar: spent, held, remaining, threshold ticks and the forecast marker.

    Drawn with HTML boxes rather than SVG so the labels keep their size from 375 px
    phones to wide screens while the bar stretches.
    """
    # The scale stretches past the limit when spend or the forecast overshoot it.
    scale = max(limit, spent + held, forecast or 0, 1)
    parts = [f'<span class="bar-track" style="width:{_pct(limit, scale)}"></span>']
    parts.append(f'<span class="bar-spent" style="width:{_pct(min(spent, limit), scale)}"></span>')
    if spent > limit:
        parts.append(
            f'<span class="bar-over" style="left:{_pct(limit, scale)};width:{_pct(spent - limit, scale)}"></span>'
        )
    if held > 0:
        parts.append(
            f'<span class="bar-held" style="left:{_pct(spent, scale)};width:max(2px,{_pct(held, scale)})"></span>'
        )
    ticks = sorted(t for t in set(thresholds) if t != 100)  # the limit line marks 100 %
    positions = [limit * t // 100 for t in ticks] + [limit]
    for i, pct in enumerate(ticks):
        # On a phone a bar is ~300 px: labels closer than a seventh of it overlap, so the
        # lower of two such labels is hidden there (its tick stays, titled).
        crowded = " crowded" if (positions[i + 1] - positions[i]) * CROWDED_DENOMINATOR < scale else ""
        parts.append(
            f'<span class="bar-tick{crowded}" style="left:{_pct(positions[i], scale)}" title="{pct}% threshold">'
            f"<span>{pct}%</span></span>"
        )
    at_end = " end" if limit * 100 >= scale * 95 else ""
    parts.append(f'<span class="bar-limit{at_end}" style="left:{_pct(limit, scale)}"><span>100%</span></span>')
    marker = ""
    if forecast is not None and forecast > 0:
        over = " over" if forecast > limit else ""
        position = 100 * min(forecast, scale) / scale
        side = " right" if position > 70 else ""
        marker = (
            f'<span class="bar-forecast{over}{side}" style="left:{position:.2f}%">'
            f"▲ forecast {escape(fmt(forecast))}</span>"
        )
    label = f"spent {fmt(spent)}, held {fmt(held)} of {fmt(limit)}"
    if forecast is not None:
        label += f", forecast {fmt(forecast)}"
    return mark_safe(
        f'<div class="budget-bar" role="img" aria-label="{escape(label)}"><div class="bar">{"".join(parts)}</div>'
        f"{marker}</div>"
    )


# --- line chart: cumulative spend, forecast, limit ----------------------------------------


@dataclass(frozen=True)
class Frame:
    """Plot area of a chart with days along x and amounts up y."""

    width: int
    height: int
    left: int
    right: int
    top: int
    bottom: int
    days: int
    y_max: int

    def x(self, index: float) -> float:
        step = (self.right - self.left) / max(self.days - 1, 1)
        return self.left + index * step

    def y(self, value: int) -> float:
        return self.bottom - (self.bottom - self.top) * (value / self.y_max)


def _axes(frame: Frame, day_list: Sequence[date], fmt: Formatter, *, bars: bool = False) -> list[str]:
    body = []
    for i in range(5):
        value = frame.y_max * i // 4
        y = frame.y(value)
        body.append(f'<line x1="{frame.left}" y1="{y:.1f}" x2="{frame.right}" y2="{y:.1f}" stroke="{GRID}"/>')
        body.append(_text(frame.left - 6, y + 4, fmt(value), anchor="end"))
    # Label a handful of days along the axis (fewer on narrow charts), always the first and the last.
    n = len(day_list)
    every = max(1, math.ceil(n / max((frame.right - frame.left) // 90, 2)))
    marks = set(range(0, n, every)) | {n - 1}
    if n > 1 and (n - 1) % every and (n - 1) - max(i for i in marks if i != n - 1) < every / 2:
        marks.discard(max(i for i in marks if i != n - 1))
    for i in sorted(marks):
        x = frame.x(i + 0.5) if bars else frame.x(i)
        anchor = "end" if x > frame.right - 20 else ("start" if x < frame.left + 20 else "middle")
        body.append(_text(x, frame.bottom + 16, f"{day_list[i]:%b} {day_list[i].day}", anchor=anchor))
    return body


def cumulative_chart(
    *,
    days: Sequence[date],
    cumulative: Sequence[int | None],
    forecast_end: int | None = None,
    limit: int | None = None,
    fmt: Formatter = usd_short,
    label: str = "Cumulative spend",
    width: int = 600,
    previous: Sequence[int] | None = None,
) -> SafeString:
    """Draw cumulative spend per day, a dashed forecast to the last day, and the limit.

    ``previous``, early in a window, is the previous window's cumulative spend by day,
    drawn faint behind for scale.
    """
    height = 260
    known = [(i, v) for i, v in enumerate(cumulative) if v is not None]
    peak = max([v for _, v in known] + [forecast_end or 0, limit or 0, *(previous or []), 1])
    frame = Frame(width, height, left=50, right=width - 12, top=16, bottom=230, days=max(len(days), 2),
                  y_max=nice_ceiling(int(peak * 1.05)))
    body = _axes(frame, days, fmt)
    labels: list[tuple[float, float, float, float]] = []
    if previous:
        points = " ".join(f"{frame.x(i):.1f},{frame.y(v):.1f}" for i, v in enumerate(previous))
        body.append(f'<polyline points="{points}" fill="none" stroke="{OTHER_COLOUR}" stroke-width="2" '
                    f'stroke-dasharray="2,3"><title>previous window: {escape(fmt(previous[-1]))} by day '
                    f"{len(previous)}</title></polyline>")
    limit_y = frame.y(limit) if limit else None
    if limit_y is not None:
        body.append(
            f'<line x1="{frame.left}" y1="{limit_y:.1f}" x2="{frame.right}" y2="{limit_y:.1f}" stroke="{OVER}" '
            f'stroke-width="2"><title>limit {escape(fmt(limit or 0))}</title></line>'
        )
    if known:
        points = " ".join(f"{frame.x(i):.1f},{frame.y(v):.1f}" for i, v in known)
        area = (
            f"{frame.x(known[0][0]):.1f},{frame.bottom} {points} {frame.x(known[-1][0]):.1f},{frame.bottom}"
        )
        body.append(f'<polygon points="{area}" fill="{SPENT}" fill-opacity="0.12"/>')
        body.append(f'<polyline points="{points}" fill="none" stroke="{SPENT}" stroke-width="2.5"/>')
        for i, v in known:
            day = days[i]
            body.append(f'<circle class="point" cx="{frame.x(i):.1f}" cy="{frame.y(v):.1f}" r="6" fill="{SPENT}" '
                        f'fill-opacity="0">{_point_title(f"{day:%b} {day.day}: {fmt(v)} so far")}</circle>')
        last_i, last_v = known[-1]
        body.append(f'<circle cx="{frame.x(last_i):.1f}" cy="{frame.y(last_v):.1f}" r="3.5" fill="{SPENT}"/>')
        if forecast_end is not None and last_i < len(days) - 1:
            colour = OVER if limit and forecast_end > limit else INK
            end_x, end_y = frame.x(len(days) - 1), frame.y(forecast_end)
            text = f"forecast {fmt(forecast_end)}"
            body.append(
                f'<line x1="{frame.x(last_i):.1f}" y1="{frame.y(last_v):.1f}" x2="{end_x:.1f}" y2="{end_y:.1f}" '
                f'stroke="{colour}" stroke-width="2" stroke-dasharray="6,4">{_point_title(text)}</line>'
            )
            body.append(f'<circle cx="{end_x:.1f}" cy="{end_y:.1f}" r="3" fill="{colour}"/>')
            # Above the end point, or below it when the limit line runs just above.
            fy = end_y - 8 if limit_y is None or not 0 < end_y - limit_y < 22 else end_y + 16
            body.append(_text(end_x - 4, fy, text, anchor="end", fill=colour, weight="600"))
            labels.append(_label_box(end_x - 4, fy, text, "end"))
        value_anchor = "start" if frame.x(last_i) < frame.right - 90 else "end"
        # Below the point, unless that would sit on the day labels.
        value_y = frame.y(last_v) + 16 if frame.y(last_v) < frame.bottom - 28 else frame.y(last_v) - 8
        value_x = frame.x(last_i) + (6 if value_anchor == "start" else -6)
        text = f"{fmt(last_v)} so far"
        body.append(_text(value_x, value_y, text, anchor=value_anchor, fill=SPENT, weight="600"))
        labels.append(_label_box(value_x, value_y, text, value_anchor))
    if limit_y is not None:
        body.append(_limit_label(frame, limit_y, f"limit {fmt(limit or 0)}", labels))
    return _svg(width, height, body, label)


# --- stacked daily bars --------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    name: str
    colour: str
    values: Sequence[int]


def stacked_bars(*, days: Sequence[date], series: Sequence[Series], fmt: Formatter = usd_short,
                 label: str = "Spend per day", limit: int | None = None, width: int = 600) -> SafeString:
    """Draw one bar per day, stacked by series, with the day's total above the tallest bars."""
    height = 260
    totals = [sum(s.values[i] for s in series) for i in range(len(days))]
    frame = Frame(width, height, left=50, right=width - 12, top=16, bottom=230, days=len(days) + 1,
                  y_max=nice_ceiling(int(max([*totals, limit or 0, 1]) * 1.08)))
    body = _axes(frame, days, fmt, bars=True)
    slot = (frame.right - frame.left) / max(len(days), 1)
    bar_w = max(slot * 0.72, 1.0)
    for i in range(len(days)):
        x = frame.left + i * slot + (slot - bar_w) / 2
        base = 0
        for s in series:
            value = s.values[i]
            if value <= 0:
                continue
            y_top, y_bottom = frame.y(base + value), frame.y(base)
            day = days[i]
            title = f"{day:%b} {day.day} · {s.name}: {fmt(value)} (day total {fmt(totals[i])})"
            body.append(
                f'<rect x="{x:.1f}" y="{y_top:.1f}" width="{bar_w:.1f}" height="{max(y_bottom - y_top, 0.5):.1f}" '
                f'fill="{s.colour}">{_point_title(title)}</rect>'
            )
            base += value
    labels: list[tuple[float, float, float, float]] = []
    if totals and max(totals) > 0:
        top_i = max(range(len(totals)), key=totals.__getitem__)
        tx = frame.left + top_i * slot + slot / 2
        anchor = "end" if tx > frame.right - 40 else ("start" if tx < frame.left + 40 else "middle")
        text = f"peak {fmt(totals[top_i])}"
        ty = frame.y(totals[top_i]) - 5
        if limit:
            # The peak's label must not sit on the limit line (nor the limit's label on it).
            ly = frame.y(limit)
            if _overlap(_label_box(tx, ty, text, anchor), (frame.left, ly - 1.5, frame.right, ly + 1.5)):
                ty = ly - 6 if frame.y(totals[top_i]) > ly else ly + 14
        body.append(_text(tx, ty, text, anchor=anchor, fill=INK, weight="600"))
        labels.append(_label_box(tx, ty, text, anchor))
    if limit:
        ly = frame.y(limit)
        body.append(f'<line x1="{frame.left}" y1="{ly:.1f}" x2="{frame.right}" y2="{ly:.1f}" stroke="{OVER}" '
                    f'stroke-width="2">{_point_title(f"limit {fmt(limit)}")}</line>')
        body.append(_limit_label(frame, ly, f"limit {fmt(limit)}", labels))
    return _svg(width, height, body, label)


def colour_for(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


NARROW_WIDTH = 340


def responsive(draw: Callable[..., SafeString], **kwargs) -> SafeString:
    """Draw a chart twice, for wide and for narrow screens; CSS shows the one that fits.

    An SVG scales its text with its width, so one drawing is either cramped on a phone
    or huge on a wide screen; two drawings keep labels readable at both.
    """
    wide = draw(width=600, **kwargs)
    narrow = draw(width=NARROW_WIDTH, **kwargs)
    return mark_safe(f'<div class="chart-wide">{wide}</div><div class="chart-narrow">{narrow}</div>')
