"""API keys: list (prefixes only), create (the secret shown once), revoke."""

from __future__ import annotations

import uuid

from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect

from governance import selectors, services
from governance.audit import Actor
from governance.models import Role
from governance.web.access import page, tenant_page
from governance.web.forms import ApiKeyForm

# The secret waits in the session for exactly one page view after creation, so a
# reload or the back button never shows it again.
SESSION_SECRET = "web_new_key_secret"


def _key_or_404(tenant, key_hex: str):
    key = selectors.api_key_get(tenant=tenant, key_id=uuid.UUID(hex=key_hex))
    if key is None:
        raise Http404("No such key.")
    return key


@tenant_page()
def key_list(request):
    return page(request, "web/keys/list.html", {"keys": selectors.api_key_list(tenant=request.tenant)})


@tenant_page(Role.ADMIN)
def key_create(request):
    form = ApiKeyForm(request.POST or None, features=selectors.feature_list(tenant=request.tenant))
    if request.method == "POST" and form.is_valid():
        key, secret = services.api_key_create(
            tenant=request.tenant, actor=Actor(user=request.user), name=form.cleaned_data["name"],
            role=form.cleaned_data["role"], features=list(form.cleaned_data["features"]),
        )
        request.session[SESSION_SECRET] = {"key": key.pk.hex, "secret": secret}
        return redirect("web:key-created", slug=request.tenant.slug, key_hex=key.pk.hex)
    return page(request, "web/keys/form.html", {"form": form})


@tenant_page(Role.ADMIN)
def key_created(request, key_hex: str):
    key = _key_or_404(request.tenant, key_hex)
    stash = request.session.pop(SESSION_SECRET, None)
    secret = stash["secret"] if stash and stash.get("key") == key.pk.hex else None
    response = page(request, "web/keys/created.html", {"key": key, "secret": secret})
    response["Cache-Control"] = "no-store"
    return response


@tenant_page(Role.ADMIN)
def key_revoke(request, key_hex: str):
    key = _key_or_404(request.tenant, key_hex)
    if request.method == "POST":
        services.api_key_revoke(key=key, actor=Actor(user=request.user))
        messages.success(request, f"Key “{key.name}” ({key.prefix}…) revoked; it stops working at once.")
        return redirect("web:keys", slug=request.tenant.slug)
    return page(request, "web/keys/revoke.html", {"key": key})
