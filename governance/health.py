"""``/healthz``: the service's status for load balancers; what each check found only for those allowed.

Anyone gets ``{"status": "ok"}`` or ``{"status": "degraded"}`` (503 when a critical check
fails). Staff users, and callers sending ``Authorization: Bearer <HEALTHZ_TOKEN>``, also
get each check's detail, which can name internal hosts and ports. Checks live in
``CHECKS``; a non-critical one reports "degraded" without failing the probe.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse


@dataclass(frozen=True)
class Check:
    ok: bool
    detail: str
    # A failing critical check answers 503: the load balancer takes the process out.
    critical: bool = True


def _database() -> Check:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return Check(True, "ok")
    except Exception as exc:  # any failure means "not ok"; the message says why
        return Check(False, str(exc)[:200])


def _broker() -> Check:
    """Not critical: with the broker down, alerts wait in the database for the beat sweep."""
    from governance.celery import app

    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return Check(True, "ok")
    except Exception as exc:
        return Check(False, str(exc)[:200], critical=False)


def _cache() -> Check:
    """Not critical: without Redis each process uses its own memory (governance.shared_cache)."""
    from django.core.cache import cache

    from governance.shared_cache import outage

    cache.get("healthz")  # tries Redis, unless it failed a moment ago
    reason = outage()
    return Check(reason is None, reason or "ok", critical=False)


# name -> check; the name is the key of its detail in the answer.
CHECKS: dict[str, Callable[[], Check]] = {"database": _database, "broker": _broker, "cache": _cache}


def may_see_details(request: HttpRequest) -> bool:
    """Staff, or a caller with the configured health token."""
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated and user.is_staff:
        return True
    token = settings.HEALTHZ_TOKEN
    header = request.META.get("HTTP_AUTHORIZATION", "")
    return bool(token) and hmac.compare_digest(header.encode(), f"Bearer {token}".encode())


def healthz(request: HttpRequest) -> JsonResponse:
    results = {name: check() for name, check in CHECKS.items()}
    ok = all(result.ok for result in results.values())
    critical_failed = any(not result.ok and result.critical for result in results.values())
    body: dict[str, str] = {"status": "ok" if ok else "degraded"}
    if may_see_details(request):
        body.update({name: result.detail for name, result in results.items()})
    response = JsonResponse(body, status=503 if critical_failed else 200)
    response["Cache-Control"] = "no-store"
    return response
