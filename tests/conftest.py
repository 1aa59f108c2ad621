"""Shared fixtures: tenants, keys and an API client that speaks bearer keys."""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from django.core.servers import basehttp
from rest_framework.test import APIClient

from budgets import settle
from governance.audit import Actor
from governance.models import KeyRole
from governance.services import api_key_create
from tests.factories import BudgetFactory, FeatureFactory, TenantFactory
from usage.pricing import clear_price_cache


def run_async(scenario):
    """Run the coroutine in a thread of its own: a loop left running by another test cannot refuse it."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(scenario())).result()


class ThreadClients:
    """An httpx client per thread, for the race tests' thread pools (``client.post`` from any thread).

    One client shared by 40 threads can have its connection pool close a connection it has
    just handed to a waiting thread (encode/httpcore#1110, open on 1.0.9): that request
    fails with EBADF, or hangs until its read timeout, and the test with it. Each thread's
    own client has its own pool, so no thread closes another's socket.
    """

    def __init__(self, **options) -> None:
        self.options = options
        self._local = threading.local()
        self._made: list[httpx.Client] = []
        self._lock = threading.Lock()

    def _client(self) -> httpx.Client:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = httpx.Client(**self.options)
            with self._lock:
                self._made.append(client)
        return client

    def post(self, *args, **kwargs) -> httpx.Response:
        return self._client().post(*args, **kwargs)

    def __enter__(self) -> ThreadClients:
        return self

    def __exit__(self, *exc) -> None:
        for client in self._made:
            client.close()


# Django's test server listens with a backlog of 10. The race tests open 40 connections
# at once; an overflowing accept queue (with SYN cookies on) resets some of them.
basehttp.WSGIServer.request_queue_size = 128


def pytest_report_header(config):
    from django.conf import settings

    engine = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
    return f"database: {engine}; broker: {settings.CELERY_BROKER_URL.split('://')[0]}"


@pytest.fixture
def tenant(db):
    return TenantFactory(slug="acme", name="Acme")


@pytest.fixture
def other_tenant(db):
    return TenantFactory(slug="globex", name="Globex")


@pytest.fixture
def feature(tenant):
    return FeatureFactory(tenant=tenant, key="support-bot", default_model="claude-sonnet-4-5")


def ensure_prices() -> None:
    """Load the price catalog again: a transactional test's flush empties what the data migration wrote."""
    from usage.catalog import catalog_load, catalog_read

    catalog_load(catalog_read(), replace=True)
    clear_price_cache()


@pytest.fixture(autouse=True)
def _prices_in_transactional_tests(request):
    """Give every transactional test (live servers, races) the seeded price table."""
    marker = request.node.get_closest_marker("django_db")
    transactional = (marker is not None and marker.kwargs.get("transaction")) or (
        "transactional_db" in request.fixturenames
    )
    if transactional:
        request.getfixturevalue("transactional_db")
        ensure_prices()
    yield


@pytest.fixture(autouse=True)
def _fresh_cache():
    """Start every test with an empty cache.

    Cache keys name rows by primary key (an alert's "already raised" mark, say), and a test
    database hands out the same keys again: after a rollback on SQLite, and on every new run
    against a Redis that kept the last run's entries.
    """
    from django.core.cache import cache

    from budgets.selectors import forget_profiles

    cache.clear()
    forget_profiles()
    yield


@pytest.fixture(autouse=True)
def _gateway_threads_closed():
    """Close the connections the gateway's database threads opened (a live server's requests)."""
    yield
    from gateway import db

    db.shutdown()


def make_client(secret: str | None) -> APIClient:
    client = APIClient()
    if secret:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


@pytest.fixture
def admin_key(tenant):
    return api_key_create(tenant=tenant, actor=Actor.system(), name="admin", role=KeyRole.ADMIN)


@pytest.fixture
def service_key(tenant):
    return api_key_create(tenant=tenant, actor=Actor.system(), name="svc", role=KeyRole.SERVICE)


@pytest.fixture
def admin_api(admin_key):
    return make_client(admin_key[1])


@pytest.fixture
def api(service_key):
    return make_client(service_key[1])


@pytest.fixture
def outsider_api(other_tenant):
    _, secret = api_key_create(tenant=other_tenant, actor=Actor.system(), name="x", role=KeyRole.ADMIN)
    return make_client(secret)


def pytest_collection_modifyitems(config, items):
    from django.conf import settings

    if settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):
        return
    skip = pytest.mark.skip(
        reason="needs PostgreSQL (row locks, real concurrency): set DATABASE_URL=postgres://... to run"
    )
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def make(tmp_path):
    """Build Comptroller clients (the client tests'), each with a spool under tmp_path, closed after the test."""
    from comptroller_client import Comptroller

    made: list[Comptroller] = []

    def build(url: str, **options) -> Comptroller:
        options.setdefault("backoff", 0)
        options.setdefault("breaker_seconds", 0)
        options.setdefault("flush_interval", 0)  # the sender goes when woken, not on a timer
        options.setdefault("spool_dir", str(tmp_path / "spool"))
        made.append(Comptroller(url, "cpt_test_secret", **options))
        return made[-1]

    yield build
    for client in made:
        client.close(timeout=1)


# The hot paths' bodies, and a client that has run them (test_hot_path_round_trips.py, test_shelf.py).
HOT_ASK = {"feature": "support-bot", "model": "claude-sonnet-4-5", "input_tokens": 100, "max_tokens": 50}
HOT_USAGE = {"usage": {"input_tokens": 100, "output_tokens": 20}}


def post_json(client, path: str, body: dict):
    return client.generic("POST", path, json.dumps(body), content_type="application/json")


@pytest.fixture
def warm_api(api, tenant, feature):
    """A service key's client after one full cycle: the policy, window ids and prepared statements are in place."""
    BudgetFactory(tenant=tenant, scope="tenant", period="month", limit_nano=10**15, thresholds=[50, 80])
    BudgetFactory(tenant=tenant, scope="feature", feature=feature, period="day", limit_nano=10**15)
    for elsewhere in (False, True):  # a commit with the hold kept, then one that reads it
        hold = post_json(api, "/api/v1/allowances", HOT_ASK).json()["id"]
        if elsewhere:
            settle._granted.clear()
        assert post_json(api, f"/api/v1/allowances/{hold}/commit", HOT_USAGE).status_code == 200
    return api
