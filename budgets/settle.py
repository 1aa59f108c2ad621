"""The commit's hot path on PostgreSQL: settle a hold in one statement.

A commit touches the same shared rows as every allowance of its tenant (the tenant's
month, the feature's day, the day's rollup), so, like the allowance (``reserve.py``), its
locked part is one autocommitted statement: no BEGIN, no round trip back to Python while
the rows are locked, no COMMIT sent separately. Everything that needs no lock happens
before it, in ``services.hold_commit``: the hold is read, the usage priced, and the
windows it is charged to found (or opened, from the ledger's spend). The statement then

1. locks the hold, only if it is still in the state it was read in (a racing commit,
   release or expiry makes it do nothing, and the caller starts again);
2. locks every window it moves in ascending id order (the global lock order: the hold,
   then windows, then rollups) and moves each one's counters: the reservation off the
   hold's own windows, the cost and tokens onto the windows charged;
3. flags the event ``off_hold`` when a charge no live hold covered took an enforcing
   window past its limit, and inserts it (a request_id already recorded fails the whole
   statement, so nothing is written);
4. adds the event to its day's rollup and marks the hold committed;

and returns the windows as they stand after it, for the response and the threshold check.
It is prepared once per connection, like the allowance's statement.
"""

from __future__ import annotations

import json
import logging
from contextlib import nullcontext, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from operator import attrgetter
from typing import Any
from uuid import UUID

from django.db import DEFAULT_DB_ALIAS, connection, models, transaction
from psycopg.types.json import Jsonb

from budgets import shelf
from budgets.models import Budget, BudgetWindow, Enforcement, Hold, HoldState
from budgets.reserve import WINDOW_COLUMNS, hot_cursor, int_array, json_param, window_from_row
from governance.instances import attnames, instance_from_row
from usage.models import UsageEvent, UsageRollup
from usage.services import ROLLUP_HISTOGRAMS, rollup_delta

logger = logging.getLogger(__name__)

ROLLUP_KEY = ("tenant_id", "feature_id", "model", "service_tier", "day")
# Histograms are JSON arrays of one length; added bucket by bucket (usage.services does the same
# for batches, more verbosely: here the statement must stay short).
_HISTOGRAM_SUM = (
    "CASE WHEN EXCLUDED.{c}='[]' THEN r.{c} WHEN r.{c}='[]' THEN EXCLUDED.{c} "
    "ELSE (SELECT jsonb_agg(a::bigint+b::bigint ORDER BY i) FROM ROWS FROM "
    "(jsonb_array_elements_text(r.{c}),jsonb_array_elements_text(EXCLUDED.{c})) WITH ORDINALITY t(a,b,i)) END"
)


@cache
def _read_statement() -> tuple[str, frozenset[int]]:
    """Return the hold's SELECT (every column, in field order) and the positions of its JSON columns."""
    fields = Hold._meta.concrete_fields
    columns = ", ".join(f'"{f.column}"' for f in fields)
    sql = (
        f"SELECT {columns} FROM {Hold._meta.db_table} "
        f"WHERE id = %s AND tenant_id = %s AND state <> '{HoldState.DENIED}'"
    )
    json_at = frozenset(i for i, f in enumerate(fields) if isinstance(f, models.JSONField))
    return sql, json_at


# The holds this process granted and has not seen committed, by id (at most GRANTED_KEPT, the
# oldest dropped first), and the same on the shelf the host's web processes share
# (``budgets.shelf``, under gunicorn). A commit takes its hold from here, or from the shelf
# when another worker granted it, instead of reading it. Everything the commit reads of a
# hold is fixed when it is granted, except its state, and the settle statement checks that
# itself: when a release, an expiry or a commit elsewhere moved the hold on, the statement
# does nothing and the commit reads the hold (``fresh``).
GRANTED_KEPT = 1024
_granted: dict[Any, Hold] = {}


def hold_granted(hold: Hold) -> None:
    """Keep a hold just granted and stored (autocommitted) for its commit, here and on the shelf."""
    if connection.in_atomic_block:
        return  # the caller's transaction may yet roll it back
    state = hold._state
    state.adding, state.db = False, DEFAULT_DB_ALIAS  # as stored
    _granted[hold.pk] = hold
    if len(_granted) > GRANTED_KEPT:
        # When another thread changes the dict meanwhile, the next grant trims it.
        with suppress(KeyError, RuntimeError, StopIteration):
            del _granted[next(iter(_granted))]
    if shelf.active():
        try:
            shelf.put(hold.pk.bytes, _shelf_encode(hold))
        except Exception:  # the hold is granted and stored: its commit reads it instead
            logger.exception("hold %s not shelved", hold.pk)


def hold_for_commit(*, tenant_id: int, hold_id, fresh: bool = False) -> Hold | None:
    """Return the tenant's hold for a commit: as granted (here or by a worker of this host), or as read now.

    ``fresh`` reads it: the hold as granted turned out to have moved on.
    """
    hold = _granted.pop(hold_id, None)
    if not fresh:
        if hold is None and shelf.active():
            hold = _shelved(hold_id)
        if hold is not None and hold.tenant_id == tenant_id:
            return hold
    return hold_read(tenant_id=tenant_id, hold_id=hold_id)


# How a hold's columns go on the shelf, which takes only what marshal writes: a UUID as its
# 16 bytes, a choice as a plain str (the enum member a new hold has is a str subclass), a
# time as microseconds since the epoch (every stored time is aware, in UTC).
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


@cache
def _shelf_columns() -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """The positions, in field order, of the hold's UUID, choice and time columns."""
    fields = Hold._meta.concrete_fields
    uuids = tuple(i for i, f in enumerate(fields)
                  if isinstance(f.target_field if isinstance(f, models.ForeignKey) else f, models.UUIDField))
    choices = tuple(i for i, f in enumerate(fields) if isinstance(f, models.CharField) and f.choices)
    times = tuple(i for i, f in enumerate(fields) if isinstance(f, models.DateTimeField))
    return uuids, choices, times


def _shelf_encode(hold: Hold) -> tuple:
    values = list(attrgetter(*attnames(Hold))(hold))
    uuids, choices, times = _shelf_columns()
    for i in uuids:
        if values[i] is not None:
            values[i] = values[i].bytes
    for i in choices:
        if values[i] is not None:
            values[i] = str(values[i])
    for i in times:
        if values[i] is not None:
            values[i] = (values[i] - _EPOCH) // _MICROSECOND
    return tuple(values)


def _shelved(hold_id) -> Hold | None:
    """Return the hold a worker of this host shelved for ``hold_id``, as stored, or None."""
    values = shelf.get(hold_id.bytes) if isinstance(hold_id, UUID) else None
    if values is None or len(values) != len(attnames(Hold)) or values[0] != hold_id.bytes:
        return None
    row = list(values)
    uuids, _, times = _shelf_columns()
    for i in uuids:
        if row[i] is not None:
            row[i] = UUID(bytes=row[i])
    for i in times:
        if row[i] is not None:
            row[i] = _EPOCH + row[i] * _MICROSECOND
    return instance_from_row(Hold, row)


def hold_read(*, tenant_id: int, hold_id) -> Hold | None:
    """Return the tenant's hold (a denial is no hold), read without a lock, or None."""
    sql, _ = _read_statement()
    cursor = hot_cursor()
    with connection.wrap_database_errors:
        cursor.execute(sql, (hold_id, tenant_id), prepare=True)
        row = cursor.fetchone()
    if row is None:
        return None
    return _hold_from_row(row)


def _hold_from_row(row) -> Hold:
    """Return the hold whose every column, in field order, is ``row`` (JSON columns come as text)."""
    _, json_at = _read_statement()
    return instance_from_row(Hold, [json.loads(v) if i in json_at and v is not None else v for i, v in enumerate(row)])


@cache
def _settle_statement() -> str:
    """Return the SQL (built once).

    The event and its rollup go as one JSON value each (``jsonb_populate_record`` makes
    the row), so the statement stays within what psycopg keeps parsed between calls (50
    parameters, 4 KiB).
    """
    hold, window, budget = Hold._meta.db_table, BudgetWindow._meta.db_table, Budget._meta.db_table
    event_table, rollup_table = UsageEvent._meta.db_table, UsageRollup._meta.db_table
    rollup_updates = [f"{c}=r.{c}+EXCLUDED.{c}" for c in UsageRollup.SUM_FIELDS]
    rollup_updates += [f"{c}={_HISTOGRAM_SUM.format(c=c)}" for c in ROLLUP_HISTOGRAMS]
    window_columns = ",".join(f'w."{c}"' if c == "end" else f"w.{c}" for c in WINDOW_COLUMNS)
    sql = f"""
WITH held AS (
    SELECT id FROM {hold} WHERE id = %(hold_id)s AND state = %(state)s FOR UPDATE
), m AS (
    SELECT * FROM jsonb_to_recordset(%(moves)s::jsonb) AS m(id int8, spent int8, reserved int8, spent_tokens int8,
        reserved_tokens int8, charged bool, uncovered_nano int8, uncovered_tokens int8)
), locked AS (
    SELECT w.id FROM {window} w
    WHERE w.id = ANY(%(ids)s::int8[]) AND EXISTS (SELECT 1 FROM held)
    ORDER BY w.id
    FOR UPDATE
), moved AS (
    UPDATE {window} w
    SET spent_nano=w.spent_nano+m.spent, reserved_nano=w.reserved_nano+m.reserved,
        spent_tokens=w.spent_tokens+m.spent_tokens, reserved_tokens=w.reserved_tokens+m.reserved_tokens
    FROM m
    WHERE w.id = m.id AND w.id IN (SELECT id FROM locked)
    RETURNING {window_columns}, m.charged, m.uncovered_nano, m.uncovered_tokens
), verdict AS (
    SELECT EXISTS (SELECT 1 FROM held) AS found,
           coalesce(bool_or(b.enforcement <> '{Enforcement.ALERT}' AND (
               (b.limit_nano IS NOT NULL AND mv.uncovered_nano > 0 AND mv.spent_nano+mv.reserved_nano > b.limit_nano)
               OR (b.limit_tokens IS NOT NULL AND mv.uncovered_tokens > 0
                   AND mv.spent_tokens+mv.reserved_tokens > b.limit_tokens)
           )) FILTER (WHERE mv.charged), false) AS off_hold
    FROM moved mv JOIN {budget} b ON b.id = mv.budget_id
), recorded AS (
    INSERT INTO {event_table}
    SELECT e.* FROM verdict, jsonb_populate_record(
        NULL::{event_table}, %(event)s::jsonb || jsonb_build_object('off_hold', verdict.off_hold)) AS e
    WHERE verdict.found
    RETURNING id
), rolled AS (
    INSERT INTO {rollup_table} AS r
    SELECT x.* FROM recorded, jsonb_populate_record(NULL::{rollup_table}, %(rollup)s::jsonb
        || jsonb_build_object('id', nextval(pg_get_serial_sequence('{rollup_table}', 'id')))) AS x
    ON CONFLICT ({", ".join(ROLLUP_KEY)}) DO UPDATE SET {", ".join(rollup_updates)}
), finished AS (
    UPDATE {hold} h
    SET state = '{HoldState.COMMITTED}', late = %(late)s, usage_event_id = recorded.id,
        commit_hash = %(commit_hash)s, finished_at = %(now)s, charged_window_ids = %(charged_ids)s
    FROM recorded
    WHERE h.id = %(hold_id)s
)
SELECT verdict.found, verdict.off_hold, moved.*
FROM verdict LEFT JOIN moved ON true
ORDER BY moved.id
"""
    return " ".join(sql.split())  # compact: the length counts


@dataclass
class Settled:
    windows: list[BudgetWindow]  # every window moved, as it stands after the commit, in id order
    off_hold: bool


def hold_settle(hold: Hold, event: UsageEvent, *, moves: dict[int, tuple[int, int, int, int]],
                uncovered: dict[int, tuple[int, int]], late: bool, now: datetime) -> Settled | None:
    """Record ``event`` (unsaved) as the commit of ``hold``, in the state it was read in.

    ``moves`` are each window's counter moves (spent, reserved, spent tokens, reserved
    tokens); ``uncovered`` names the windows charged, with the USD and tokens of the charge
    no live hold covered. Return None, writing nothing, when the hold is no longer in that
    state. A request_id already recorded raises IntegrityError, and nothing is written.
    """
    event.recorded_at = now  # nothing here runs Django's pre_save
    row = {f.column: getattr(event, f.attname) for f in UsageEvent._meta.concrete_fields}
    rollup = {
        "tenant_id": event.tenant_id, "feature_id": event.feature_id, "model": event.model,
        "service_tier": event.service_tier, "day": event.occurred_at.astimezone(event.tenant.tz).date(),
        "family": event.family, **rollup_delta([event]),
    }
    ids = sorted(moves)
    params = dict(
        event=json_param(row), rollup=json_param(rollup),
        hold_id=hold.pk, state=hold.state, late=late, commit_hash=event.body_hash, now=now,
        charged_ids=Jsonb(sorted(uncovered)), ids=int_array(ids),
        moves=json_param([
            {"id": i, "spent": moves[i][0], "reserved": moves[i][1], "spent_tokens": moves[i][2],
             "reserved_tokens": moves[i][3], "charged": i in uncovered, "uncovered_nano": uncovered.get(i, (0, 0))[0],
             "uncovered_tokens": uncovered.get(i, (0, 0))[1]}
            for i in ids
        ]),
    )
    # Autocommitted on its own; inside a caller's transaction, a savepoint keeps a failure
    # (a request_id already recorded) from aborting that transaction.
    with transaction.atomic() if connection.in_atomic_block else nullcontext():
        cursor = hot_cursor()
        with connection.wrap_database_errors:
            cursor.execute(_settle_statement(), params, prepare=True)
            rows = cursor.fetchall()
    found, off_hold = rows[0][0], rows[0][1]
    if not found:
        return None
    windows = [window_from_row(row[2:]) for row in rows if row[2] is not None]
    return Settled(windows=windows, off_hold=off_hold)


@cache
def _release_statement() -> str:
    """Return the release's SQL (built once): lock the hold, then its windows, in the global lock order."""
    hold, window = Hold._meta.db_table, BudgetWindow._meta.db_table
    columns = ", ".join(f'h."{f.column}"' for f in Hold._meta.concrete_fields)
    sql = f"""
WITH held AS (
    SELECT {columns} FROM {hold} h
    WHERE h.id = %(hold_id)s AND h.tenant_id = %(tenant_id)s AND h.state <> '{HoldState.DENIED}'
      AND (%(any_feature)s OR h.feature_id = ANY(%(feature_ids)s::uuid[]))
    FOR UPDATE
), locked AS (
    SELECT w.id FROM {window} w, held
    WHERE held.state = '{HoldState.HELD}'
      AND w.id IN (SELECT jsonb_array_elements_text(held.window_ids)::int8)
    ORDER BY w.id
    FOR UPDATE OF w
), moved AS (
    UPDATE {window} w
    SET reserved_nano = w.reserved_nano - held.amount_nano, reserved_tokens = w.reserved_tokens - held.tokens
    FROM held
    WHERE w.id IN (SELECT id FROM locked)
), finished AS (
    UPDATE {hold} h SET state = '{HoldState.RELEASED}', finished_at = %(now)s
    FROM held
    WHERE h.id = held.id AND held.state IN ('{HoldState.HELD}', '{HoldState.EXPIRED}')
)
SELECT * FROM held
"""
    return " ".join(sql.split())


def hold_release(*, tenant_id: int, hold_id, feature_ids: frozenset, now: datetime) -> Hold | None:
    """Release the tenant's hold in one statement; return it as it was before, or None when there is none.

    A held hold gives its reservation back to its windows and is marked released; an
    expired one (its reservation already returned) is marked released; a released or
    committed one is left as it is, for the caller to answer. A key restricted to
    ``feature_ids`` sees only those features' holds.
    """
    params = {
        "hold_id": hold_id, "tenant_id": tenant_id, "now": now, "any_feature": not feature_ids,
        "feature_ids": "{" + ",".join(str(i) for i in feature_ids) + "}",
    }
    with transaction.atomic() if connection.in_atomic_block else nullcontext():
        cursor = hot_cursor()
        with connection.wrap_database_errors:
            cursor.execute(_release_statement(), params, prepare=True)
            row = cursor.fetchone()
    if row is None:
        return None
    return _hold_from_row(row)
