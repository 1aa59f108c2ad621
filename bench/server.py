"""Run the app under gunicorn on PostgreSQL for the HTTP benchmarks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import environ
import httpx
import psycopg

ROOT = Path(__file__).resolve().parent.parent
PORT = 8765


def setup_database(root: Path = ROOT, env: dict[str, str] | None = None) -> str:
    """Migrate the bench database and return a service key for a tenant with a big budget.

    ``root`` is the checkout whose code migrates and seeds it (its own .venv), ``env`` the
    environment (``bench_env()``: its DATABASE_URL names the database).
    """
    env = env or bench_env()
    python = sys.executable if root == ROOT else str(root / ".venv/bin/python")
    database_create(env["DATABASE_URL"])
    subprocess.run([python, "manage.py", "migrate", "--noinput", "-v0"], cwd=root, env=env, check=True)
    script = """
from governance.audit import Actor
from governance.models import Feature, KeyRole, Tenant
from governance.services import api_key_create
from budgets.models import Budget
tenant, _ = Tenant.objects.get_or_create(slug="bench", defaults={"name": "Bench"})
feature, _ = Feature.objects.get_or_create(tenant=tenant, key="bench", defaults={"name": "Bench"})
if not Budget.objects.filter(tenant=tenant).exists():
    Budget.objects.create(tenant=tenant, name="Tenant", scope="tenant", period="month", limit_nano=10**18)
    Budget.objects.create(tenant=tenant, name="Feature", scope="feature", feature=feature, period="day",
                          limit_nano=10**18)
print(api_key_create(tenant=tenant, actor=Actor.system(), name="bench", role=KeyRole.SERVICE)[1])
"""
    out = subprocess.run([python, "manage.py", "shell", "-c", script], cwd=root, env=env,
                         check=True, capture_output=True, text=True)
    database_vacuum(env["DATABASE_URL"])
    return out.stdout.strip().splitlines()[-1]


def database_create(url: str) -> None:
    """Create the bench database on a fresh PostgreSQL server, where it does not exist yet."""
    admin = _connect(url, dbname="postgres")
    if admin is None:
        return
    name = environ.Env.db_url_config(url)["NAME"]
    with admin:
        if not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            admin.execute(f'CREATE DATABASE "{name}"')


def database_vacuum(url: str) -> None:
    """VACUUM ANALYZE the bench database, so each run starts from what autovacuum keeps.

    Every allowance inserts a hold and every commit updates one (a new version in each of
    its indexes) and the hot window rows; without vacuum those dead versions pile up run
    after run. On a server with autovacuum off (this machine's, for CI) the database's CPU
    per allowance rose from 0.66 to 1.12 ms on a reused bench database, and fell back after
    a VACUUM (bench/README.md).
    """
    conn = _connect(url)
    if conn is None:
        return
    with conn:
        conn.execute("VACUUM ANALYZE")


def _connect(url: str, dbname: str | None = None) -> psycopg.Connection | None:
    """Return an autocommit connection to the PostgreSQL server of ``url`` (its database, or
    ``dbname``), or None when ``url`` names another database engine."""
    config = environ.Env.db_url_config(url)
    if "postgresql" not in config["ENGINE"]:
        return None
    return psycopg.connect(host=config["HOST"] or "127.0.0.1", port=config["PORT"] or 5432,
                           user=config["USER"] or "postgres", password=config["PASSWORD"] or None,
                           dbname=dbname or config["NAME"], autocommit=True)


def bench_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/comptroller_bench")
    env.setdefault("SECRET_KEY", "bench-only-secret")
    env.update(DEBUG="0", SECURE_SSL_REDIRECT="0", API_RATE_LIMIT="100000000/min", LOG_LEVEL="WARNING")
    return env


def free_port() -> int:
    """Return a loopback port nothing listens on now (the OS chooses it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(workers: int = 4, threads: int = 1, *, port: int = PORT, app: str = "governance.wsgi",
                 env: dict[str, str] | None = None, quiet: bool = False, root: Path = ROOT) -> subprocess.Popen:
    """Start gunicorn: sync workers, or gthread workers (which keep connections alive) when threads > 1.

    It runs the code of the checkout ``root`` (with its .venv) under that checkout's
    gunicorn.conf.py (the production settings) and the options given here; ``quiet`` sends
    its output (the access log) to /dev/null.
    """
    cmd = [str(root / ".venv/bin/gunicorn"), app, "-b", f"127.0.0.1:{port}",
           "-w", str(workers), "--log-level", "warning"]
    if threads > 1:
        cmd += ["--worker-class", "gthread", "--threads", str(threads)]
    out = subprocess.DEVNULL if quiet else None
    proc = subprocess.Popen(cmd, cwd=root, env=env or bench_env(), stdout=out, stderr=out)
    for _ in range(100):
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("gunicorn did not start")


