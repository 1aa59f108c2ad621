"""``seed_demo``: a demo tenant with content on every page, and safe to run twice."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import time_machine
from django.core.management import call_command
from django.utils import timezone

from budgets.models import Budget
from governance.management.commands import seed_demo
from governance.models import Feature, Membership, Tenant
from governance.notify.models import Alert, AlertChannel
from usage.models import UsageEvent, UsageRollup
from usage.provider.models import FeatureReconciliation
from usage.provider.selectors import reconciliation_compute


def test_seed_demo_is_idempotent_and_fills_the_dashboard(db, client, settings, tmp_path):
    # One instant for both runs: today fills up with the calls made "so far", so a second run
    # seconds later may rightly add one made in between (it did, once in a while).
    with time_machine.travel(timezone.now(), tick=False):
        settings.BASE_DIR = tmp_path
        out = StringIO()
        call_command("seed_demo", "--days", "3", stdout=out)
        tenant = Tenant.objects.get(slug="demo")
        assert sorted(Feature.objects.filter(tenant=tenant).values_list("key", flat=True)) == [
            "code-review", "nightly-digest", "support-assistant", "ticket-classifier",
        ]
        assert {b.scope for b in Budget.objects.filter(tenant=tenant)} == {"tenant", "feature", "run"}
        assert {b.period for b in Budget.objects.filter(tenant=tenant)} >= {"day", "week", "month"}
        assert AlertChannel.objects.filter(tenant=tenant, kind="email").exists()
        events = UsageEvent.objects.filter(tenant=tenant).count()
        assert events > 100
        assert UsageRollup.objects.filter(tenant=tenant, service_tier="batch").exists()
        login = (tmp_path / "var" / "demo-login.txt").read_text().strip()
        assert login == "demo@comptroller.local / comptroller-demo"
        assert "Owner login: demo@comptroller.local / comptroller-demo" in out.getvalue()

        call_command("seed_demo", "--days", "3", stdout=StringIO())
        assert UsageEvent.objects.filter(tenant=tenant).count() == events
        assert Budget.objects.filter(tenant=tenant).count() == 6
        assert Membership.objects.filter(tenant=tenant).count() == 2

        assert client.login(username="demo@comptroller.local", password="comptroller-demo")
        html = client.get("/t/demo/").content.decode()
        assert "Code review weekly" in html and "Spend per day by model" in html
        assert "No usage in the last 30 days" not in html
        assert "No Anthropic connection" not in html  # a paused demo connection with reconciled days

        # every demo feature is mapped (three API keys, the nightly digest's workspace) and reconciled per day:
        # the made-up usage report is the ledger hour by hour, so each matches exactly
        rows = FeatureReconciliation.objects.filter(tenant=tenant).select_related("feature")
        assert {r.feature.key for r in rows} == set(seed_demo.DEMO_IDS)
        assert all(r.provider_usage_nano == r.metered_nano for r in rows)
        assert sum(r.metered_nano for r in rows) > 0
        assert not Alert.objects.filter(tenant=tenant, dedup_key__contains=":feature:").exists()
        provider = client.get("/t/demo/provider/").content.decode()
        table = provider.split('id="feature-reconciliation"')[1].split("</table>")[0]
        assert all(spec.name in table for spec in seed_demo.FEATURES)
        assert "wrkspc_01DemoBatchJobs" in table and "Ledger higher" not in table and "Anthropic higher" not in table

        # and the tenant's reconciliation has one real drift to click through: the Console's Sonnet two days ago
        today = timezone.now().astimezone(tenant.tz).date()
        days = reconciliation_compute(tenant=tenant, start=today - timedelta(days=3), end=today)
        drifting = [d.day for d in (days.values() if isinstance(days, dict) else days) if d.drifting]
        assert drifting == [today - timedelta(days=2)]


def test_seed_demo_keeps_a_working_service_key_for_the_banner(db, settings, tmp_path):
    from tests.conftest import make_client

    settings.BASE_DIR = tmp_path
    out = StringIO()
    call_command("seed_demo", "--days", "1", stdout=out)
    key_file = tmp_path / "var" / "demo-service-key.txt"
    secret = key_file.read_text().strip()
    assert f"Demo service API key: {secret}" in out.getvalue()
    assert make_client(secret).get("/api/v1/whoami").json()["role"] == "service"

    call_command("seed_demo", "--days", "1", stdout=StringIO())
    assert key_file.read_text().strip() == secret  # a second run keeps the key

    key_file.unlink()  # the only copy of the secret is gone: a new key replaces the old
    call_command("seed_demo", "--days", "1", stdout=StringIO())
    renewed = key_file.read_text().strip()
    assert renewed != secret
    assert make_client(renewed).get("/api/v1/whoami").status_code == 200
    assert make_client(secret).get("/api/v1/whoami").status_code == 401
