"""The floor of this stack for a durable hold: a bare WSGI app, for ``allowance_throughput.py`` to compare with.

What no allowance on this stack can beat: gunicorn's own request handling, one psycopg
connection per process, the same JSON body parsed, a bearer token compared with a
constant, and one autocommitted, prepared statement that locks a hot counter row, checks
a limit, reserves on it and inserts a hold row. No framework, no validation, no cache,
no pricing. Run it under the same gunicorn settings as the app:

    BENCH_FLOOR_DSN=postgresql://postgres@127.0.0.1:5432/comptroller_bench BENCH_KEY=cpt_x \\
        .venv/bin/gunicorn bench.floor:application -w 4 -b 127.0.0.1:8766

``floor_setup(dsn)`` creates its two tables (``bench_floor_counter``, ``bench_floor_hold``)
in that database; they are the bench's own, beside the app's.
"""

from __future__ import annotations

import json
import os
import uuid

import psycopg

COUNTER_TABLE = "bench_floor_counter"
HOLD_TABLE = "bench_floor_hold"

# One statement, autocommitted: lock the counter, check the limit, reserve, insert the hold.
RESERVE = f"""
WITH locked AS (
    SELECT id, reserved, limit_amount FROM {COUNTER_TABLE} WHERE id = 1 FOR UPDATE
), ok AS (
    SELECT id FROM locked WHERE reserved + %(amount)s <= limit_amount
), reserved AS (
    UPDATE {COUNTER_TABLE} c SET reserved = c.reserved + %(amount)s FROM ok WHERE c.id = ok.id
), held AS (
    INSERT INTO {HOLD_TABLE} (id, amount, feature, model, created_at)
    SELECT %(id)s, %(amount)s, %(feature)s, %(model)s, now() FROM ok
    RETURNING id
)
SELECT EXISTS (SELECT 1 FROM held)
"""


def floor_setup(dsn: str) -> None:
    """Create (or empty) the floor's tables: one counter row with a limit nobody reaches."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {COUNTER_TABLE} "
            "(id integer PRIMARY KEY, reserved bigint NOT NULL, limit_amount bigint NOT NULL)"
        )
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {HOLD_TABLE} (id uuid PRIMARY KEY, amount bigint NOT NULL, "
            "feature text NOT NULL, model text NOT NULL, created_at timestamptz NOT NULL)"
        )
        conn.execute(f"TRUNCATE {HOLD_TABLE}")
        conn.execute(
            f"INSERT INTO {COUNTER_TABLE} VALUES (1, 0, %s) ON CONFLICT (id) DO UPDATE SET reserved = 0",
            [10**18],
        )


_connection: psycopg.Connection | None = None
_expected = b""


def _conn() -> psycopg.Connection:
    global _connection, _expected
    if _connection is None or _connection.closed:
        # Opened in the worker (after gunicorn forks), once per process.
        _connection = psycopg.connect(os.environ["BENCH_FLOOR_DSN"], autocommit=True, prepare_threshold=None)
        _expected = f"Bearer {os.environ['BENCH_KEY']}".encode("latin-1")
    return _connection


def _answer(start_response, status: str, body: dict) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


def application(environ, start_response):
    conn = _conn()
    if environ.get("HTTP_AUTHORIZATION", "").encode("latin-1") != _expected:
        return _answer(start_response, "401 Unauthorized", {"error": {"code": "unauthenticated"}})
    body = json.loads(environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)))
    hold_id = uuid.uuid4()
    params = {
        "id": hold_id, "amount": int(body["input_tokens"]) + int(body["max_tokens"]),
        "feature": body["feature"], "model": body["model"],
    }
    with conn.cursor() as cursor:
        cursor.execute(RESERVE, params, prepare=True)
        row = cursor.fetchone()
    granted = bool(row and row[0])
    return _answer(start_response, "201 Created" if granted else "200 OK",
                   {"id": f"hold_{hold_id.hex}" if granted else None, "granted": granted})
