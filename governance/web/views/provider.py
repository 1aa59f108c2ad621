"""The Anthropic provider connection (owners edit) and its sync and reconciliation status."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.shortcuts import redirect

from governance import selectors
from governance.audit import Actor
from governance.models import Role
from governance.web import reports
from governance.web.access import page, tenant_page
from governance.web.forms import ProviderForm, apply_service_errors
from usage.provider import checks, services
from usage.provider.selectors import connection_get, connection_mapping


def _form(request, connection, data=None) -> ProviderForm:
    initial: dict[str, object] = {"enabled": True}
    if connection is not None:
        mapping = connection_mapping(connection=connection)
        lines = [f"{pid} = {key}" for name in ("api_keys", "workspaces") for pid, key in mapping.get(name, {}).items()]
        initial = {
            "workspace_ids": ", ".join(connection.workspace_ids), "mapping": "\n".join(lines),
            "enabled": connection.enabled,
        }
    keys = selectors.feature_list(tenant=request.tenant).values_list("key", flat=True)
    return ProviderForm(data, initial=initial, connection=connection, features=keys)


@tenant_page()
def provider(request):
    connection = connection_get(tenant=request.tenant)
    form = _form(request, connection)
    return _page(request, connection, form)


def _page(request, connection, form):
    return page(request, "web/provider.html", {
        "connection": connection, "form": form,
        "reconciliation": reports.reconciliation_status(tenant=request.tenant, days=14),
        "history": selectors.audit_for(tenant=request.tenant, obj=connection)[:30] if connection else [],
    })


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
    except services.UnknownFeatures as exc:
        form.add_error("mapping", str(exc))
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
