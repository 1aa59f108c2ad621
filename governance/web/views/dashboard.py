"""The tenant dashboard and the lever board."""

from __future__ import annotations

from governance.notify.selectors import channel_statuses
from governance.web import reports
from governance.web.access import page, tenant_page


@tenant_page()
def dashboard(request):
    tenant = request.tenant
    primary = reports.primary_budget(tenant=tenant)
    by_feature, feature_legend = reports.spend_by_day(tenant=tenant, dimension="feature")
    by_model, model_legend = reports.spend_by_day(tenant=tenant, dimension="model")
    context = {
        "cards": reports.budget_cards(tenant=tenant),
        "primary": primary,
        "cumulative": reports.cumulative_chart_for(budget=primary, tenant=tenant),
        "totals": reports.spend_totals(tenant=tenant),
        "by_feature": by_feature,
        "feature_legend": feature_legend,
        "by_model": by_model,
        "model_legend": model_legend,
        "alerts": reports.recent_alerts(tenant=tenant),
        "failing_channels": channel_statuses(tenant=tenant, failing_only=True),
        "reconciliation": reports.reconciliation_status(tenant=tenant),
    }
    return page(request, "web/dashboard.html", context)
