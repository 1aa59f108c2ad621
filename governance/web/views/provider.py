"""The Anthropic provider connection (owners edit), its feature mapping (admins edit), sync and reconciliation."""

from __future__ import annotations

from datetime import date

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.shortcuts import redirect
from django.urls import reverse

from governance import selectors
from governance.audit import Actor
from governance.models import Role
from governance.web import reports
from governance.web.access import page, tenant_page
from governance.web.forms import ProviderForm, ProviderMappingForm, apply_service_errors
from usage.provider import checks, services
from usage.provider.selectors import connection_get, connection_mapping


def _form(request, connection, data=None) -> ProviderForm:
    initial: dict[str, object] = {"enabled": True}
    if connection is not None:
        initial = {"workspace_ids": ", ".join(connection.workspace_ids), "enabled": connection.enabled}
    return ProviderForm(data, initial=initial, connection=connection)


def _mapping_form(request, connection, data=None) -> ProviderMappingForm:
    mapping = connection_mapping(connection=connection) if connection is not None else {}
    lines = [f"{pid} = {key}" for name in ("api_keys", "workspaces") for pid, key in mapping.get(name, {}).items()]
    keys = selectors.feature_list(tenant=request.tenant).values_list("key", flat=True)
    return ProviderMappingForm(data, initial={"mapping": "\n".join(lines)}, features=keys)


def _day(request) -> date | None:
    try:
        return date.fromisoformat(request.GET.get("day", ""))
    except ValueError:
        return None  # no day, or not one: the page shows yesterday


@tenant_page()
def provider(request):
    connection = connection_get(tenant=request.tenant)
    return _page(request, connection, _form(request, connection))


def _page(request, connection, form, mapping_form=None):
    return page(request, "web/provider.html", {
        "connection": connection, "form": form,
        "mapping_form": mapping_form or _mapping_form(request, connection),
        "mappings": connection_mapping(connection=connection) if connection is not None else None,
        "reconciliation": reports.reconciliation_status(tenant=request.tenant, days=14),
        "features": reports.feature_reconciliation_day(tenant=request.tenant, day=_day(request)),
        "history": selectors.audit_for(tenant=request.tenant, obj=connection)[:30] if connection else [],
    })


@tenant_page(Role.ADMIN)
def provider_mapping(request):
    """Replace which feature each Anthropic API key or workspace is attributed to (owners and admins)."""
    connection = connection_get(tenant=request.tenant)
    if request.method != "POST" or connection is None:
        return redirect("web:provider", slug=request.tenant.slug)
    form = _mapping_form(request, connection, request.POST)
    if not form.is_valid():
        return _page(request, connection, _form(request, connection), form)
    try:
        services.provider_mapping_save(connection=connection, actor=Actor(user=request.user),
                                       feature_mapping=form.cleaned_data["mapping"])
    except services.UnknownFeatures as exc:  # a feature deleted since the form was read
        form.add_error("mapping", str(exc))
        return _page(request, connection, _form(request, connection), form)
    messages.success(request, "Mapping saved; stored usage is attributed to it at once.")
    return redirect(reverse("web:provider", kwargs={"slug": request.tenant.slug}) + "#features")


@tenant_page(Role.OWNER)
def provider_save(request):
    connection = connection_get(tenant=request.tenant)
    form = _form(request, connection, request.POST if request.method == "POST" else None)
    if request.method != "POST" or not form.is_valid():
        return _page(request, connection, form)
    try:
        services.provider_connection_save(tenant=request.tenant, actor=Actor(user=request.user),
                                          **form.service_data())
    except ValidationError as exc:
        apply_service_errors(form, exc)
        return _page(request, connection, form)
    connection = connection_get(tenant=request.tenant)
    if connection is not None and not connection.enabled:
        messages.success(request, "Connection saved. Syncing is paused: tick “Enabled” to start it.")
    else:
        messages.success(request, "Connection saved; the next sync runs within five minutes. "
                                  "“Test connection” asks Anthropic now.")
    return redirect("web:provider", slug=request.tenant.slug)


@tenant_page(Role.OWNER)
def provider_test(request):
    """Call the Admin API once with the saved connection and show what it answered."""
    connection = connection_get(tenant=request.tenant)
    if request.method == "POST" and connection is not None:
        result = checks.connection_test(
            admin_key=connection.admin_key, base_url=connection.base_url or None,
            workspace_ids=list(connection.workspace_ids) or None,
        )
        (messages.success if result.ok else messages.error)(request, f"{result.message} ({result.duration_ms} ms)")
    return redirect("web:provider", slug=request.tenant.slug)


@tenant_page(Role.OWNER)
def provider_delete(request):
    connection = connection_get(tenant=request.tenant)
    if request.method == "POST" and connection is not None:
        services.provider_connection_delete(connection=connection, actor=Actor(user=request.user))
        messages.success(request, "Connection removed; the key is forgotten. Synced reports stay as history.")
    return redirect("web:provider", slug=request.tenant.slug)
