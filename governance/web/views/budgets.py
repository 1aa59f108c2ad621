"""Budgets: list, create, detail (window, chart, audit history), edit, delete."""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import Http404
from django.shortcuts import redirect
from django.urls import reverse

from budgets import services
from budgets.models import Period, Scope
from budgets.selectors import budget_get, budget_list
from governance import selectors
from governance.api.fields import EARLIEST_DAY
from governance.audit import Actor
from governance.models import Role
from governance.web import off_hold, reports
from governance.web.access import page, tenant_page
from governance.web.forms import BudgetForm, apply_service_errors
from usage.date_range import MAX_RANGE_DAYS
from usage.models import NANO


def _budget_or_404(tenant, budget_hex: str):
    budget = budget_get(tenant=tenant, budget_id=uuid.UUID(hex=budget_hex))
    if budget is None:
        raise Http404("No such budget.")
    return budget


def _usd(nano: int) -> Decimal:
    exact = Decimal(nano) / NANO
    cents = exact.quantize(Decimal("0.01"))
    return cents if cents == exact else exact.normalize()


def _initial(budget) -> dict:
    return {
        "name": budget.name,
        "scope": budget.scope,
        "feature": budget.feature,
        "model_families": budget.model_families,
        "period": budget.period,
        "limit_usd": None if budget.limit_nano is None else _usd(budget.limit_nano),
        "limit_tokens": budget.limit_tokens,
        "enforcement": budget.enforcement,
        "thresholds": ", ".join(str(t) for t in budget.thresholds),
        "forecast_alert": budget.forecast_alert,
        "active": budget.active,
    }


@tenant_page()
def budget_index(request):
    tenant = request.tenant
    budgets = list(budget_list(tenant=tenant))
    cards = {c.budget.pk: c for c in (reports.budget_card(b) for b in budgets if b.scope != Scope.RUN)}
    rows = [{"budget": b, "card": cards.get(b.pk)} for b in budgets]
    return page(request, "web/budgets/list.html", {"rows": rows})


@tenant_page(Role.ADMIN)
def budget_create(request):
    features = selectors.feature_list(tenant=request.tenant)
    initial = {}
    if request.GET.get("feature"):
        initial = {"scope": Scope.FEATURE, "feature": features.filter(key=request.GET["feature"]).first()}
    form = BudgetForm(request.POST or None, features=features, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            budget = services.budget_create(
                tenant=request.tenant, actor=Actor(user=request.user), **form.service_data()
            )
        except ValidationError as exc:
            apply_service_errors(form, exc, renames={"limit_nano": "limit_usd"})
        else:
            messages.success(request, f"Budget “{budget.name}” created.")
            return redirect("web:budget", slug=request.tenant.slug, budget_hex=budget.pk.hex)
    return page(request, "web/budgets/form.html", {"form": form, "creating": True})


@tenant_page()
def budget_detail(request, budget_hex: str):
    tenant = request.tenant
    budget = _budget_or_404(tenant, budget_hex)
    context = {
        "budget": budget,
        "history": selectors.audit_for(tenant=tenant, obj=budget)[:100],
        "alerts": reports.recent_alerts(tenant=tenant, budget=budget),
    }
    if budget.scope == Scope.RUN:
        context["runs"] = reports.run_windows(budget=budget)
    else:
        context["card"] = card = reports.budget_card(budget)
        context["off_hold"] = off_hold.window_off_hold(budget=budget, window=card.window)
        # The explorer's range for that window (a total budget's reaches back further than it shows).
        today = reports.local_today(tenant)
        context["off_hold_start"] = max(card.window.start.astimezone(tenant.tz).date(),
                                        today - timedelta(days=MAX_RANGE_DAYS - 1), EARLIEST_DAY)
        if budget.period == Period.DAY:
            context["daily_svg"] = reports.daily_chart_for(budget=budget, tenant=tenant)
        elif budget.period != Period.TOTAL:
            context["cumulative"] = reports.cumulative_chart_for(budget=budget, tenant=tenant)
    return page(request, "web/budgets/detail.html", context)


@tenant_page(Role.ADMIN)
def budget_edit(request, budget_hex: str):
    budget = _budget_or_404(request.tenant, budget_hex)
    form = BudgetForm(request.POST or None, features=selectors.feature_list(tenant=request.tenant),
                      initial=_initial(budget))
    if request.method == "POST" and form.is_valid():
        try:
            services.budget_update(budget=budget, actor=Actor(user=request.user), data=form.service_data())
        except ValidationError as exc:
            apply_service_errors(form, exc, renames={"limit_nano": "limit_usd"})
        else:
            messages.success(request, f"Budget “{budget.name}” saved.")
            return redirect("web:budget", slug=request.tenant.slug, budget_hex=budget.pk.hex)
    return page(request, "web/budgets/form.html", {"form": form, "budget": budget})


@tenant_page(Role.ADMIN)
def budget_delete(request, budget_hex: str):
    budget = _budget_or_404(request.tenant, budget_hex)
    if request.method == "POST":
        services.budget_delete(budget=budget, actor=Actor(user=request.user))
        messages.success(request, f"Budget “{budget.name}” deleted.")
        return redirect("web:budgets", slug=request.tenant.slug)
    return page(request, "web/confirm_delete.html", {
        "object_kind": "budget", "object_name": budget.name,
        "consequence": "Calls stop counting against it at once; its history stays in the audit log.",
        "cancel_href": reverse("web:budget", args=[request.tenant.slug, budget.pk.hex]),
    })
