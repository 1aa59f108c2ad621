"""Server-drawn charts: labels a reader sees without hovering, and escaping of names."""

from __future__ import annotations

import re
from datetime import date, timedelta

from governance.web import charts
from usage.models import NANO


def test_axis_and_value_labels():
    assert charts.nice_ceiling(0) == 1
    assert charts.nice_ceiling(130 * NANO) == 200 * NANO
    assert charts.nice_ceiling(240 * NANO) == 250 * NANO
    assert [charts.usd_short(v) for v in (0, NANO // 4, 12 * NANO, 1500 * NANO, 2_500_000 * NANO)] == [
        "$0", "$0.25", "$12", "$1.5k", "$2.5M",
    ]
    assert charts.tokens_short(350_000) == "350k"


def test_budget_bar_marks_thresholds_limit_held_and_forecast():
    html = charts.budget_bar(spent=60 * NANO, held=5 * NANO, limit=100 * NANO, thresholds=[50, 80, 100],
                             forecast=120 * NANO)
    assert "50%" in html and "80%" in html and "100%" in html
    assert "bar-held" in html
    assert "bar-forecast over" in html and "forecast $120" in html
    assert 'aria-label="spent $60, held $5 of $100, forecast $120"' in html


def test_overspend_is_drawn_past_the_limit():
    html = charts.budget_bar(spent=150 * NANO, held=0, limit=100 * NANO)
    assert "bar-over" in html


def test_stacked_bars_escape_names_and_label_the_peak():
    days = [date(2026, 11, 1) + timedelta(days=i) for i in range(30)]
    series = [charts.Series("<script>", "#000", [i * NANO for i in range(30)])]
    svg = charts.stacked_bars(days=days, series=series, label="<b>x</b>")
    assert "<script>" not in svg and "&lt;b&gt;x&lt;/b&gt;" in svg
    assert "peak $29" in svg
    assert "Nov 1" in svg and "Nov 30" in svg


def test_responsive_draws_a_wide_and_a_narrow_chart():
    days = [date(2026, 11, 1) + timedelta(days=i) for i in range(30)]
    html = charts.responsive(charts.cumulative_chart, days=days, cumulative=[NANO * i for i in range(24)] + [None] * 6,
                             forecast_end=40 * NANO, limit=50 * NANO)
    assert html.count("<svg") == 2
    assert 'viewBox="0 0 600 260"' in html and 'viewBox="0 0 340 260"' in html
    assert "limit $50" in html and "forecast $40" in html and "$23 so far" in html


def test_every_bar_and_point_shows_its_value_on_hover():
    days = [date(2026, 11, 1) + timedelta(days=i) for i in range(3)]
    bars = charts.stacked_bars(days=days, series=[charts.Series("Support", "#000", [NANO, 2 * NANO, 0])])
    assert "<title>Nov 2 · Support: $2 (day total $2)</title>" in bars
    line = charts.cumulative_chart(days=days, cumulative=[NANO, 3 * NANO, None], forecast_end=5 * NANO)
    assert "<title>Nov 1: $1 so far</title>" in line and "<title>Nov 2: $3 so far</title>" in line


def test_the_peak_label_never_sits_on_the_limit_line():
    # Given a tallest bar just under the limit, where both labels would share a line
    days = [date(2026, 11, 1) + timedelta(days=i) for i in range(30)]
    values = [NANO] * 30
    values[2] = 99 * NANO
    svg = charts.stacked_bars(days=days, series=[charts.Series("x", "#000", values)], limit=100 * NANO)
    # Then the two labels' boxes do not overlap
    label = r'<text x="([\d.]+)" y="([\d.]+)" font-size="11" text-anchor="(\w+)"[^>]*>((?:peak|limit)[^<]*)<'
    boxes = [charts._label_box(float(m[1]), float(m[2]), m[4], m[3]) for m in re.finditer(label, svg)]
    assert len(boxes) == 2
    assert not charts._overlap(boxes[0], boxes[1])


def test_crowded_threshold_labels_are_marked_for_phones():
    # 80 % and 90 % sit a tenth of the bar apart: too close on a 300 px phone bar
    html = charts.budget_bar(spent=0, held=0, limit=100, thresholds=[50, 80, 90, 100])
    assert '<span class="bar-tick" style="left:50.00%"' in html
    assert '<span class="bar-tick crowded" style="left:80.00%"' in html
    assert '<span class="bar-tick crowded" style="left:90.00%"' in html
