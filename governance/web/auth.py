"""Sign-in with a per username-and-address limit on failed attempts."""

from __future__ import annotations

import hashlib

from django import forms
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import AuthenticationForm
from django.core.cache import cache

# Five wrong passwords for one username from one address lock that pair out for
# fifteen minutes; the owner can still sign in from elsewhere, a guesser cannot
# rotate usernames faster than the per-address limit below.
MAX_FAILURES_PER_USER = 5
MAX_FAILURES_PER_ADDRESS = 50
LOCKOUT_SECONDS = 15 * 60


def _client_address(request) -> str:
    # REMOTE_ADDR only: X-Forwarded-For is set by clients unless a trusted proxy rewrites it.
    return request.META.get("REMOTE_ADDR", "") or "unknown"


def _keys(request, username: str) -> tuple[str, str]:
    address = _client_address(request)
    pair = hashlib.sha256(f"{username.strip().lower()}|{address}".encode()).hexdigest()
    return f"login-fail:pair:{pair}", f"login-fail:addr:{address}"


def _bump(key: str) -> None:
    if not cache.add(key, 1, LOCKOUT_SECONDS):
        try:
            cache.incr(key)
        except ValueError:  # expired between add and incr
            cache.set(key, 1, LOCKOUT_SECONDS)


class RateLimitedAuthenticationForm(AuthenticationForm):
    error_messages = {
        **AuthenticationForm.error_messages,
        "rate_limited": "Too many failed sign-in attempts. Wait 15 minutes and try again.",
    }

    def clean(self):
        username = self.cleaned_data.get("username") or ""
        pair_key, address_key = _keys(self.request, username)
        if (cache.get(pair_key) or 0) >= MAX_FAILURES_PER_USER or (
            cache.get(address_key) or 0
        ) >= MAX_FAILURES_PER_ADDRESS:
            self.rate_limited = True
            raise forms.ValidationError(self.error_messages["rate_limited"], code="rate_limited")
        try:
            return super().clean()
        except forms.ValidationError:
            _bump(pair_key)
            _bump(address_key)
            raise


class LoginView(auth_views.LoginView):
    form_class = RateLimitedAuthenticationForm
    redirect_authenticated_user = True

    def form_invalid(self, form):
        response = super().form_invalid(form)
        if getattr(form, "rate_limited", False):
            response.status_code = 429
            response["Retry-After"] = str(LOCKOUT_SECONDS)
        return response

    def form_valid(self, form):
        pair_key, _ = _keys(self.request, form.cleaned_data.get("username") or "")
        cache.delete(pair_key)
        return super().form_valid(form)
