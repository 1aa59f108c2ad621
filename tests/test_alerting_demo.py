"""The demo tenant's alerts on a fresh start: only open windows, each naming its window."""

from __future__ import annotations

from datetime import UTC, datetime
from io import StringIO

import pytest
import time_machine
from django.core.management import call_command
from django.utils import timezone

from budgets.alerting import budgets_evaluate, window_phrase
from governance.notify.models import Alert

# A Wednesday: the week, the month and the day are all under way, with 60 days behind them.
NOW = datetime(2026, 11, 25, 15, tzinfo=UTC)


@pytest.mark.django_db
@time_machine.travel(NOW, tick=False)
def test_a_fresh_demo_alerts_only_open_windows_each_naming_its_window():
    # Given the demo as `make run` seeds it (its backfill commits 60 days of history)
    call_command("seed_demo", stdout=StringIO())

    # When the beat sweeps again
    budgets_evaluate()

    # Then every alert is about a window still under way, and says which
    alerts = list(Alert.objects.filter(tenant__slug="demo").select_related("window", "budget__tenant"))
    assert alerts
    now = timezone.now()
    for alert in alerts:
        window = alert.window
        assert window is not None, alert.title
        assert window.start <= now and (window.end is None or now < window.end), alert.title
        window.budget = alert.budget
        phrase = window_phrase(window)
        assert phrase in alert.title, alert.title
    print("\n".join(sorted(a.title for a in alerts)))
