"""The lever board: per feature, where the money goes and which lever would save it."""

from __future__ import annotations

from datetime import timedelta

from budgets.levers import lever_board
from governance import selectors
from governance.web import reports
from governance.web.access import page, tenant_page
from governance.web.forms import RangeForm

DEFAULT_DAYS = 30


@tenant_page()
def levers(request):
    tenant = request.tenant
    today = reports.local_today(tenant)
    start, end, feature = today - timedelta(days=DEFAULT_DAYS - 1), today, None
    form = RangeForm(request.GET or None, features=selectors.feature_list(tenant=tenant), today=today,
                     initial={"start": start, "end": end})
    board = None
    if not request.GET or form.is_valid():
        if request.GET:
            start, end = form.cleaned_data["start"], form.cleaned_data["end"]
            feature = form.cleaned_data.get("feature")
        board = lever_board(tenant=tenant, start=start, end=end, feature=feature)
    return page(request, "web/levers.html", {"form": form, "board": board, "start": start, "end": end})
