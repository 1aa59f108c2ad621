"""The hot paths' model instances (governance/instances.py, budgets.reserve.attach_budget) are what Django builds."""

from __future__ import annotations

import pytest
from django.db.models.signals import post_init, pre_init

from budgets.models import BudgetWindow, Hold
from budgets.reserve import attach_budget
from governance.instances import instance_new
from tests.factories import BudgetFactory


@pytest.mark.parametrize("signal", [pre_init, post_init])
def test_a_hold_is_built_by_init_while_something_listens_to_its_signals(signal):
    seen = []

    def receiver(sender, **kwargs):
        seen.append(sender)

    hold = instance_new(Hold, model="claude-haiku-4-5")
    assert seen == [] and hold.model == "claude-haiku-4-5" and hold._state.adding
    signal.connect(receiver, sender=BudgetWindow)
    try:
        instance_new(Hold, model="claude-haiku-4-5")
        assert seen == []  # another model's listener
        signal.connect(receiver, sender=Hold)
        try:
            built = instance_new(Hold, model="claude-haiku-4-5")
        finally:
            signal.disconnect(receiver, sender=Hold)
    finally:
        signal.disconnect(receiver, sender=BudgetWindow)
    assert seen == [Hold]
    assert built.model == "claude-haiku-4-5"


@pytest.mark.django_db
def test_an_attached_budget_is_the_windows_budget_without_a_query(tenant, django_assert_num_queries):
    budget = BudgetFactory(tenant=tenant, scope="tenant", period="month", limit_nano=10**12)
    from budgets import selectors

    selectors.current_window(budget).save()
    window = BudgetWindow.objects.get(budget=budget)  # its budget not loaded
    attach_budget(window, budget)
    with django_assert_num_queries(0):
        assert window.budget is budget
    assert window.budget_id == budget.pk
