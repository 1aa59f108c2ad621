"""A model-based test of the money path: whatever clients do, the books balance.

Hypothesis drives the services with any sequence of budget edits, allowances (downgrades
and denials included), commits of any model, releases, expiries, late commits, usage
reports (past-dated too) and idempotent repeats, moving the clock between them. After
every step it checks what a FinOps user relies on:

- every window's ``spent`` equals the ledger's spend in that window's scope and period;
- every window's ``reserved`` equals the sum of the live holds on it;
- no step moves an enforcing window past its limit, except a commit or report whose
  ledger row is flagged ``off_hold`` (spend that no hold covered: the money was spent);
- every committed hold has exactly one ledger row, and the rollups equal the ledger.

Runs on SQLite and on PostgreSQL (where one-model allowances take the one-statement path).
"""

from __future__ import annotations

import itertools
import os
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.db.models import Sum
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from budgets import services, settle, shelf
from budgets.models import Budget, BudgetWindow, Enforcement, Hold, HoldState, Period, Scope
from budgets.selectors import current_window
from governance.audit import Actor
from governance.models import Tenant
from tests.conftest import ensure_prices
from tests.factories import FeatureFactory
from usage.models import UsageEvent, UsageRollup
from usage.pricing import TokenUsage
from usage.services import UsageInput

MODELS = ["claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1"]
FAMILIES = ["opus", "sonnet", "haiku"]
START = datetime(2026, 11, 27, 22, 0, tzinfo=UTC)  # a Friday night: days, a week and a month turn soon
_tenants = itertools.count()


def _event_tokens(event: UsageEvent) -> int:
    return (event.input_tokens + event.output_tokens + event.cache_write_5m_tokens
            + event.cache_write_1h_tokens + event.cache_read_tokens)


class MoneyPath(RuleBasedStateMachine):
    budgets = Bundle("budgets")
    holds = Bundle("holds")

    def __init__(self) -> None:
        super().__init__()
        self.clock = time_machine.travel(START, tick=False)
        self.traveller = self.clock.start()
        self.tenant = Tenant.objects.create(slug=f"model-{next(_tenants)}", name="Model", timezone="UTC")
        self.features = [
            FeatureFactory(tenant=self.tenant, key="chat", default_model="claude-sonnet-4-5",
                           fallback_models=["claude-haiku-4-5"]),
            FeatureFactory(tenant=self.tenant, key="batch", default_model="claude-haiku-4-5"),
        ]
        self.requests = itertools.count()
        self.keys: dict[str, dict] = {}  # idempotency key -> request fields
        self.edited_at: dict = {}  # budget id -> when its scope, family or activity last changed
        self.before: dict[int, tuple[int, int]] = {}

    def teardown(self) -> None:
        self.clock.stop()

    # --- helpers ------------------------------------------------------------------------

    def _snapshot(self) -> None:
        self.before = {w.id: (w.spent_nano + w.reserved_nano, w.spent_tokens + w.reserved_tokens)
                       for w in BudgetWindow.objects.filter(budget__tenant=self.tenant)}

    # --- budgets ------------------------------------------------------------------------

    @initialize(target=budgets)
    def first_budget(self):
        return self._budget_create(Scope.TENANT, None, [], Period.DAY, Enforcement.BLOCK, 500_000_000, None)

    @rule(
        target=budgets,
        scope=st.sampled_from(Scope.values),
        feature=st.sampled_from([0, 1, None]),
        families=st.lists(st.sampled_from(FAMILIES), max_size=2, unique=True),
        period=st.sampled_from(Period.values),
        enforcement=st.sampled_from(Enforcement.values),
        limit_nano=st.one_of(st.none(), st.integers(10_000_000, 1_000_000_000)),
        limit_tokens=st.one_of(st.none(), st.integers(2_000, 200_000)),
    )
    def create_budget(self, scope, feature, families, period, enforcement, limit_nano, limit_tokens):
        return self._budget_create(scope, feature, families, period, enforcement, limit_nano, limit_tokens)

    def _budget_create(self, scope, feature, families, period, enforcement, limit_nano, limit_tokens):
        if limit_nano is None and limit_tokens is None:
            limit_nano = 10_000_000
        if scope == Scope.FEATURE and feature is None:
            feature = 0
        if scope == Scope.TENANT:
            feature = None
        self._snapshot()
        budget = services.budget_create(
            tenant=self.tenant, actor=Actor.system(), name=f"b{next(self.requests)}", scope=scope,
            period=period, enforcement=enforcement,
            feature=None if feature is None else self.features[feature], model_families=families,
            limit_nano=limit_nano, limit_tokens=limit_tokens,
        )
        self.edited_at[budget.pk] = self.traveller_now()
        return budget.pk

    def traveller_now(self) -> datetime:
        return datetime.now(UTC)

    @rule(
        budget=budgets,
        families=st.one_of(st.none(), st.lists(st.sampled_from(FAMILIES), max_size=2, unique=True)),
        active=st.one_of(st.none(), st.booleans()),
        limit_nano=st.one_of(st.none(), st.integers(10_000_000, 1_000_000_000)),
    )
    def edit_budget(self, budget, families, active, limit_nano):
        obj = Budget.objects.get(pk=budget)
        data = {}
        if families is not None:
            data["model_families"] = families
        if active is not None:
            data["active"] = active
        if limit_nano is not None:
            data["limit_nano"] = limit_nano
        self._snapshot()
        services.budget_update(budget=obj, actor=Actor.system(), data=data)
        if families is not None or active is not None:
            self.edited_at[budget] = self.traveller_now()
        # A lowered limit may leave a window above it: that is the admin's doing, not a step's.
        self._snapshot()

    # --- allowances ---------------------------------------------------------------------

    @rule(
        target=holds,
        feature=st.sampled_from([0, 1]),
        model=st.sampled_from(MODELS),
        input_tokens=st.integers(0, 4_000),
        max_tokens=st.integers(1, 4_000),
        run=st.sampled_from(["", "run-a", "run-b"]),
        keyed=st.booleans(),
    )
    def allowance(self, feature, model, input_tokens, max_tokens, run, keyed):
        fields = dict(feature=self.features[feature].key, model=model, input_tokens=input_tokens,
                      max_tokens=max_tokens, run_id=run)
        key = f"idem-{next(self.requests)}" if keyed else ""
        if key:
            self.keys[key] = fields
        self._snapshot()
        decision = services.allowance_request(
            tenant=self.tenant, api_key=None, req=services.AllowanceRequest(**fields, idempotency_key=key)
        )
        self._check_limits(off_hold_ok=False)
        return decision.hold.pk if decision.hold is not None else None

    @precondition(lambda self: self.keys)
    @rule(data=st.data())
    def repeat_allowance(self, data):
        """Repeat an earlier keyed request: it must hold nothing more."""
        key = data.draw(st.sampled_from(sorted(self.keys)))
        self._snapshot()
        held = Hold.objects.filter(tenant=self.tenant).count()
        services.allowance_request(
            tenant=self.tenant, api_key=None, req=services.AllowanceRequest(**self.keys[key], idempotency_key=key)
        )
        assert Hold.objects.filter(tenant=self.tenant).count() == held
        self._check_limits(off_hold_ok=False)

    @rule(
        hold=holds,
        model=st.one_of(st.none(), st.sampled_from(MODELS)),
        share=st.fractions(0, 1),
        overrun=st.booleans(),
        again=st.booleans(),
    )
    def commit(self, hold, model, share, overrun, again):
        if hold is None:
            event("commit: of a denial (nothing to commit)")
            return
        obj = Hold.objects.get(pk=hold)
        if obj.state not in (HoldState.HELD, HoldState.EXPIRED):
            event("commit: of a hold already finished")
            return
        event(f"commit: of a hold {obj.state}")
        output = obj.max_tokens * 2 if overrun else int(obj.max_tokens * share)
        data = services.CommitData(
            usage=TokenUsage(input_tokens=obj.input_tokens, output_tokens=output),
            model=model or "", request_id=f"msg-{next(self.requests)}",
        )
        fingerprint = services.AllowanceRequest.fingerprint_of({"hold": str(hold), "model": model, "out": output})
        self._snapshot()
        services.hold_commit(tenant=self.tenant, hold_id=hold, api_key=None, data=data, fingerprint=fingerprint)
        self._check_limits(off_hold_ok=True)
        if again:
            self._snapshot()
            services.hold_commit(tenant=self.tenant, hold_id=hold, api_key=None, data=data, fingerprint=fingerprint)
            self._check_limits(off_hold_ok=False)

    @rule(
        feature=st.sampled_from([0, 1]),
        model=st.sampled_from(MODELS),
        max_tokens=st.integers(1, 4_000),
        share=st.fractions(0, 1),
        overrun=st.booleans(),
        elsewhere=st.booleans(),
        again=st.booleans(),
    )
    def call(self, feature, model, max_tokens, share, overrun, elsewhere, again):
        """A whole call: its allowance, then its commit (the rules above, drawing a hold from
        every one granted or denied so far, reach a commit of a live hold too seldom). Where
        holds are kept for their commit (autocommitted statements, as under a web server),
        ``elsewhere`` commits at another process than the one that granted the hold."""
        hold = self.allowance(feature, model, 500, max_tokens, "", False)
        if hold is not None and elsewhere:
            settle._granted.clear()
        self.commit(hold, None, share, overrun, again)

    @rule(hold=holds)
    def release(self, hold):
        if hold is None or Hold.objects.get(pk=hold).state == HoldState.COMMITTED:
            return
        self._snapshot()
        services.hold_release(tenant=self.tenant, hold_id=hold)
        self._check_limits(off_hold_ok=False)

    @rule(minutes=st.integers(1, 36 * 60))
    def time_passes(self, minutes):
        self.traveller.shift(timedelta(minutes=minutes))
        self._snapshot()
        services.holds_expire()
        self._check_limits(off_hold_ok=False)

    # --- usage without a hold -------------------------------------------------------------

    @rule(
        feature=st.sampled_from([0, 1]),
        model=st.sampled_from(MODELS),
        output=st.integers(0, 3_000),
        hours_ago=st.integers(0, 80),
        run=st.sampled_from(["", "run-a"]),
        repeat=st.booleans(),
    )
    def usage_report(self, feature, model, output, hours_ago, run, repeat):
        item = UsageInput(
            feature=self.features[feature], model=model,
            usage=TokenUsage(input_tokens=500, output_tokens=output),
            request_id=f"report-{next(self.requests)}", run_id=run,
            occurred_at=datetime.now(UTC) - timedelta(hours=hours_ago),
        )
        self._snapshot()
        services.usage_report(tenant=self.tenant, api_key=None, items=[item, item] if repeat else [item])
        self._check_limits(off_hold_ok=True)

    # --- the books ----------------------------------------------------------------------

    def _check_limits(self, *, off_hold_ok: bool) -> None:
        """No step moves an enforcing window past its limit, except spend flagged off-hold."""
        for window in BudgetWindow.objects.filter(budget__tenant=self.tenant).select_related("budget"):
            budget = window.budget
            if not budget.active or budget.enforcement == Enforcement.ALERT:
                continue
            usd, tokens = window.spent_nano + window.reserved_nano, window.spent_tokens + window.reserved_tokens
            before_usd, before_tokens = self.before.get(window.id, (0, 0))
            over_usd = budget.limit_nano is not None and usd > budget.limit_nano and usd > before_usd
            over_tokens = budget.limit_tokens is not None and tokens > budget.limit_tokens and tokens > before_tokens
            if over_usd or over_tokens:
                assert off_hold_ok and self._off_hold_in(window), (
                    f"{budget.name} ({budget.scope}/{budget.period}/{budget.enforcement} {budget.model_families}) "
                    f"moved past its limit: {usd}/{budget.limit_nano} nano, {tokens}/{budget.limit_tokens} tokens"
                )

    def _off_hold_in(self, window: BudgetWindow) -> bool:
        return self._events_in(window).filter(off_hold=True).exists()

    def _events_in(self, window: BudgetWindow):
        budget = window.budget
        events = UsageEvent.objects.filter(tenant=self.tenant, occurred_at__gte=window.start)
        if window.end is not None:
            events = events.filter(occurred_at__lt=window.end)
        if budget.model_families:
            events = events.filter(family__in=budget.model_families)
        if budget.scope == Scope.FEATURE:
            events = events.filter(feature_id=budget.feature_id)
        if budget.scope == Scope.RUN:
            events = events.filter(run_id=window.run_id)
            if budget.feature_id is not None:
                events = events.filter(feature_id=budget.feature_id)
        return events

    def _windows(self) -> list[BudgetWindow]:
        """Every window of the tenant, and the current window of each budget that has none yet."""
        windows = list(BudgetWindow.objects.filter(budget__tenant=self.tenant).select_related("budget"))
        now = datetime.now(UTC)
        for budget in Budget.objects.filter(tenant=self.tenant, active=True).exclude(scope=Scope.RUN):
            current = current_window(budget, at=now)
            if current.pk is None:
                windows.append(current)
        return windows

    @invariant()
    def windows_equal_the_ledger(self):
        for window in self._windows():
            budget = window.budget
            edited = self.edited_at.get(budget.pk)
            if not budget.active or (window.end is not None and edited is not None and window.end <= edited):
                continue  # a window that closed before the budget took its present shape is history
            events = list(self._events_in(window))
            assert window.spent_nano == sum(e.cost_nano for e in events), (
                f"{budget.name} ({budget.scope}/{budget.period} {budget.model_families}) window "
                f"{window.start:%Y-%m-%d}{' ' + window.run_id if window.run_id else ''}: "
                f"spent {window.spent_nano}, ledger {sum(e.cost_nano for e in events)}"
            )
            assert window.spent_tokens == sum(_event_tokens(e) for e in events)

    @invariant()
    def reserved_equals_live_holds(self):
        live = defaultdict(lambda: [0, 0])
        for hold in Hold.objects.filter(tenant=self.tenant, state=HoldState.HELD):
            for window_id in hold.window_ids:
                live[window_id][0] += hold.amount_nano
                live[window_id][1] += hold.tokens
        for window in BudgetWindow.objects.filter(budget__tenant=self.tenant):
            assert [window.reserved_nano, window.reserved_tokens] == live.get(window.id, [0, 0])

    @invariant()
    def committed_holds_have_one_event_and_rollups_equal_the_ledger(self):
        committed = Hold.objects.filter(tenant=self.tenant, state=HoldState.COMMITTED)
        assert all(h.usage_event_id is not None for h in committed)
        assert UsageEvent.objects.filter(tenant=self.tenant, source="commit").count() == committed.count()
        ledger = UsageEvent.objects.filter(tenant=self.tenant).aggregate(cost=Sum("cost_nano"))["cost"] or 0
        rolled = UsageRollup.objects.filter(tenant=self.tenant).aggregate(cost=Sum("cost_nano"))["cost"] or 0
        assert ledger == rolled


@pytest.mark.django_db
def test_the_books_balance_whatever_clients_do():
    """Explore sequences of every money operation; MONEY_EXAMPLES=500 explores further by hand."""
    ensure_prices()
    run_state_machine_as_test(
        MoneyPath,
        settings=settings(
            max_examples=int(os.environ.get("MONEY_EXAMPLES", "30")), stateful_step_count=30, deadline=None,
            derandomize=True, database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )


class MoneyPathAcrossWorkers(MoneyPath):
    """The same, with each statement autocommitted as under a web server, the holds kept where
    they were granted and on the host's shelf (``budgets/shelf.py``), and commits arriving at
    the process that granted the hold or at another one (the one-statement path trusts the
    hold as granted, and must notice when it moved on)."""

    def __init__(self) -> None:
        shelf.create(regions=2)
        shelf.attach(0)
        super().__init__()

    def teardown(self) -> None:
        super().teardown()
        shelf.close()
        settle._granted.clear()

    @rule()
    def next_commit_reaches_another_worker(self):
        settle._granted.clear()  # only the shelf has the holds granted so far


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_books_balance_when_commits_reach_another_worker():
    ensure_prices()
    run_state_machine_as_test(
        MoneyPathAcrossWorkers,
        settings=settings(
            max_examples=int(os.environ.get("MONEY_EXAMPLES", "15")), stateful_step_count=30, deadline=None,
            derandomize=True, database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
