"""``/healthz``: database and broker status as JSON, for load balancers and `make run`."""

from __future__ import annotations

from django.db import connection
from django.http import JsonResponse


def _database_ok() -> tuple[bool, str]:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True, "ok"
    except Exception as exc:  # any failure means "not ok"; the message says why
        return False, str(exc)[:200]


def _broker_ok() -> tuple[bool, str]:
    from governance.celery import app

    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return True, "ok"
    except Exception as exc:
        return False, str(exc)[:200]


def healthz(request):
    db_ok, db_msg = _database_ok()
    broker_ok, broker_msg = _broker_ok()
    ok = db_ok and broker_ok
    return JsonResponse(
        {"status": "ok" if ok else "degraded", "database": db_msg, "broker": broker_msg},
        status=200 if ok else 503,
    )
