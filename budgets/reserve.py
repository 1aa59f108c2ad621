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

from contextlib import nullcontext
from datetime import datetime
from functools import cache

import psycopg
from django.db import connection, models, transaction
from psycopg.types.json import Jsonb

from budgets.models import Budget, BudgetWindow, Enforcement, Hold, HoldState

# The window columns the hot-path statements return, in BudgetWindow's attribute names.
WINDOW_COLUMNS = (
    "id", "budget_id", "run_id", "start", "end", "created_at",
    "spent_nano", "reserved_nano", "spent_tokens", "reserved_tokens",
)


def window_from_row(row) -> BudgetWindow:
    """Return a window from the first len(WINDOW_COLUMNS) values of a raw row."""
    return BudgetWindow(**dict(zip(WINDOW_COLUMNS, row[: len(WINDOW_COLUMNS)], strict=True)))
# Hold columns whose value depends on the verdict, computed in SQL.
DECIDED = {
    "state": f"CASE WHEN verdict.ok THEN '{HoldState.HELD}' ELSE '{HoldState.DENIED}' END",
    "decision": "CASE WHEN verdict.ok THEN 'granted' ELSE 'denied' END",
    "finished_at": "CASE WHEN verdict.ok THEN NULL ELSE %(now)s END",
}


@cache
def _statement() -> tuple[str, tuple[tuple[str, bool], ...]]:
    """Return the SQL and the Hold attributes it takes, each with whether it is JSON (built once)."""
    window, budget, hold = BudgetWindow._meta.db_table, Budget._meta.db_table, Hold._meta.db_table
    fields = tuple(f for f in Hold._meta.concrete_fields if f.attname not in DECIDED)
    columns = [f.column for f in fields] + list(DECIDED)
    values = [f"%({f.attname})s" for f in fields] + list(DECIDED.values())
    window_columns = ", ".join(f'w."{c}"' for c in WINDOW_COLUMNS)
    returned = ", ".join(f'locked."{c}"' for c in WINDOW_COLUMNS[:7])
    sql = f"""
WITH locked AS (
    SELECT {window_columns}, b.limit_nano, b.limit_tokens, b.enforcement
    FROM {window} w JOIN {budget} b ON b.id = w.budget_id
    WHERE w.id = ANY(%(lock_ids)s)
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
    INSERT INTO {hold} ({", ".join(f'"{c}"' for c in columns)})
    SELECT {", ".join(values)} FROM verdict
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
    return sql, tuple((f.attname, isinstance(f, models.JSONField)) for f in fields)


def hold_reserve(hold: Hold, *, now: datetime) -> tuple[list[BudgetWindow], set[int], bool]:
    """Run the decision for ``hold`` (not yet saved) over ``hold.window_ids``.

    Return the windows as they stand after it (ordered like ``hold.window_ids``), the ids
    of the windows that refused, and whether every window still existed. When some
    refused, nothing is reserved, ``hold`` is marked denied, and it is stored only if it
    has an idempotency key; when a window is gone, nothing at all is written.
    """
    sql, attributes = _statement()
    # The hold's values go as they are (psycopg adapts UUIDs, datetimes and the rest); its
    # created_at is set by the caller, as nothing here runs Django's pre_save.
    params = {name: Jsonb(getattr(hold, name)) if is_json else getattr(hold, name) for name, is_json in attributes}
    params.update(
        lock_ids=list(hold.window_ids), window_count=len(hold.window_ids), now=now,
        keep_denial=bool(hold.idempotency_key),
    )
    # Autocommitted on its own; inside a caller's transaction, a savepoint keeps a failure
    # (a racing idempotency key) from aborting that transaction.
    with transaction.atomic() if connection.in_atomic_block else nullcontext():
        connection.ensure_connection()
        with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
            cursor.execute(sql, params, prepare=True)
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
