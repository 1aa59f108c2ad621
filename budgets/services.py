"""Writes of budgets: budget CRUD, the allowance decision, commit, release and expiry of holds.

Lock order, everywhere: a hold row first, then budget windows by ascending id, then
usage rollups. Every path that raises or lowers a window's counters follows it, so
racing requests serialise on the rows they share and never deadlock.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from django.core.exceptions import ValidationError
from django.db import IntegrityError, OperationalError, connection, transaction
from django.db.models import Field, Q
from django.forms.models import model_to_dict
from django.utils import timezone

from budgets import reserve, settle, signals
from budgets.models import Budget, BudgetWindow, Enforcement, Hold, HoldState, Period, Scope
from budgets.periods import EPOCH, window_bounds
from budgets.policy import TenantPolicy, policy_changed, tenant_policy
from governance.audit import Actor, audit_record, audit_update, audited_delete
from governance.instances import instance_new
from governance.models import ApiKey, Feature, Tenant
from governance.transactions import MAX_ATTEMPTS, is_retryable
from usage.models import ServiceTier, Speed, UsageEvent, UsageSource
from usage.pricing import (
    TokenUsage,
    canonical_model,
    is_priced,
    known_families,
    model_family,
    planned_usage,
    worst_case_nano,
)
from usage.selectors import ledger_spend
from usage.services import (
    RecordedUsage,
    UsageInput,
    event_tokens,
    rollups_add,
    usage_announce,
    usage_event_build,
    usage_events_prepare,
    usage_events_save,
)

logger = logging.getLogger(__name__)

BUDGET_FIELDS = (
    "name", "scope", "feature", "model_families", "period", "limit_nano", "limit_tokens",
    "enforcement", "thresholds", "forecast_alert", "active",
)


class AllowanceError(Exception):
    """A request the allowance flow refuses before deciding: unknown feature, model, conflict …"""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or {}


# --- budgets ---------------------------------------------------------------------------


def budget_snapshot(budget: Budget) -> dict[str, Any]:
    data = model_to_dict(budget, fields=BUDGET_FIELDS)
    data["feature"] = budget.feature.key if budget.feature is not None else None
    return data


def budget_validate(budget: Budget) -> None:
    errors: dict[str, str] = {}
    if budget.scope == Scope.FEATURE and budget.feature_id is None:
        errors["feature"] = "A feature budget needs a feature."
    if budget.scope == Scope.TENANT and budget.feature_id is not None:
        errors["feature"] = "A tenant budget covers every feature; leave the feature empty."
    if budget.feature is not None and budget.feature.tenant_id != budget.tenant_id:
        errors["feature"] = "No such feature."
    if budget.limit_nano is None and budget.limit_tokens is None:
        errors["limit_usd"] = "Set a USD limit, a token limit, or both."
    if budget.limit_nano is not None and budget.limit_nano <= 0:
        errors["limit_usd"] = "The limit must be above zero."
    if budget.limit_tokens is not None and budget.limit_tokens <= 0:
        errors["limit_tokens"] = "The limit must be above zero."
    families = budget.model_families
    if not isinstance(families, list) or any(f not in known_families() for f in families):
        errors["model_families"] = f"Choose among {', '.join(known_families())}."
    thresholds = budget.thresholds
    if (
        not isinstance(thresholds, list)
        or any(isinstance(t, bool) or not isinstance(t, int) or not 1 <= t <= 1000 for t in thresholds)
    ):
        errors["thresholds"] = "Give whole percentages between 1 and 1000."
    else:
        budget.thresholds = sorted(set(thresholds))
    if budget.scope == Scope.RUN:
        budget.period = Period.TOTAL  # a run budget lives as long as its run
    if errors:
        raise ValidationError(errors)
    budget.full_clean(exclude=["tenant", "feature", "thresholds", "model_families"])


@transaction.atomic
def budget_create(
    *,
    tenant: Tenant,
    actor: Actor,
    name: str,
    scope: str,
    period: str = Period.MONTH,
    enforcement: str = Enforcement.BLOCK,
    feature: Feature | None = None,
    model_families: list[str] | tuple[str, ...] = (),
    limit_nano: int | None = None,
    limit_tokens: int | None = None,
    thresholds: list[int] | None = None,
    forecast_alert: bool = True,
    active: bool = True,
) -> Budget:
    budget = Budget(
        tenant=tenant, name=name, scope=scope, period=period, enforcement=enforcement, feature=feature,
        model_families=list(model_families), limit_nano=limit_nano, limit_tokens=limit_tokens,
        thresholds=[50, 80, 100] if thresholds is None else list(thresholds),
        forecast_alert=forecast_alert, active=active,
    )
    budget_validate(budget)
    budget.save()
    audit_record(tenant=tenant, actor=actor, action="create", obj=budget, after=budget_snapshot(budget))
    if budget.active:
        window_open_now(budget)
    return budget


def window_open_now(budget: Budget, *, now: datetime | None = None) -> None:
    """Make sure the budget's current window exists, starting from what the ledger already has.

    So a budget created mid-period shows, and enforces, the spend already made in it. A run
    budget has no window until its first run.
    """
    if budget.scope == Scope.RUN:
        return
    key, end = window_key(budget, tenant=budget.tenant, at=now or timezone.now(), run_id="")
    windows_by_key({key: (budget, end)})


# A change to any of these changes which spend a budget counts.
SHAPE_FIELDS = ("scope", "feature", "model_families", "period", "active")


@transaction.atomic
def budget_update(*, budget: Budget, actor: Actor, data: dict[str, Any]) -> Budget:
    """Change a budget; when what it counts changed, its open windows start again from the ledger."""
    before = budget_snapshot(budget)
    for name, value in data.items():
        if name in BUDGET_FIELDS:
            setattr(budget, name, list(value) if name == "model_families" else value)
    budget_validate(budget)
    budget.save()
    after = budget_snapshot(budget)
    audit_update(actor=actor, obj=budget, before=before, after=after)
    if budget.active and any(before[name] != after[name] for name in SHAPE_FIELDS):
        windows_recount(budget=budget)
        window_open_now(budget)
    return budget


def window_ledger_spend(budget: Budget, *, start: datetime, end: datetime | None, run_id: str) -> tuple[int, int]:
    """Return the cost and tokens the ledger already holds in ``budget``'s scope for one window."""
    tz = budget.tenant.tz
    return ledger_spend(
        tenant=budget.tenant,
        first_day=None if start <= EPOCH else start.astimezone(tz).date(),
        end_day=None if end is None else end.astimezone(tz).date(),
        feature_id=budget.feature_id if budget.scope != Scope.TENANT else None,
        families=budget.model_families,
        run_id=run_id if budget.scope == Scope.RUN else "",
    )


def windows_recount(*, budget: Budget, now: datetime | None = None) -> None:
    """Set the spent counters of ``budget``'s open windows to what the ledger holds for its scope now.

    Reserved counters stay: they are the live holds on each window, whatever the budget
    counts. A window of the old period that the new period also starts takes the new end.
    """
    now = now or timezone.now()
    current_start, current_end = window_bounds(budget.period, now, budget.tenant.tz)
    windows = BudgetWindow.objects.filter(budget=budget).filter(Q(end__isnull=True) | Q(end__gt=now))
    for window in windows.order_by("id").select_for_update():
        if window.start == current_start and window.end != current_end:
            window.end = current_end
        window.spent_nano, window.spent_tokens = window_ledger_spend(
            budget, start=window.start, end=window.end, run_id=window.run_id
        )
        window.save(update_fields=["end", "spent_nano", "spent_tokens"])


@transaction.atomic
def budget_delete(*, budget: Budget, actor: Actor) -> None:
    before = budget_snapshot(budget)
    audited_delete(actor=actor, obj=budget, before=before)


# --- windows ---------------------------------------------------------------------------


WindowKey = tuple  # (budget id, window start, run id)


def window_key(budget: Budget, *, tenant: Tenant, at: datetime, run_id: str) -> tuple[WindowKey, datetime | None]:
    """Return the key of ``budget``'s window containing ``at`` and that window's end."""
    start, end = window_bounds(budget.period, at, tenant.tz)
    return (budget.pk, start, run_id if budget.scope == Scope.RUN else ""), end


def windows_by_key(wanted: dict[WindowKey, tuple[Budget, datetime | None]]) -> dict[WindowKey, BudgetWindow]:
    """Return the windows for these keys in one query, creating the missing ones (lazily, race-safe)."""
    if not wanted:
        return {}
    budget_ids = {key[0] for key in wanted}
    starts = {key[1] for key in wanted}
    found = {
        (w.budget_id, w.start, w.run_id): w
        for w in BudgetWindow.objects.filter(budget_id__in=budget_ids, start__in=starts)
        if (w.budget_id, w.start, w.run_id) in wanted
    }
    for key, (budget, end) in wanted.items():
        if key not in found:
            _, start, run = key
            # A budget created mid-period (or a new run's window) counts what was already spent in
            # its scope: read before this transaction adds any spend of its own.
            spent, spent_tokens = window_ledger_spend(budget, start=start, end=end, run_id=run)
            try:
                with transaction.atomic():
                    found[key] = BudgetWindow.objects.create(
                        budget=budget, start=start, end=end, run_id=run, spent_nano=spent, spent_tokens=spent_tokens
                    )
            except IntegrityError:  # created by a concurrent request meanwhile
                found[key] = BudgetWindow.objects.get(budget=budget, start=start, run_id=run)
    for key, window in found.items():
        window.budget = wanted[key][0]
    return found


def windows_lock(window_ids: list[int]) -> dict[int, BudgetWindow]:
    """Lock windows in ascending id order (the global lock order) and return them fresh."""
    return {w.id: w for w in BudgetWindow.objects.filter(id__in=window_ids).order_by("id").select_for_update()}


Moves = dict[int, tuple[int, int, int, int]]  # window id -> (spent, reserved, spent tokens, reserved tokens)


def windows_move(window_ids: list[int], *, spent: int = 0, reserved: int = 0, spent_tokens: int = 0,
                 reserved_tokens: int = 0) -> list[BudgetWindow]:
    """Move every one of these windows' counters by the same amounts (see ``windows_move_each``)."""
    return windows_move_each({i: (spent, reserved, spent_tokens, reserved_tokens) for i in window_ids})


def windows_move_each(moves: Moves) -> list[BudgetWindow]:
    """Lock the windows in ascending id order and move each one's counters by its own amounts, in one statement.

    Return the windows as they stand afterwards, in id order (without their budgets).
    """
    if not moves:
        return []
    table = BudgetWindow._meta.db_table
    returning = ", ".join(f'w."{c}"' for c in reserve.WINDOW_COLUMNS)
    ids = sorted(moves)
    columns = list(zip(*(moves[i] for i in ids), strict=True))
    if connection.vendor == "postgresql":
        # The CTE takes the row locks in id order (the global lock order) before the update.
        sql = (
            f"WITH locked AS (SELECT id FROM {table} WHERE id = ANY(%s) ORDER BY id FOR UPDATE), "
            "m AS (SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[]) "
            "AS m(id, spent, reserved, spent_tokens, reserved_tokens)) "
            f"UPDATE {table} w SET spent_nano = w.spent_nano + m.spent, reserved_nano = w.reserved_nano + m.reserved, "
            "spent_tokens = w.spent_tokens + m.spent_tokens, reserved_tokens = w.reserved_tokens + m.reserved_tokens "
            f"FROM m WHERE w.id = m.id AND w.id IN (SELECT id FROM locked) RETURNING {returning}"
        )
        with connection.cursor() as cursor:
            cursor.execute(sql, [ids, ids, *(list(c) for c in columns)])
            rows = cursor.fetchall()
    else:
        # SQLite runs one writer at a time (BEGIN IMMEDIATE): there is no lock order to keep.
        sql = (
            f"UPDATE {table} SET spent_nano = spent_nano + %s, reserved_nano = reserved_nano + %s, "
            f"spent_tokens = spent_tokens + %s, reserved_tokens = reserved_tokens + %s WHERE id = %s "
            f"RETURNING {returning.replace('w.', '')}"
        )
        rows = []
        with connection.cursor() as cursor:
            for window_id in ids:
                cursor.execute(sql, [*moves[window_id], window_id])
                rows.extend(cursor.fetchall())
    windows = [reserve.window_from_row(row) for row in rows]
    if connection.vendor != "postgresql":
        for window in windows:  # SQLite hands back text for datetimes and UUIDs
            for name in ("budget", "start", "end", "created_at"):
                # All four are concrete columns, never reverse relations.
                field = cast("Field[Any, Any]", BudgetWindow._meta.get_field(name))
                value = field.to_python(getattr(window, field.attname))
                if isinstance(value, datetime) and timezone.is_naive(value):
                    value = timezone.make_aware(value, UTC)  # Django keeps UTC in SQLite
                setattr(window, field.attname, value)
    return sorted(windows, key=lambda w: w.id)


def _applicable(budgets: list[Budget], *, feature: Feature, model: str, run_id: str) -> list[Budget]:
    family = model_family(canonical_model(model)) if is_priced(model) else model_family(model)
    return [b for b in budgets if b.applies_to(feature=feature, family=family, run_id=run_id)]


def _applicable_memo(policy: TenantPolicy, budgets: list[Budget], *, feature: Feature, model: str,
                     run_id: str) -> list[Budget]:
    """``_applicable`` over the policy's budgets (less run budgets without a run), kept with the policy."""
    key = (feature.pk, model, bool(run_id))
    found = policy.applicable.get(key)
    if found is None:
        found = policy.applicable[key] = _applicable(budgets, feature=feature, model=model, run_id=run_id)
    return found


def _over_limit(window: BudgetWindow, *, charged_nano: int, charged_tokens: int) -> bool:
    """Return whether a charge not covered by a hold took an enforcing window past its limit."""
    budget = window.budget
    if budget.enforcement == Enforcement.ALERT:
        return False
    over_usd = (budget.limit_nano is not None and charged_nano > 0
                and window.spent_nano + window.reserved_nano > budget.limit_nano)
    over_tokens = (budget.limit_tokens is not None and charged_tokens > 0
                   and window.spent_tokens + window.reserved_tokens > budget.limit_tokens)
    return over_usd or over_tokens


def _charged_windows(policy: TenantPolicy, *, tenant: Tenant, event: UsageEvent) -> list[int]:
    """Return the ids of the windows ``event`` is charged to: every active budget that counts its model."""
    budgets = [
        b for b in policy.budgets
        if b.applies_to(feature=event.feature, family=event.family or None, run_id=event.run_id)
    ]
    ids = _window_ids(policy, budgets, tenant=tenant, at=event.occurred_at, run_id=event.run_id)
    return sorted(ids.values())


def usage_report(
    *, tenant: Tenant, api_key: ApiKey | None, items: list[UsageInput], policy: TenantPolicy | None = None
) -> list[RecordedUsage]:
    """Record usage reported without a hold and charge it to the windows of every budget that counts it.

    Always recorded, even over budget: the money was spent. Spend that takes an enforcing
    budget past its limit is flagged ``off_hold``. A known request_id with the same body
    is a duplicate; with another body, UsageConflict.
    """
    for attempt in range(1, MAX_ATTEMPTS + 1):
        policy = policy or tenant_policy(tenant.pk)
        try:
            with transaction.atomic():
                results = usage_events_prepare(tenant=tenant, api_key=api_key, items=items, source=UsageSource.REPORT)
                events = [r.event for r in results if r.created]
                # Windows first (a new one starts from the ledger as it was), then the counters, then the rows.
                charges: dict[int, list[UsageEvent]] = defaultdict(list)
                for event in events:
                    for window_id in _charged_windows(policy, tenant=tenant, event=event):
                        charges[window_id].append(event)
                moves = {
                    i: (sum(e.cost_nano for e in evs), 0, sum(event_tokens(e) for e in evs), 0)
                    for i, evs in charges.items()
                }
                windows = _with_budgets(windows_move_each(moves), policy)
                for window in windows:
                    if _over_limit(window, charged_nano=moves[window.id][0], charged_tokens=moves[window.id][2]):
                        for event in charges[window.id]:
                            event.off_hold = True
                usage_events_save(tenant=tenant, events=events)
                usage_announce(tenant=tenant, events=events)
                signals.windows_charged.send(sender=BudgetWindow, windows=windows)
                return results
        except StalePolicy:
            policy_changed(tenant.pk)
            policy = None
        except IntegrityError:
            # A concurrent report of the same request_id won: the retry sees its row. A commit
            # racing for the request_id is told apart there by its body.
            if attempt == MAX_ATTEMPTS:
                raise
            logger.info("usage report retry %s after a racing request_id", attempt)
            policy = None
        except OperationalError as exc:
            if attempt == MAX_ATTEMPTS or not is_retryable(exc):
                raise
            logger.info("usage report retry %s after %s", attempt, type(exc).__name__)
            policy = None
    raise AssertionError("unreachable")


# --- allowances ------------------------------------------------------------------------


# What json.dumps(data, sort_keys=True, default=str) encodes with (stateless; the stored hashes depend on its output).
_FINGERPRINT_ENCODER = json.JSONEncoder(sort_keys=True, default=str)


@dataclass
class AllowanceRequest:
    feature: str
    model: str
    input_tokens: int
    max_tokens: int
    cache_read_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    service_tier: str = ServiceTier.STANDARD
    inference_geo: str = "global"
    speed: str = Speed.STANDARD
    max_web_searches: int = 0
    run_id: str = ""
    idempotency_key: str = ""
    ttl_seconds: int = 600
    metadata: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> str:
        return self.fingerprint_of({k: v for k, v in self.__dict__.items() if k != "idempotency_key"})

    @staticmethod
    def fingerprint_of(data: Any) -> str:
        """Return a stable hash of a request body, to tell a repeat from a different request."""
        return hashlib.sha256(_FINGERPRINT_ENCODER.encode(data).encode()).hexdigest()


@dataclass
class AllowanceDecision:
    decision: str  # granted / downgraded / denied
    model: str
    max_tokens: int
    clamped: bool
    amount_nano: int
    tokens: int
    windows: list[BudgetWindow]
    binding_ids: set[int]
    hold: Hold | None = None
    expires_at: datetime | None = None
    retry_after: datetime | None = None
    state: str = HoldState.HELD  # a repeat answers the hold as it is now

    @property
    def granted(self) -> bool:
        """Return whether the caller may make the call now (a repeat of a finished hold may not)."""
        return self.decision != "denied" and self.state == HoldState.HELD


def feature_for_call(*, tenant: Tenant, api_key: ApiKey | None, key: str, policy: TenantPolicy) -> Feature:
    """Return the tenant's feature ``key`` if this API key may call it, else raise AllowanceError."""
    feature = policy.features.get(key)
    if feature is None:
        raise AllowanceError("unknown_feature", f"No feature '{key}'.", {"feature": key})
    if api_key is not None:
        allowed = policy.key_feature_ids(api_key)
        if allowed and feature.pk not in allowed:
            raise AllowanceError("forbidden", f"This API key may not use feature '{key}'.", {"feature": key})
    return feature


def _check_model(feature: Feature, model: str) -> None:
    if not is_priced(model):
        raise AllowanceError("unknown_model", f"No price is known for model '{model}'.", {"model": model})
    if feature.allowed_models:
        allowed = {canonical_model(m) for m in feature.allowed_models if is_priced(m)}
        if canonical_model(model) not in allowed:
            raise AllowanceError(
                "model_not_allowed",
                f"Feature '{feature.key}' does not allow model '{model}'.",
                {"model": model, "allowed_models": feature.allowed_models},
            )


def _fits(budget: Budget, window: BudgetWindow, amount: int, tokens: int) -> bool:
    if budget.limit_nano is not None and window.spent_nano + window.reserved_nano + amount > budget.limit_nano:
        return False
    return not (
        budget.limit_tokens is not None
        and window.spent_tokens + window.reserved_tokens + tokens > budget.limit_tokens
    )


def allowance_request(
    *, tenant: Tenant, api_key: ApiKey | None, req: AllowanceRequest, policy: TenantPolicy | None = None
) -> AllowanceDecision:
    """Decide whether a call may go ahead, and hold its worst-case cost on every window it touches.

    ``policy`` is the tenant's policy when the caller has just checked it is current.
    """
    policy = policy or tenant_policy(tenant.pk)
    feature = feature_for_call(tenant=tenant, api_key=api_key, key=req.feature, policy=policy)
    if not feature.active:
        raise AllowanceError("feature_inactive", f"Feature '{feature.key}' is inactive.", {"feature": feature.key})
    _check_model(feature, req.model)
    max_tokens = req.max_tokens
    cap = feature.max_tokens_cap
    clamped = cap is not None and max_tokens > cap
    if cap is not None and clamped:
        max_tokens = cap
    fingerprint = req.fingerprint()
    # A repeated idempotency key is found by the hold's unique constraint, not by a read
    # first: the insert fails, nothing is written, and the first request's answer is
    # replayed. A new key (nearly every request) then costs no extra round trip.
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            return _decide(tenant, api_key, feature, req, max_tokens, clamped, fingerprint, policy)
        except StalePolicy:
            # A window the cached policy knew is gone (its budget was deleted): reload.
            policy_changed(tenant.pk)
            policy = tenant_policy(tenant.pk)
        except IntegrityError:
            if not req.idempotency_key:
                raise
            # A concurrent request with the same idempotency key won the race.
            replay = _replay(tenant, req.idempotency_key, fingerprint)
            if replay is None:
                raise
            return replay
        except OperationalError as exc:
            # A deadlock or serialization failure left nothing behind: decide again.
            if attempt == MAX_ATTEMPTS or not is_retryable(exc):
                raise
    raise AllowanceError("unavailable", "The allowance could not be decided under contention; retry shortly.")


class StalePolicy(Exception):
    """The cached policy names a window that no longer exists."""


def _window_ids(policy: TenantPolicy, budgets: list[Budget], *, tenant: Tenant, at: datetime,
                run_id: str) -> dict[Any, int]:
    """Return each budget's current window id, from the policy's memo or the database."""
    keys = {}
    missing: dict[WindowKey, tuple[Budget, datetime | None]] = {}
    for budget in budgets:
        # The window's bounds in the tenant's zone, kept with the policy while ``at`` is inside them.
        bounds = policy.window_bounds.get(budget.pk)
        if bounds is None or not (bounds[0] <= at and (bounds[1] is None or at < bounds[1])):
            bounds = policy.window_bounds[budget.pk] = window_bounds(budget.period, at, tenant.tz)
        start, end = bounds
        key = (budget.pk, start, run_id if budget.scope == Scope.RUN else "")
        keys[budget.pk] = key
        if key not in policy.window_ids:
            missing[key] = (budget, end)
    if missing:
        policy.remember_windows({key: w.id for key, w in windows_by_key(missing).items()})
    return {budget_id: policy.window_ids[key] for budget_id, key in keys.items()}


def worst_case_usage(req: AllowanceRequest, *, max_tokens: int) -> TokenUsage:
    """Return the most a call as declared can use: its input, ``max_tokens`` out, every web search allowed.

    Declared cache reads are held as cache writes: a read that misses (the cache expired or
    was never written) is written again, at the 1-hour rate when the call writes 1-hour
    entries, else at the 5-minute rate. So a hold bounds the call whether its cache hits or not.
    """
    one_hour = req.cache_write_1h_tokens > 0
    return planned_usage(
        input_tokens=req.input_tokens,
        max_tokens=max_tokens,
        cache_write_5m_tokens=req.cache_write_5m_tokens + (0 if one_hour else req.cache_read_tokens),
        cache_write_1h_tokens=req.cache_write_1h_tokens + (req.cache_read_tokens if one_hour else 0),
        web_search_requests=req.max_web_searches,
    )


def _decide(tenant, api_key, feature, req, max_tokens, clamped, fingerprint, policy) -> AllowanceDecision:
    """Price every candidate model, find the windows, then decide under the window locks.

    Everything that can happen before the locks does, so racing requests queue on a
    short critical section. With one candidate model on PostgreSQL (the common case: no
    downgrade budget, or no fallback models) the whole decision is one statement.
    """
    now = timezone.now()
    planned = worst_case_usage(req, max_tokens=max_tokens)
    tokens = planned.total_tokens
    budgets = [b for b in policy.budgets if b.scope != Scope.RUN or req.run_id]
    candidates = [req.model]
    if any(b.enforcement == Enforcement.DOWNGRADE for b in budgets):
        candidates += [m for m in feature.fallback_models if is_priced(m) and m != req.model]
    per_candidate = {m: _applicable_memo(policy, budgets, feature=feature, model=m, run_id=req.run_id)
                     for m in candidates}
    amounts = {
        m: worst_case_nano(m, planned, service_tier=req.service_tier, inference_geo=req.inference_geo, speed=req.speed)
        for m in candidates
    }
    union = {b.pk: b for bs in per_candidate.values() for b in bs}
    id_by_budget = _window_ids(policy, list(union.values()), tenant=tenant, at=now, run_id=req.run_id)
    window_ids = {m: [id_by_budget[b.pk] for b in per_candidate[m]] for m in candidates}
    hold = instance_new(
        Hold, tenant_id=tenant.pk, feature_id=feature.pk, api_key_id=api_key.pk if api_key else None, run_id=req.run_id,
        requested_model=req.model, model=canonical_model(req.model), decision="granted",
        max_tokens=max_tokens, clamped=clamped, service_tier=req.service_tier, inference_geo=req.inference_geo,
        speed=req.speed, max_web_searches=req.max_web_searches, input_tokens=req.input_tokens,
        cache_read_tokens=req.cache_read_tokens, amount_nano=amounts[req.model], tokens=tokens,
        window_ids=window_ids[req.model], expires_at=now + timedelta(seconds=req.ttl_seconds),
        idempotency_key=req.idempotency_key, request_hash=fingerprint, metadata=req.metadata, created_at=now,
    )
    if len(candidates) == 1 and reserve.on_postgresql():
        return _decide_in_one_statement(req, hold, union, now)
    with transaction.atomic():
        hold.save(force_insert=True)
        locked = windows_lock(list(id_by_budget.values()))  # --- critical section starts
        if len(locked) != len(id_by_budget):
            raise StalePolicy
        for window in locked.values():
            window.budget = union[window.budget_id]
        chosen, binding = _choose(candidates, window_ids, locked, amounts, tokens)
        if chosen is None:
            # Denied: nothing is held. With an idempotency key the denial is kept, so a repeat gets it.
            _deny(req, hold, binding, now)
            first_windows = [locked[i] for i in window_ids[req.model]]
            return AllowanceDecision(
                decision="denied", model=canonical_model(req.model), max_tokens=max_tokens, clamped=clamped,
                amount_nano=amounts[req.model], tokens=tokens, windows=first_windows, binding_ids=binding,
                retry_after=_retry_after([w for w in first_windows if w.id in binding]),
            )
        amount = amounts[chosen]
        windows_move(window_ids[chosen], reserved=amount, reserved_tokens=tokens)
        if chosen != req.model:
            hold.decision, hold.model = "downgraded", canonical_model(chosen)
            hold.amount_nano, hold.window_ids = amount, window_ids[chosen]
            hold.save(update_fields=["decision", "model", "amount_nano", "window_ids"])
        windows = [locked[i] for i in window_ids[chosen]]
        for w in windows:
            w.reserved_nano += amount
            w.reserved_tokens += tokens
    # No threshold check here: thresholds count spent, and a hold only changes reserved.
    return AllowanceDecision(
        decision=hold.decision, model=hold.model, max_tokens=max_tokens, clamped=clamped,
        amount_nano=amount, tokens=tokens, windows=windows, binding_ids=set(), hold=hold,
        expires_at=hold.expires_at,
    )


def _decide_in_one_statement(req, hold: Hold, budgets_by_id, now: datetime) -> AllowanceDecision:
    """Decide a one-model call in one autocommitted PostgreSQL statement (see ``reserve.py``)."""
    windows, refusing, complete = reserve.hold_reserve(hold, now=now)
    if not complete:
        raise StalePolicy
    for window in windows:
        reserve.attach_budget(window, budgets_by_id[window.budget_id])
    if not refusing:
        settle.hold_granted(hold)
        return AllowanceDecision(
            decision=hold.decision, model=hold.model, max_tokens=hold.max_tokens, clamped=hold.clamped,
            amount_nano=hold.amount_nano, tokens=hold.tokens, windows=windows, binding_ids=set(), hold=hold,
            expires_at=hold.expires_at,
        )
    signals.windows_refused.send(sender=BudgetWindow, window_ids=sorted(refusing))
    return AllowanceDecision(
        decision="denied", model=hold.model, max_tokens=hold.max_tokens, clamped=hold.clamped,
        amount_nano=hold.amount_nano, tokens=hold.tokens, windows=windows, binding_ids=refusing,
        retry_after=_retry_after([w for w in windows if w.id in refusing]),
    )


def _deny(req, hold: Hold, binding: set[int], now: datetime) -> None:
    """Drop the provisional hold (keep it as a denial when an idempotency key must replay it)."""
    if req.idempotency_key:
        hold.state, hold.decision, hold.finished_at = HoldState.DENIED, "denied", now
        hold.save(update_fields=["state", "decision", "finished_at"])
    else:
        hold.delete()
    signals.windows_refused.send(sender=BudgetWindow, window_ids=sorted(binding))


def _choose(candidates, window_ids, locked, amounts, tokens) -> tuple[str | None, set[int]]:
    """Return the first candidate model every enforcing window can fit, and the requested model's refusers.

    A ``block`` budget that refuses ends the search (no cheaper model gets past a block);
    when only ``downgrade`` budgets refuse, the next fallback is tried.
    """
    binding: set[int] = set()
    for index, model in enumerate(candidates):
        windows = [locked[i] for i in window_ids[model]]
        refusing = [
            w for w in windows
            if w.budget.enforcement != Enforcement.ALERT and not _fits(w.budget, w, amounts[model], tokens)
        ]
        if index == 0:
            binding = {w.id for w in refusing}
        if not refusing:
            return model, set()
        if any(w.budget.enforcement == Enforcement.BLOCK for w in refusing):
            break
    return None, binding


def _retry_after(windows: list[BudgetWindow]) -> datetime | None:
    ends = [w.end for w in windows]
    bounded = [end for end in ends if end is not None]
    if not ends or len(bounded) != len(ends):
        return None  # a total or run budget never resets
    return max(bounded)


def _replay(tenant: Tenant, idempotency_key: str, fingerprint: str) -> AllowanceDecision | None:
    hold = Hold.objects.filter(tenant=tenant, idempotency_key=idempotency_key).first()
    if hold is None:
        return None
    if hold.request_hash != fingerprint:
        raise AllowanceError(
            "conflict",
            "This idempotency key was used with a different request.",
            {"idempotency_key": idempotency_key},
        )
    windows = list(BudgetWindow.objects.filter(id__in=hold.window_ids).select_related("budget").order_by("id"))
    denied = hold.state == HoldState.DENIED
    binding = {w.id for w in windows if denied and not _fits(w.budget, w, hold.amount_nano, hold.tokens)}
    state = hold.state
    if state == HoldState.HELD and hold.expires_at <= timezone.now():
        state = HoldState.EXPIRED  # the expiry task has not run yet, but the hold is dead
    return AllowanceDecision(
        decision=hold.decision, model=hold.model, max_tokens=hold.max_tokens, clamped=hold.clamped,
        amount_nano=hold.amount_nano, tokens=hold.tokens, windows=windows, binding_ids=binding,
        hold=None if denied else hold, expires_at=None if denied else hold.expires_at,
        retry_after=_retry_after([w for w in windows if w.id in binding]) if denied else None,
        state=HoldState.DENIED if denied else state,
    )


# --- commit / release / expire --------------------------------------------------------------


@dataclass
class CommitResult:
    hold: Hold
    event: UsageEvent
    windows: list[BudgetWindow]

    @property
    def released_nano(self) -> int:
        return self.hold.amount_nano - self.event.cost_nano


@dataclass
class CommitData:
    """A call's actual usage as the caller reports it; unset fields default to the hold's."""

    usage: TokenUsage
    model: str = ""
    service_tier: str = ""
    inference_geo: str = ""
    speed: str = ""
    request_id: str = ""
    stop_reason: str = ""
    latency_ms: int | None = None
    ttft_ms: int | None = None
    streamed: bool | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def _hold_locked(tenant: Tenant, hold_id, feature_ids: frozenset = frozenset()) -> Hold:
    """Lock and return the tenant's hold; a key restricted to other features sees no such hold."""
    holds = Hold.objects.select_for_update().filter(tenant=tenant, pk=hold_id).exclude(state=HoldState.DENIED)
    if feature_ids:
        holds = holds.filter(feature_id__in=feature_ids)
    hold = holds.first()
    if hold is None:
        raise AllowanceError("not_found", "No such allowance.")
    return hold


def _windows_for(hold: Hold) -> list[BudgetWindow]:
    """Return the windows a committed call was charged to, as they stand now."""
    windows = BudgetWindow.objects.filter(id__in=hold.charged_window_ids).select_related("budget").order_by("id")
    return list(windows)


def _with_budgets(windows: list[BudgetWindow], policy: TenantPolicy) -> list[BudgetWindow]:
    """Attach each window's budget, from the cached policy (or the database, for an inactive one)."""
    known = {b.pk: b for b in policy.budgets}
    missing = {w.budget_id for w in windows} - set(known)
    if missing:
        known.update((b.pk, b) for b in Budget.objects.filter(pk__in=missing).select_related("tenant"))
    for window in windows:
        reserve.attach_budget(window, known[window.budget_id])
    return windows


def hold_commit(
    *, tenant: Tenant, hold_id, api_key: ApiKey | None, data: CommitData, fingerprint: str,
    policy: TenantPolicy | None = None, feature_ids: frozenset = frozenset(),
) -> CommitResult:
    """Record a call's actual usage and charge it to the budgets that count the model it used.

    The reservation comes off the windows the hold reserved on; the cost goes on the
    windows of every budget that counts the committed model (its family, the hold's
    feature and run) in the period the call was made, which is when its hold was granted.
    A call that used another model than the one granted is still recorded and charged
    (the money was spent); where that takes an enforcing budget past its limit, the event
    is flagged ``off_hold``. A commit after expiry is recorded the same way and marked late.
    A model with no price is recorded at the hold model's price with ``priced=False``.
    ``policy`` is the tenant's policy when the caller has just checked it is current.

    On PostgreSQL the locked part is one statement (``budgets.settle``); elsewhere it is
    a transaction that locks the hold, then the windows.
    """
    if reserve.on_postgresql():
        return _commit_in_one_statement(tenant, hold_id, api_key, data, fingerprint, policy, feature_ids)
    with transaction.atomic():
        hold = _hold_locked(tenant, hold_id, feature_ids)
        policy = policy or tenant_policy(tenant.pk)
        finished = _commit_finished(hold, fingerprint)
        if finished is not None:
            return finished
        charge = _commit_charge(tenant, api_key, hold, data, fingerprint, policy)
        windows = _with_budgets(windows_move_each(charge.moves), policy)
        event = charge.event
        event.off_hold = any(
            _over_limit(w, charged_nano=charge.uncovered[w.id][0], charged_tokens=charge.uncovered[w.id][1])
            for w in windows if w.id in charge.uncovered
        )
        try:
            with transaction.atomic():
                event.save(force_insert=True)
        except IntegrityError:
            raise _request_id_conflict(data) from None
        _hold_committed(hold, charge)
        hold.save(update_fields=["state", "late", "usage_event", "commit_hash", "finished_at", "charged_window_ids"])
        rollups_add(tenant=tenant, events=[event])
        return _commit_recorded(tenant, hold, charge, windows)


def _commit_in_one_statement(tenant, hold_id, api_key, data, fingerprint, policy, feature_ids) -> CommitResult:
    """Commit on PostgreSQL: read the hold, price and find the windows, then settle in one statement.

    The statement goes ahead only if the hold is still in the state it was read in (or
    granted in, when this process granted it: ``settle.hold_for_commit``); when a racing
    commit, release or expiry changed it meanwhile, the commit starts again from the hold
    as it is now.
    """
    for attempt in range(MAX_ATTEMPTS):
        hold = settle.hold_for_commit(tenant_id=tenant.pk, hold_id=hold_id, fresh=attempt > 0)
        if hold is None or (feature_ids and hold.feature_id not in feature_ids):
            raise AllowanceError("not_found", "No such allowance.")
        policy = policy or tenant_policy(tenant.pk)
        finished = _commit_finished(hold, fingerprint)
        if finished is not None:
            return finished
        charge = _commit_charge(tenant, api_key, hold, data, fingerprint, policy)
        try:
            settled = settle.hold_settle(hold, charge.event, moves=charge.moves, uncovered=charge.uncovered,
                                         late=not charge.was_held, now=charge.now)
        except IntegrityError:
            raise _request_id_conflict(data) from None
        if settled is None:
            continue  # the hold changed state meanwhile
        charge.event.off_hold = settled.off_hold
        _hold_committed(hold, charge)
        return _commit_recorded(tenant, hold, charge, _with_budgets(settled.windows, policy))
    raise AllowanceError("unavailable", "The commit could not be recorded under contention; retry shortly.")


@dataclass
class _Charge:
    """What a commit writes, worked out before any lock is taken."""

    event: UsageEvent
    charged: list[int]  # the windows the usage is charged to
    moves: Moves  # every window's counter moves: the charge, and the reservation coming off
    uncovered: dict[int, tuple[int, int]]  # per charged window, the USD and tokens no live hold covered
    was_held: bool
    now: datetime


def _commit_finished(hold: Hold, fingerprint: str) -> CommitResult | None:
    """Answer a commit of a hold that is already finished: a repeat, or a conflict."""
    if hold.state == HoldState.RELEASED:
        raise AllowanceError("conflict", "This allowance was released; it cannot be committed.")
    if hold.state != HoldState.COMMITTED:
        return None
    if hold.commit_hash != fingerprint:
        raise AllowanceError("conflict", "This allowance was already committed with a different body.")
    # A committed hold was given its event; SET_NULL clears it only if the ledger row is deleted.
    event = cast(UsageEvent, hold.usage_event)
    return CommitResult(hold=hold, event=event, windows=_windows_for(hold))


def _commit_charge(tenant: Tenant, api_key: ApiKey | None, hold: Hold, data: CommitData, fingerprint: str,
                   policy: TenantPolicy) -> _Charge:
    """Price the call as committed and find (or open) the windows it is charged to."""
    now = timezone.now()
    was_held = hold.state == HoldState.HELD and now <= hold.expires_at
    item = UsageInput(
        feature=policy.feature_by_id(hold.feature_id) or hold.feature, model=data.model or hold.model,
        usage=data.usage, service_tier=data.service_tier or hold.service_tier,
        inference_geo=data.inference_geo or hold.inference_geo, speed=data.speed or hold.speed,
        request_id=data.request_id, run_id=hold.run_id, occurred_at=hold.created_at,
        stop_reason=data.stop_reason, latency_ms=data.latency_ms, ttft_ms=data.ttft_ms, streamed=data.streamed,
        max_tokens=hold.max_tokens, metadata={**hold.metadata, **data.metadata},
    )
    event = usage_event_build(tenant=tenant, api_key=api_key, item=item, source=UsageSource.COMMIT,
                              fallback_model=hold.model)
    event.body_hash = fingerprint
    tokens = event_tokens(event)
    charged = _charged_windows(policy, tenant=tenant, event=event)
    moves: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for window_id in charged:
        moves[window_id][0] += event.cost_nano
        moves[window_id][2] += tokens
    if hold.state == HoldState.HELD:  # an expired hold's reservation is gone already, or goes here
        for window_id in hold.window_ids:
            moves[window_id][1] -= hold.amount_nano
            moves[window_id][3] -= hold.tokens
    covered = set(hold.window_ids) if was_held else set()
    uncovered = {
        i: (event.cost_nano - (hold.amount_nano if i in covered else 0), tokens - (hold.tokens if i in covered else 0))
        for i in charged
    }
    return _Charge(event=event, charged=charged, moves={i: (m[0], m[1], m[2], m[3]) for i, m in moves.items()},
                   uncovered=uncovered, was_held=was_held, now=now)


def _request_id_conflict(data: CommitData) -> AllowanceError:
    return AllowanceError(
        "conflict", f"Usage for request_id '{data.request_id}' is already recorded.",
        {"request_id": data.request_id},
    )


def _hold_committed(hold: Hold, charge: _Charge) -> None:
    hold.state = HoldState.COMMITTED
    hold.late = not charge.was_held
    hold.usage_event = charge.event
    hold.commit_hash = charge.event.body_hash
    hold.finished_at = charge.now
    hold.charged_window_ids = charge.charged


def _commit_recorded(tenant: Tenant, hold: Hold, charge: _Charge, windows: list[BudgetWindow]) -> CommitResult:
    """Raise what a recorded commit raises (unpriced usage; thresholds, checked once it is committed)."""
    usage_announce(tenant=tenant, events=[charge.event])
    charged_windows = [w for w in windows if w.id in charge.uncovered]
    signals.windows_charged.send(sender=BudgetWindow, windows=charged_windows)
    return CommitResult(hold=hold, event=charge.event, windows=charged_windows)


def hold_release(*, tenant: Tenant, hold_id, feature_ids: frozenset = frozenset()) -> Hold:
    """Drop a hold the call did not use; releasing twice is harmless, a committed hold is a conflict.

    On PostgreSQL it is one statement (``settle.hold_release``); elsewhere a transaction
    that locks the hold, then its windows.
    """
    if connection.vendor == "postgresql":
        now = timezone.now()
        hold = settle.hold_release(tenant_id=tenant.pk, hold_id=hold_id, feature_ids=feature_ids, now=now)
        if hold is None:
            raise AllowanceError("not_found", "No such allowance.")
        if hold.state == HoldState.COMMITTED:
            raise AllowanceError("conflict", "This allowance was already committed.")
        if hold.state in (HoldState.HELD, HoldState.EXPIRED):
            hold.state, hold.finished_at = HoldState.RELEASED, now
        return hold
    with transaction.atomic():
        return _release_locked(tenant, hold_id, feature_ids)


def _release_locked(tenant: Tenant, hold_id, feature_ids: frozenset) -> Hold:
    hold = _hold_locked(tenant, hold_id, feature_ids)
    if hold.state == HoldState.COMMITTED:
        raise AllowanceError("conflict", "This allowance was already committed.")
    if hold.state in (HoldState.HELD, HoldState.EXPIRED):
        if hold.state == HoldState.HELD:
            windows_move(hold.window_ids, reserved=-hold.amount_nano, reserved_tokens=-hold.tokens)
        hold.state = HoldState.RELEASED
        hold.finished_at = timezone.now()
        hold.save(update_fields=["state", "finished_at"])
    return hold


def holds_expire(*, now: datetime | None = None, batch_size: int = 500) -> int:
    """Release every hold past its expiry; safe to run twice or on several workers at once."""
    now = now or timezone.now()
    expired = 0
    while True:
        ids = list(
            Hold.objects.filter(state=HoldState.HELD, expires_at__lt=now)
            .order_by("expires_at")
            .values_list("id", flat=True)[:batch_size]
        )
        if not ids:
            return expired
        for hold_id in ids:
            with transaction.atomic():
                hold = Hold.objects.select_for_update().filter(pk=hold_id, state=HoldState.HELD).first()
                if hold is None:
                    continue  # committed, released or expired by someone else meanwhile
                windows_move(hold.window_ids, reserved=-hold.amount_nano, reserved_tokens=-hold.tokens)
                hold.state = HoldState.EXPIRED
                hold.finished_at = now
                hold.save(update_fields=["state", "finished_at"])
                expired += 1
        if len(ids) < batch_size:
            return expired
