"""A stalled or unreachable PostgreSQL costs a request seconds and a 503 with Retry-After, never a hang.

The PostgreSQL test drives a real gunicorn whose database connection goes through a proxy
the test can stall, with the timeouts set low (DB_STATEMENT_TIMEOUT=1, DB_CONNECT_TIMEOUT=1).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg
import pytest
from django.db import connection

from budgets.models import BudgetWindow
from tests.factories import BudgetFactory
from tests.faults import TcpProxy, refused_port
from tests.test_allowances import ASK

ROOT = Path(__file__).resolve().parent.parent


def admin_connection(dbname: str | None = None) -> psycopg.Connection:
    config = connection.settings_dict
    return psycopg.connect(host=config["HOST"] or "127.0.0.1", port=config["PORT"] or 5432, user=config["USER"],
                           password=config["PASSWORD"] or None, dbname=dbname or config["NAME"], autocommit=True)


@pytest.fixture
def db_proxy():
    config = connection.settings_dict
    proxy = TcpProxy((config["HOST"] or "127.0.0.1", int(config["PORT"] or 5432)))
    yield proxy
    proxy.close()
    # The server's sessions, cut off mid-stall, may outlive it for a while; the test
    # database can only be dropped once they are gone.
    own = connection.connection.info.backend_pid if connection.connection else 0
    with admin_connection("postgres") as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> %s",
                      [config["NAME"], own])


@pytest.fixture
def server(db_proxy):
    config = connection.settings_dict
    port = refused_port()
    credentials = config["USER"] + (f":{config['PASSWORD']}" if config["PASSWORD"] else "")
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": f"postgres://{credentials}@127.0.0.1:{db_proxy.port}/{config['NAME']}",
        "DB_STATEMENT_TIMEOUT": "1",
        "DB_CONNECT_TIMEOUT": "1",
        "REDIS_URL": "",
        "LOG_LEVEL": "CRITICAL",
    }
    gunicorn = Path(sys.executable).parent / "gunicorn"
    proc = subprocess.Popen([str(gunicorn), "governance.wsgi", "-b", f"127.0.0.1:{port}", "-w", "1",
                             "--log-level", "critical"], cwd=ROOT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                httpx.get(f"{base}/api/v1/whoami", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "unavailable"
    assert int(response.headers["Retry-After"]) >= 1


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_locks_held_too_long_and_a_silent_server_are_503s_then_it_recovers(server, db_proxy, service_key,
                                                                           feature, tenant):
    BudgetFactory(tenant=tenant, scope="feature", feature=feature, limit_nano=10**12)
    api = httpx.Client(base_url=server, headers={"Authorization": f"Bearer {service_key[1]}"}, timeout=20)
    assert api.post("/api/v1/allowances", json=ASK).status_code == 201

    # A statement stuck behind a lock hits statement_timeout on the server.
    with admin_connection() as other, other.transaction():
        other.execute("SELECT id FROM budgets_budgetwindow WHERE id = ANY(%s) FOR UPDATE",
                      [list(BudgetWindow.objects.values_list("pk", flat=True))])
        assert_unavailable(api.post("/api/v1/allowances", json=ASK))
    assert api.post("/api/v1/allowances", json=ASK).status_code == 201

    # A server that stops answering: the open connection hits the client-side deadline, a
    # new one connect_timeout.
    db_proxy.stall()
    assert_unavailable(api.post("/api/v1/allowances", json=ASK))
    assert_unavailable(api.post("/api/v1/allowances", json=ASK))
    db_proxy.restore()
    assert api.post("/api/v1/allowances", json=ASK).status_code == 201


def test_a_web_page_is_a_plain_503_when_the_database_is_unreachable(client, tenant, monkeypatch):
    from django.contrib.auth import get_user_model
    from django.db import OperationalError

    from governance import selectors
    from governance.models import Membership, Role

    user = get_user_model().objects.create_user("admin@acme.test", password="pw-123456789")
    Membership.objects.create(user=user, tenant=tenant, role=Role.ADMIN)
    client.force_login(user)

    def down(**kwargs):
        raise OperationalError("connection timeout expired")

    monkeypatch.setattr(selectors, "feature_list", down)
    response = client.get("/t/acme/features/")
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert b"database is unreachable" in response.content
