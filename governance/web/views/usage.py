"""The usage explorer: filtered, grouped sums from the daily rollups, as a table or CSV."""

from __future__ import annotations

import csv
from datetime import timedelta

from django.http import HttpResponse, QueryDict
from django.template.defaultfilters import slugify

from governance import selectors
from governance.api.fields import nano_to_usd
from governance.web import off_hold, reports
from governance.web.access import page, tenant_page
from governance.web.forms import UsageFilterForm

DEFAULT_DAYS = 30
DEFAULT_GROUPS = ["day", "feature"]
CSV_COLUMNS = [
    ("calls", "calls"), ("cost_usd", "cost_usd"), ("input_tokens", "input_tokens"),
    ("output_tokens", "output_tokens"), ("cache_write_5m_tokens", "cache_write_5m_tokens"),
    ("cache_write_1h_tokens", "cache_write_1h_tokens"), ("cache_read_tokens", "cache_read_tokens"),
    ("web_search_requests", "web_search_requests"), ("truncations", "truncations"),
]


@tenant_page()
def usage_explorer(request):
    tenant = request.tenant
    today = reports.local_today(tenant)
    query = request.GET.copy()
    # "format" picks the answer's form, not a filter: the default view's CSV is the default view.
    as_csv = query.pop("format", [""])[-1] == "csv"
    data = query if query else None
    form = UsageFilterForm(
        data, features=selectors.feature_list(tenant=tenant), models=reports.models_used(tenant=tenant),
        today=today,
        initial={"start": today - timedelta(days=DEFAULT_DAYS - 1), "end": today, "group_by": DEFAULT_GROUPS},
    )
    rows, totals, group_by, only_off_hold = [], {}, [], False
    start, end = today - timedelta(days=DEFAULT_DAYS - 1), today
    if data is None or form.is_valid():
        filters = form.cleaned_data if data is not None else {}
        start = filters.get("start") or start
        end = filters.get("end") or end
        group_by = filters.get("group_by") if data is not None else DEFAULT_GROUPS
        only_off_hold = bool(filters.get("off_hold"))
        scope = {"feature": filters.get("feature"), "model": filters.get("model") or "",
                 "service_tier": filters.get("service_tier") or ""}
        # The table shows the first rows; the export has them all (rollups: a few per day at most).
        limit = None if as_csv else reports.EXPLORER_MAX_ROWS
        if only_off_hold:
            rows, totals = off_hold.off_hold_rows(tenant=tenant, start=start, end=end, group_by=group_by,
                                                  limit=limit, **scope)
        else:
            rows, totals = reports.usage_rows(tenant=tenant, start=start, end=end, group_by=group_by,
                                              limit=limit, **scope)
            if not as_csv:
                off_hold.off_hold_marked(rows, totals, tenant=tenant, start=start, end=end, group_by=group_by,
                                         **scope)
        if as_csv:
            return _csv(tenant, start, end, group_by, rows, totals)
    csv_query = request.GET.copy()
    csv_query["format"] = "csv"
    # The same view, only the spend past a limit without a hold (the badges link to it).
    off_hold_query = query.copy() if data is not None else QueryDict(mutable=True)
    if data is None:
        off_hold_query.setlist("group_by", DEFAULT_GROUPS)
    off_hold_query["off_hold"] = "on"
    return page(request, "web/usage.html", {
        "form": form, "rows": rows, "totals": totals, "group_by": group_by, "start": start, "end": end,
        "truncated": len(rows) >= reports.EXPLORER_MAX_ROWS, "csv_query": csv_query.urlencode(),
        "only_off_hold": only_off_hold,
        "off_hold_query": off_hold_query.urlencode(),
    })


def _csv(tenant, start, end, group_by, rows, totals) -> HttpResponse:
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    filename = f"usage-{slugify(tenant.slug)}-{start:%Y%m%d}-{end:%Y%m%d}.csv"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    writer = csv.writer(response)
    writer.writerow([*group_by, *(header for header, _ in CSV_COLUMNS)])
    if not group_by:
        rows = [totals]  # nothing to group by: the one row is the whole range
    for row in rows:
        values = []
        for _, name in CSV_COLUMNS:
            values.append(nano_to_usd(row["cost_nano"]) if name == "cost_usd" else row[name])
        # A feature key or model id starting with = + - @ would run as a formula in a spreadsheet.
        groups = [_cell(row[g]) for g in group_by]
        writer.writerow([*groups, *values])
    return response


def _cell(value) -> str:
    text = value.isoformat() if hasattr(value, "isoformat") else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text
