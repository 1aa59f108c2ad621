"""Sign-in throttling with django-axes: per account and per client address, for every login form.

Axes records each failed ``authenticate()`` (the web sign-in, Django admin's login, a
failed single sign-on callback) and refuses sign-ins while an account or an address is
locked. Two things are this project's own:

- the client address is ``REMOTE_ADDR`` unless ``TRUSTED_PROXY_COUNT`` proxies sit in
  front, in which case it is the address the outermost trusted proxy saw, read from
  ``X-Forwarded-For``; entries to its left were written by the client and are ignored;
- an account and an address each have their own limit: an account locks after a few
  failures, an address (an office NAT, a proxy nobody configured) only after many.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

from axes.backends import AxesStandaloneBackend
from axes.handlers.database import AxesDatabaseHandler
from axes.helpers import get_client_username
from django.conf import settings
from django.db.models import Sum
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

logger = logging.getLogger(__name__)
_warned_about_forwarded_for = False


def client_address(request: HttpRequest) -> str | None:
    """Return the address of the client, trusting ``X-Forwarded-For`` only through ``TRUSTED_PROXY_COUNT`` proxies.

    None when no address is known (a Unix socket): those attempts then share one count.
    """
    remote = _ip_or_none(request.META.get("REMOTE_ADDR", ""))
    count = settings.TRUSTED_PROXY_COUNT
    forwarded_header = request.META.get("HTTP_X_FORWARDED_FOR", "")
    if count <= 0:
        _warn_once_if_forwarded(forwarded_header)
        return remote
    forwarded = [part.strip() for part in forwarded_header.split(",") if part.strip()]
    # Each trusted proxy appends the address it received the request from; the client's
    # is therefore the count-th from the right. Fewer entries: the request did not come
    # through every proxy, so only REMOTE_ADDR is known to be real.
    if len(forwarded) < count:
        return remote
    return _ip_or_none(forwarded[-count]) or remote


def _ip_or_none(value: str) -> str | None:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return None


def _warn_once_if_forwarded(header: str) -> None:
    global _warned_about_forwarded_for
    if header and not _warned_about_forwarded_for:
        _warned_about_forwarded_for = True
        logger.warning(
            "Requests carry X-Forwarded-For but TRUSTED_PROXY_COUNT is 0: sign-in throttling counts the "
            "proxy's address for everyone behind it. Set TRUSTED_PROXY_COUNT to the number of proxies."
        )


def normalized_username(request: HttpRequest, credentials: dict[str, Any] | None) -> str | None:
    """Count ``Ops@Acme.test`` and ``ops@acme.test`` as one account, as sign-in does."""
    source = credentials if credentials is not None else getattr(request, "POST", {})
    username = source.get("username") if source else None
    return username.strip().lower() if isinstance(username, str) else None


class SignInThrottleBackend(AxesStandaloneBackend):
    """Axes' gate, first in ``AUTHENTICATION_BACKENDS``: a locked account or address gets no further.

    A call without a request (a shell, ``Client.login`` in tests) has no client to count
    and passes through; every sign-in over HTTP brings its request.
    """

    def authenticate(self, request, username=None, password=None, **kwargs):
        if request is None:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)


class SignInAttemptHandler(AxesDatabaseHandler):
    """Axes' database handler with a limit of its own for the account and for the address.

    Axes compares one failure count with one limit (``AXES_FAILURE_LIMIT``, here the
    account's). This handler reports, for each of ``AXES_LOCKOUT_PARAMETERS``
    (``username`` then ``ip_address``), its failures scaled to that limit, so an address
    reaches it only after ``SIGNIN_FAILURES_PER_ADDRESS`` failures.
    """

    def get_failures(self, request, credentials: dict | None = None) -> int:
        account_limit = settings.SIGNIN_FAILURES_PER_ACCOUNT
        limits = (account_limit, settings.SIGNIN_FAILURES_PER_ADDRESS)
        has_account = get_client_username(request, credentials) is not None
        scaled = []
        for index, (attempts, limit) in enumerate(zip(self.get_user_attempts(request, credentials), limits, strict=True)):
            if index == 0 and not has_account:
                continue  # no username (a failed single sign-on): only the address counts
            failures = attempts.aggregate(total=Sum("failures_since_start"))["total"] or 0
            scaled.append(failures * account_limit // limit)
        return max(scaled, default=0)


def lockout_response(request: HttpRequest, original_response: HttpResponse | None, credentials: Any) -> HttpResponse:
    """Answer a locked sign-in with 429 and a page that says how long to wait."""
    minutes = settings.SIGNIN_LOCKOUT_MINUTES
    response = render(request, "registration/locked_out.html", {"minutes": minutes}, status=429)
    response["Retry-After"] = str(minutes * 60)
    return response
