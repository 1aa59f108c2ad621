"""Alerts and alert channels: history, channel CRUD, "send test", delivery history."""

from __future__ import annotations

import uuid

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import Http404
from django.shortcuts import redirect
from django.urls import reverse

from governance import selectors
from governance.audit import Actor
from governance.models import Role
from governance.notify import services
from governance.notify.selectors import alert_list, channel_get, channel_statuses
from governance.web import reports
from governance.web.access import page, tenant_page
from governance.web.forms import ChannelForm, apply_service_errors


def _channel_or_404(tenant, channel_hex: str):
    channel = channel_get(tenant=tenant, channel_id=uuid.UUID(hex=channel_hex))
    if channel is None:
        raise Http404("No such channel.")
    return channel


@tenant_page()
def alert_index(request):
    return page(request, "web/alerts/index.html", {
        "alerts": alert_list(tenant=request.tenant)[:100],
        "statuses": channel_statuses(tenant=request.tenant),
    })


@tenant_page(Role.ADMIN)
def channel_create(request):
    form = ChannelForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            channel = services.channel_create(tenant=request.tenant, actor=Actor(user=request.user),
                                              **form.service_data())
        except ValidationError as exc:
            apply_service_errors(form, exc)
        else:
            messages.success(request, f"Channel “{channel.name}” created. Send a test to check it.")
            return redirect("web:channel", slug=request.tenant.slug, channel_hex=channel.pk.hex)
    return page(request, "web/alerts/channel_form.html", {"form": form, "creating": True})


@tenant_page()
def channel_detail(request, channel_hex: str):
    channel = _channel_or_404(request.tenant, channel_hex)
    [status] = [s for s in channel_statuses(tenant=request.tenant) if s.channel.pk == channel.pk]
    return page(request, "web/alerts/channel_detail.html", {
        "channel": channel,
        "status": status,
        "deliveries": reports.channel_deliveries(channel=channel),
        "history": selectors.audit_for(tenant=request.tenant, obj=channel)[:50],
    })


@tenant_page(Role.ADMIN)
def channel_edit(request, channel_hex: str):
    channel = _channel_or_404(request.tenant, channel_hex)
    initial = {
        "name": channel.name, "kind": channel.kind, "email_addresses": "\n".join(channel.email_addresses or []),
        "alert_kinds": channel.alert_kinds, "enabled": channel.enabled,
    }
    form = ChannelForm(request.POST or None, initial=initial, channel=channel)
    if request.method == "POST" and form.is_valid():
        try:
            services.channel_update(channel=channel, actor=Actor(user=request.user), data=form.service_data())
        except ValidationError as exc:
            apply_service_errors(form, exc)
        else:
            messages.success(request, f"Channel “{channel.name}” saved.")
            return redirect("web:channel", slug=request.tenant.slug, channel_hex=channel.pk.hex)
    return page(request, "web/alerts/channel_form.html", {"form": form, "channel": channel})


@tenant_page(Role.ADMIN)
def channel_test(request, channel_hex: str):
    channel = _channel_or_404(request.tenant, channel_hex)
    if request.method == "POST":
        result = services.channel_test(channel=channel, actor=Actor(user=request.user))
        if result.delivered:
            messages.success(request, f"Test message sent to “{channel.name}” ({result.duration_ms} ms).")
        else:
            kind = "permanent" if result.permanent else "temporary"
            messages.error(request, f"The test failed ({kind} error): {result.error}")
    return redirect("web:channel", slug=request.tenant.slug, channel_hex=channel.pk.hex)


@tenant_page(Role.ADMIN)
def channel_delete(request, channel_hex: str):
    channel = _channel_or_404(request.tenant, channel_hex)
    if request.method == "POST":
        services.channel_delete(channel=channel, actor=Actor(user=request.user))
        messages.success(request, f"Channel “{channel.name}” deleted.")
        return redirect("web:alerts", slug=request.tenant.slug)
    return page(request, "web/confirm_delete.html", {
        "object_kind": "channel", "object_name": channel.name,
        "consequence": "Alerts stop going to it; its delivery history is deleted with it.",
        "cancel_href": reverse("web:channel", args=[request.tenant.slug, channel.pk.hex]),
    })
