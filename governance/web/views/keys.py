"""API keys: list (prefixes only), create (the secret shown once), revoke."""

from __future__ import annotations

import json
import uuid

from django.conf import settings
from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect
from django.urls import reverse

from governance import crypto, selectors, services
from governance.audit import Actor
from governance.models import Role
from governance.web.access import page, tenant_page
from governance.web.forms import ApiKeyForm

# The server keeps no copy of a new key's secret, not even in the session. The creating
# response hands it to the browser, encrypted, in a cookie that only the key's "created"
# page receives and that lives two minutes; that page shows it once and deletes it, so a
# reload or the back button never shows it again.
SECRET_COOKIE = "new_key_secret"
SECRET_COOKIE_SECONDS = 120


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
        created_page = reverse("web:key-created", kwargs={"slug": request.tenant.slug, "key_hex": key.pk.hex})
        response = redirect(created_page)
        response.set_cookie(
            SECRET_COOKIE, crypto.encrypt(json.dumps({"key": key.pk.hex, "secret": secret})),
            max_age=SECRET_COOKIE_SECONDS, path=created_page, secure=settings.SESSION_COOKIE_SECURE,
            httponly=True, samesite="Strict",
        )
        return response
    return page(request, "web/keys/form.html", {"form": form})


def _secret_from_cookie(request, key) -> str | None:
    """The secret the creating response sent along, if it is this key's and still fresh."""
    token = request.COOKIES.get(SECRET_COOKIE)
    if not token:
        return None
    try:
        stash = json.loads(crypto.decrypt(token, ttl=SECRET_COOKIE_SECONDS))
    except ValueError:
        return None
    secret = stash.get("secret") if isinstance(stash, dict) and stash.get("key") == key.pk.hex else None
    return secret if isinstance(secret, str) and secret.startswith(f"cpt_{key.prefix}_") else None


@tenant_page(Role.ADMIN)
def key_created(request, key_hex: str):
    key = _key_or_404(request.tenant, key_hex)
    response = page(request, "web/keys/created.html", {"key": key, "secret": _secret_from_cookie(request, key)})
    response.delete_cookie(SECRET_COOKIE, path=request.path, samesite="Strict")
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
