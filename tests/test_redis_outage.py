"""Redis is an accelerator: with it down or stalled, allowances and commits keep working on the database."""

from __future__ import annotations

import logging
import os
import threading
from urllib.parse import urlparse

import pytest

from budgets.models import BudgetWindow
from governance import shared_cache
from tests.factories import BudgetFactory
from tests.faults import TcpProxy, refused_port
from tests.test_allowances import ASK, USAGE
from tests.test_api_foundation import assert_error
from usage.models import UsageEvent

REDIS_URL = os.environ.get("REDIS_URL", "")


def use_redis_at(settings, url: str) -> None:
    settings.CACHES = {
        "default": {
            "BACKEND": "governance.shared_cache.FallbackRedisCache",
            "LOCATION": url,
            "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
        }
    }


@pytest.fixture(autouse=True)
def _fresh_outage_state(monkeypatch):
    """Each test starts with Redis believed reachable, and retries it on every call."""
    monkeypatch.setattr(shared_cache, "_outage", shared_cache._Outage())
    monkeypatch.setattr(shared_cache, "RETRY_SECONDS", 0.0)


@pytest.fixture
def redis_down(settings):
    use_redis_at(settings, f"redis://127.0.0.1:{refused_port()}/0")


@pytest.fixture
def real_redis_proxy(settings):
    """A proxy in front of the real Redis (this run's REDIS_URL), which the test can cut."""
    if not REDIS_URL:
        pytest.skip("needs REDIS_URL (a real Redis behind the proxy)")
    target = urlparse(REDIS_URL)
    proxy = TcpProxy((target.hostname or "127.0.0.1", target.port or 6379))
    use_redis_at(settings, f"redis://127.0.0.1:{proxy.port}{target.path or '/0'}")
    yield proxy
    proxy.close()


def allowance_and_commit(api) -> None:
    granted = api.post("/api/v1/allowances", ASK, format="json")
    assert granted.status_code == 201, granted.content
    committed = api.post(f"/api/v1/allowances/{granted.json()['id']}/commit", {"usage": USAGE}, format="json")
    assert committed.status_code == 200, committed.content


def test_with_redis_down_allowances_and_commits_work_and_it_is_logged_once(api, feature, tenant, redis_down,
                                                                           caplog):
    budget = BudgetFactory(tenant=tenant, scope="feature", feature=feature, limit_nano=10**9)
    with caplog.at_level(logging.WARNING, logger="governance.shared_cache"):
        for _ in range(3):
            allowance_and_commit(api)
    assert UsageEvent.objects.count() == 3
    window = BudgetWindow.objects.get(budget=budget)
    assert (window.spent_nano, window.reserved_nano) == (3 * 9_000_000, 0)
    warnings = [r for r in caplog.records if "Redis unreachable" in r.getMessage()]
    assert len(warnings) == 1  # rate-limited: one a minute, however many requests
    assert shared_cache.outage().startswith("unreachable since")


def test_with_redis_down_rate_limits_fall_back_to_this_process(api, feature, settings, redis_down):
    settings.API_RATE_LIMIT = "3/min"
    for _ in range(3):
        assert api.get("/api/v1/features").status_code == 200
    response = api.get("/api/v1/features")
    assert_error(response, 429, "rate_limited")
    assert int(response["Retry-After"]) >= 1


@pytest.mark.django_db(transaction=True)
def test_a_stalled_redis_does_not_hang_requests(api, feature, real_redis_proxy):
    from django.db import connection

    allowance_and_commit(api)
    real_redis_proxy.stall()
    done = threading.Event()

    def calls():
        try:
            for _ in range(3):
                allowance_and_commit(api)
            done.set()
        finally:
            connection.close()

    worker = threading.Thread(target=calls, daemon=True)
    worker.start()
    worker.join(timeout=30)  # a liveness guard, not a speed target: without timeouts this never ends
    assert done.is_set()
    assert shared_cache.outage() is not None
    real_redis_proxy.restore()
    allowance_and_commit(api)
    assert shared_cache.outage() is None
    assert UsageEvent.objects.count() == 5


def test_a_change_made_during_the_outage_applies_here_at_once_and_everywhere_after(
    api, admin_api, service_key, real_redis_proxy
):
    from django.core.cache import caches

    assert api.get("/api/v1/whoami").status_code == 200  # the policy is cached, at Redis's version
    key, _ = service_key
    version_key = f"policy-version:{key.tenant_id}"
    before = caches["default"].get(version_key)
    real_redis_proxy.cut()
    assert admin_api.delete(f"/api/v1/keys/key_{key.pk.hex}").status_code == 200
    assert_error(api.get("/api/v1/whoami"), 401, "unauthenticated")  # this process knew at once
    real_redis_proxy.restore()
    assert_error(api.get("/api/v1/whoami"), 401, "unauthenticated")
    # Published to Redis once it answered, so processes that cached the old policy reload it.
    assert caches["default"].get(version_key) not in (None, before)


def test_healthz_says_redis_is_down_but_keeps_the_process_in_the_load_balancer(client, db, settings, redis_down):
    settings.HEALTHZ_TOKEN = "probe-token"
    response = client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "degraded"})
    detailed = client.get("/healthz", HTTP_AUTHORIZATION="Bearer probe-token").json()
    assert detailed["database"] == "ok"
    assert detailed["cache"].startswith("unreachable since")
    assert "per-process" in detailed["cache"]


@pytest.mark.parametrize("key", ["policy-version:1", "with space", "tab\there", "x" * 251, "é" * 300, "del\x7f"])
def test_the_quick_key_check_warns_exactly_as_djangos(key):
    import warnings

    from django.core.cache.backends.locmem import LocMemCache

    def warned(cache) -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cache.set(key, 1)
        return [str(w.message) for w in caught]

    assert warned(shared_cache.LocalCache("quick-check", {})) == warned(LocMemCache("django-check", {}))


def test_a_count_starts_at_one_and_expires_with_its_window(monkeypatch):
    cache = shared_cache.LocalCache("count-check", {})
    from types import SimpleNamespace

    clock = [1000.0]
    for module in ("django.core.cache.backends.locmem", "django.core.cache.backends.base"):
        monkeypatch.setattr(f"{module}.time", SimpleNamespace(time=lambda: clock[0]))
    assert [shared_cache._add_or_incr(cache, "rl:k", 2) for _ in range(3)] == [1, 2, 3]
    clock[0] += 3  # past the window's expiry: counting again from one
    assert [shared_cache._add_or_incr(cache, "rl:k", 2) for _ in range(2)] == [1, 2]
