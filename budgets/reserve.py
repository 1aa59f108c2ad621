"""The allowance's hot path on PostgreSQL: decide, reserve and record a hold in one statement.

Every allowance of a tenant touches the same few window rows (the tenant's month, the
feature's day), so those rows are locked by one request after another, and the time a
request holds them bounds the throughput of the whole tenant. Here that time is one
statement, autocommitted: no BEGIN, no round trip back to Python under the locks, no
COMMIT sent separately. The statement

1. locks the windows in ascending id order (the global lock order, see ``services``),
   reading their counters as they stand after any concurrent writer that held them;
2. finds the enforcing windows the hold would push past a USD or token limit;
3. only if there are none (and every window still exists), adds the hold's worst case
   to every window's reserved counters and inserts the hold; when some refuse, a denial
   is inserted instead where an idempotency key must replay it.

It is prepared once per connection (server-side binding), so PostgreSQL does not parse
and plan it on every call (unless DB_PREPARED_STATEMENTS=0 turns that off for a pooler
that cannot keep prepared statements; see settings). The general path (several candidate models, SQLite) is the
locked transaction in ``services._decide``; both apply the same rule.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from datetime import datetime
from functools import cache
from operator import itemgetter
from typing import Any

import orjson
import psycopg
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from psycopg._tz import get_tzinfo
from psycopg.types.datetime import TimestamptzLoader
from psycopg.types.json import Jsonb

from budgets.models import Budget, BudgetWindow, Enforcement, Hold, HoldState
from governance.instances import instance_from_row

# The window columns the hot-path statements return, in BudgetWindow's attribute names.
WINDOW_COLUMNS = (
    "id", "budget_id", "run_id", "start", "end", "created_at",
    "spent_nano", "reserved_nano", "spent_tokens", "reserved_tokens",
)


def hot_cursor(wrapper: BaseDatabaseWrapper | None = None) -> psycopg.Cursor:
    """Return this connection's cursor for the hot-path statements, opening the connection if needed.

    One cursor per connection, kept: psycopg keeps the adapters it looked up for the last
    statement a cursor ran, so running the same statement again skips that work. The
    caller wraps its use in ``connection.wrap_database_errors``, and may pass this thread's
    ``connections[DEFAULT_DB_ALIAS]`` when it has it at hand.
    """
    if wrapper is None:
        wrapper = connections[DEFAULT_DB_ALIAS]  # this thread's
    wrapper.ensure_connection()
    raw = wrapper.connection
    cursor: psycopg.Cursor | None = getattr(wrapper, "hot_cursor", None)
    if cursor is None or cursor.connection is not raw or cursor.closed:
        cursor = psycopg.Cursor(raw)
        if get_tzinfo(raw.pgconn) is wrapper.timezone:
            # Django loads timestamptz with a Python subclass of psycopg's loader that sets its
            # connection's zone; when that is the session's zone (UTC, as Django sets it), psycopg's
            # own loader, in C, returns the same datetimes at a fraction of the cost.
            cursor.adapters.register_loader("timestamptz", TimestamptzLoader)
        wrapper.hot_cursor = cursor  # type: ignore[attr-defined]
    return cursor


@cache
def on_postgresql() -> bool:
    """Return whether the database is PostgreSQL (every thread's connection has the same backend)."""
    return connections[DEFAULT_DB_ALIAS].vendor == "postgresql"


def window_from_row(row) -> BudgetWindow:
    """Return a window from the first len(WINDOW_COLUMNS) values of a raw row."""
    return instance_from_row(BudgetWindow, [row[i] for i in _window_order()])


def attach_budget(window: BudgetWindow, budget: Budget) -> None:
    """Set ``window.budget`` to its own budget (``budget.pk == window.budget_id``), both read from the database.

    What assigning it does then, without the assignment's checks (the instance's type, its
    database, the routers), which such a pair always passes: a seventh of the cost.
    """
    BudgetWindow.budget.field.set_cached_value(window, budget)


@cache
def _window_order() -> tuple[int, ...]:
    """Where each of BudgetWindow's fields is in WINDOW_COLUMNS (the model takes them in its own order)."""
    return tuple(WINDOW_COLUMNS.index(f.attname) for f in BudgetWindow._meta.concrete_fields)


def json_param(row: Any) -> Jsonb:
    """Return ``row`` as a JSON parameter (times to the microsecond), for ``jsonb_populate_record``.

    One parameter for a whole row: psycopg keeps a statement's parsing between calls only
    up to 50 parameters, and adapting one JSON value costs less than adapting each column.
    orjson writes it (datetimes, dates and UUIDs as PostgreSQL reads them) in a tenth of
    the time the json module takes with a Python ``default``.
    """
    return Jsonb(row, dumps=orjson.dumps)


def int_array(ids) -> str:
    """Return ids as a PostgreSQL array literal: a text parameter, cast in SQL (cheaper than a list)."""
    return "{" + ",".join(str(int(i)) for i in ids) + "}"
# Hold columns whose value depends on the verdict, computed in SQL.
DECIDED = {
    "state": f"CASE WHEN verdict.ok THEN '{HoldState.HELD}' ELSE '{HoldState.DENIED}' END",
    "decision": "CASE WHEN verdict.ok THEN 'granted' ELSE 'denied' END",
    "finished_at": "CASE WHEN verdict.ok THEN NULL ELSE %(now)s END",
}


@cache
def _statement() -> str:
    """Return the SQL (built once)."""
    window, budget, hold = BudgetWindow._meta.db_table, Budget._meta.db_table, Hold._meta.db_table
    window_columns = ", ".join(f'w."{c}"' for c in WINDOW_COLUMNS)
    returned = ", ".join(f'locked."{c}"' for c in WINDOW_COLUMNS[:7])
    decided = ", ".join(f"'{name}', {value}" for name, value in DECIDED.items())
    return f"""
WITH locked AS (
    SELECT {window_columns}, b.limit_nano, b.limit_tokens, b.enforcement
    FROM {window} w JOIN {budget} b ON b.id = w.budget_id
    WHERE w.id = ANY(%(lock_ids)s::int8[])
    ORDER BY w.id
    FOR UPDATE OF w
), refusing AS (
    SELECT id FROM locked
    WHERE enforcement <> '{Enforcement.ALERT}' AND (
        (limit_nano IS NOT NULL AND spent_nano + reserved_nano + %(amount_nano)s > limit_nano)
        OR (limit_tokens IS NOT NULL AND spent_tokens + reserved_tokens + %(tokens)s > limit_tokens))
), verdict AS (
    SELECT NOT EXISTS (SELECT 1 FROM refusing) AS ok,
           (SELECT count(*) FROM locked) = %(window_count)s AS complete
), reserved AS (
    UPDATE {window} w
    SET reserved_nano = w.reserved_nano + %(amount_nano)s, reserved_tokens = w.reserved_tokens + %(tokens)s
    FROM locked, verdict
    WHERE w.id = locked.id AND verdict.ok AND verdict.complete
), recorded AS (
    INSERT INTO {hold}
    SELECT h.* FROM verdict, jsonb_populate_record(NULL::{hold}, %(hold)s::jsonb || jsonb_build_object({decided})) AS h
    WHERE verdict.complete AND (verdict.ok OR %(keep_denial)s)
)
SELECT {returned},
       locked.reserved_nano + CASE WHEN verdict.ok AND verdict.complete THEN %(amount_nano)s ELSE 0 END,
       locked.spent_tokens,
       locked.reserved_tokens + CASE WHEN verdict.ok AND verdict.complete THEN %(tokens)s ELSE 0 END,
       locked.id IN (SELECT id FROM refusing),
       verdict.complete
FROM locked, verdict
ORDER BY locked.id
"""


@cache
def _hold_columns() -> tuple[tuple[str | None, ...], Callable[[dict], tuple]]:
    """Return Hold's columns, and what takes the values of their attributes from an instance's __dict__."""
    fields = Hold._meta.concrete_fields
    return tuple(f.column for f in fields), itemgetter(*(f.attname for f in fields))


def hold_reserve(hold: Hold, *, now: datetime) -> tuple[list[BudgetWindow], set[int], bool]:
    """Run the decision for ``hold`` (not yet saved) over ``hold.window_ids``.

    Return the windows as they stand after it (ordered like ``hold.window_ids``), the ids
    of the windows that refused, and whether every window still existed. When some
    refused, nothing is reserved, ``hold`` is marked denied, and it is stored only if it
    has an idempotency key; when a window is gone, nothing at all is written.
    """
    # The hold goes as one JSON row; its created_at is set by the caller, as nothing here
    # runs Django's pre_save. A new hold has every field's value in its __dict__.
    columns, values = _hold_columns()
    params = {
        "hold": json_param(dict(zip(columns, values(hold.__dict__), strict=True))),
        "lock_ids": int_array(hold.window_ids), "window_count": len(hold.window_ids), "now": now,
        "keep_denial": bool(hold.idempotency_key), "amount_nano": hold.amount_nano, "tokens": hold.tokens,
    }
    # Autocommitted on its own; inside a caller's transaction, a savepoint keeps a failure
    # (a racing idempotency key) from aborting that transaction.
    wrapper = connections[DEFAULT_DB_ALIAS]  # this thread's: looked up once (each lookup costs)
    with transaction.atomic() if wrapper.in_atomic_block else nullcontext():
        cursor = hot_cursor(wrapper)
        with wrapper.wrap_database_errors:
            cursor.execute(_statement(), params, prepare=True)
            rows = cursor.fetchall()
    windows: dict[int, BudgetWindow] = {}
    refusing: set[int] = set()
    complete = len(rows) == len(hold.window_ids)
    for row in rows:
        window = window_from_row(row)
        windows[window.id] = window
        if row[10]:
            refusing.add(window.id)
        complete = complete and row[11]
    if refusing and complete:
        hold.state, hold.decision, hold.finished_at = HoldState.DENIED, "denied", now
    return [windows[i] for i in hold.window_ids if i in windows], refusing, complete
