"""Threshold and exhaustion alerts raised by real allowances, commits and usage reports."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine

from budgets.alerting import budgets_evaluate, windows_evaluate
from budgets.models import BudgetWindow
from governance.audit import Actor
from governance.notify import services
from governance.notify.models import Alert, Notification, NotificationStatus
from tests.factories import BudgetFactory

ASK = {"feature": "support-bot", "model": "claude-sonnet-4-5", "input_tokens": 1000, "max_tokens": 1000}
USAGE = {"input_tokens": 1000, "output_tokens": 400}  # $0.009 on Sonnet 4.5, 1,400 tokens
CALL_NANO = 9_000_000
SLACK_PATH = "/services/T000/B000/alerts"


@pytest.fixture
def channels(tenant, settings, httpserver):
    """An email channel and a Slack channel (a local HTTP server standing in for Slack)."""
    settings.NOTIFY_SLACK_WEBHOOK_PREFIXES = [httpserver.url_for("/")]
    httpserver.expect_request(SLACK_PATH, method="POST").respond_with_data("ok")
    services.channel_create(
        tenant=tenant, actor=Actor.system(), name="Finance", kind="email", email_addresses=["fin@acme.test"]
    )
    services.channel_create(
        tenant=tenant, actor=Actor.system(), name="#spend", kind="slack",
        slack_webhook_url=httpserver.url_for(SLACK_PATH),
    )
    return httpserver


@pytest.fixture
def call(api, feature, django_capture_on_commit_callbacks):
    """Make one model call through the API: allowance, then commit; run what commits enqueue."""

    def make_call(usage=USAGE):
        with django_capture_on_commit_callbacks(execute=True):
            response = api.post("/api/v1/allowances", ASK, format="json")
        body = response.json()
        if not body["granted"]:
            return body
        with django_capture_on_commit_callbacks(execute=True):
            committed = api.post(f"/api/v1/allowances/{body['id']}/commit", {"usage": usage}, format="json")
        assert committed.status_code == 200, committed.content
        return committed.json()

    return make_call


def slack_titles(httpserver) -> list[str]:
    return [request.get_json()["blocks"][0]["text"]["text"] for request, _ in httpserver.log]


def test_crossing_50_then_80_sends_exactly_two_threshold_alerts_per_channel(tenant, channels, call, mailoutbox):
    # Given a monthly budget of ten calls, alerting at 50, 80 and 100 %
    BudgetFactory(tenant=tenant, name="Support", scope="tenant", limit_nano=10 * CALL_NANO, enforcement="alert")

    # When eight calls are committed in November (50 % after the fifth, 80 % after the eighth)
    with time_machine.travel(datetime(2026, 11, 23, 10, tzinfo=UTC)):
        for _ in range(8):
            call()

    # Then each channel heard exactly twice: 50 % and 80 %, each naming the month
    alerts = Alert.objects.filter(tenant=tenant, kind="threshold").order_by("threshold")
    assert [a.threshold for a in alerts] == [50, 80]
    assert [m.subject for m in mailoutbox] == [
        "[Comptroller] Support has used 50% of its limit in November",
        "[Comptroller] Support has used 80% of its limit in November",
    ]
    assert slack_titles(channels) == [
        "Support has used 50% of its limit in November", "Support has used 80% of its limit in November",
    ]
    assert Notification.objects.filter(status=NotificationStatus.SENT).count() == 4


def test_threshold_alert_says_budget_scope_spend_and_links_to_the_budget(tenant, feature, channels, call, mailoutbox):
    budget = BudgetFactory(
        tenant=tenant, name="Support bot", scope="feature", feature=feature, limit_nano=2 * CALL_NANO,
        enforcement="alert", period="month",
    )
    call()

    payload = channels.log[0][0].get_json()
    fields = {f["text"].split("\n")[0]: f["text"].split("\n")[1] for b in payload["blocks"] if "fields" in b for f in b["fields"]}
    assert fields["*Budget*"] == "Support bot"
    assert fields["*Scope*"] == "Feature support-bot"
    assert fields["*Spent / limit*"] == "$0.0090 / $0.0180"
    assert fields["*Percent*"] == "50.0%"
    button = next(b for b in payload["blocks"] if b["type"] == "actions")["elements"][0]
    assert button["url"] == f"http://127.0.0.1:8000/t/acme/budgets/{budget.pk.hex}/"
    [email] = mailoutbox
    assert f"/t/acme/budgets/{budget.pk.hex}/" in email.body
    assert "Spent / limit: $0.0090 / $0.0180" in email.body


def test_a_jump_over_several_thresholds_raises_only_the_highest(tenant, channels, call, mailoutbox):
    BudgetFactory(tenant=tenant, name="Small", scope="tenant", limit_nano=CALL_NANO + CALL_NANO // 10, enforcement="alert")
    call()  # 0 % -> 90.9 %
    assert list(Alert.objects.values_list("threshold", flat=True)) == [80]
    call()  # -> 181.8 %
    assert sorted(Alert.objects.values_list("threshold", flat=True)) == [80, 100]
    assert len(mailoutbox) == 2


def test_holds_alone_do_not_cross_thresholds(tenant, channels, api, feature, mailoutbox, django_capture_on_commit_callbacks):
    # Reserved money is a worst case that is mostly released: only spend counts.
    BudgetFactory(tenant=tenant, scope="tenant", limit_nano=3 * CALL_NANO, enforcement="alert")
    with django_capture_on_commit_callbacks(execute=True):
        assert api.post("/api/v1/allowances", ASK, format="json").json()["granted"]
    assert not Alert.objects.exists()
    assert mailoutbox == []


def test_token_limits_cross_thresholds_on_their_own(tenant, channels, call, mailoutbox):
    BudgetFactory(tenant=tenant, name="Tokens", scope="tenant", limit_nano=10**12, limit_tokens=2000, enforcement="alert")
    call()  # 1,400 of 2,000 tokens = 70 %
    alert = Alert.objects.get()
    assert alert.threshold == 50
    assert "1,400 tokens of 2,000 tokens spent (70.0%)" in alert.body


def test_a_new_window_rearms_the_thresholds(tenant, channels, call, mailoutbox):
    # Given a daily budget that crossed 50 % yesterday
    budget = BudgetFactory(tenant=tenant, name="Daily", scope="tenant", period="day", limit_nano=2 * CALL_NANO, enforcement="alert")
    with time_machine.travel(datetime(2026, 11, 23, 10, tzinfo=UTC), tick=False):
        call()
        call()  # 100 % as well
    assert sorted(Alert.objects.values_list("threshold", flat=True)) == [50, 100]

    # When today's spend crosses 50 % again
    with time_machine.travel(datetime(2026, 11, 24, 10, tzinfo=UTC), tick=False):
        call()

    # Then 50 % is announced again, for today's window
    windows = list(BudgetWindow.objects.filter(budget=budget).order_by("start"))
    assert len(windows) == 2
    today = Alert.objects.filter(window=windows[1]).get()
    assert today.threshold == 50
    assert len(mailoutbox) == 3


def test_usage_reports_cross_thresholds_too(tenant, channels, api, feature, mailoutbox, django_capture_on_commit_callbacks):
    BudgetFactory(tenant=tenant, name="Batch", scope="tenant", limit_nano=2 * CALL_NANO, enforcement="alert")
    body = {"feature": "support-bot", "model": "claude-sonnet-4-5", "request_id": "r1", "usage": USAGE}
    with django_capture_on_commit_callbacks(execute=True):
        assert api.post("/api/v1/usage", body, format="json").status_code == 201
    assert Alert.objects.get().threshold == 50
    assert len(mailoutbox) == 1


def test_a_denial_with_room_left_is_not_exhaustion(tenant, channels, api, feature, mailoutbox, django_capture_on_commit_callbacks):
    # Given a block budget with nothing spent, too small for one call's worst case
    BudgetFactory(tenant=tenant, name="Tiny", scope="tenant", limit_nano=CALL_NANO, enforcement="block",
                  thresholds=[100])

    # When three calls are denied
    for _ in range(3):
        with django_capture_on_commit_callbacks(execute=True):
            assert api.post("/api/v1/allowances", ASK, format="json").json()["decision"] == "denied"

    # Then nobody is told the budget is exhausted: it is not
    assert not Alert.objects.exists()
    assert mailoutbox == []


def test_first_denial_once_spend_reaches_the_limit_raises_exhausted_once(
    tenant, channels, api, feature, mailoutbox, django_capture_on_commit_callbacks
):
    # Given a December block budget whose spend has reached its limit
    budget = BudgetFactory(tenant=tenant, name="Tiny", scope="tenant", limit_nano=CALL_NANO, enforcement="block",
                           thresholds=[100])
    with time_machine.travel(datetime(2026, 12, 1, 10, tzinfo=UTC)):
        BudgetWindow.objects.create(budget=budget, start=datetime(2026, 12, 1, tzinfo=UTC),
                                    end=datetime(2027, 1, 1, tzinfo=UTC), spent_nano=CALL_NANO)

        # When three calls are denied
        for _ in range(3):
            with django_capture_on_commit_callbacks(execute=True):
                assert api.post("/api/v1/allowances", ASK, format="json").json()["decision"] == "denied"

    # Then one 'exhausted' alert, naming the month, went to each channel
    alert = Alert.objects.get()
    assert alert.kind == "exhausted"
    assert alert.title == "Tiny is exhausted in December: calls are being denied"
    assert len(mailoutbox) == 1
    assert slack_titles(channels) == ["Tiny is exhausted in December: calls are being denied"]


def test_a_closed_window_that_crossed_a_threshold_raises_nothing(tenant, channels, mailoutbox):
    # Given last month's window, which ended at 85 % of its limit and was never alerted
    budget = BudgetFactory(tenant=tenant, name="Monthly", scope="tenant", limit_nano=100)
    window = BudgetWindow.objects.create(
        budget=budget, start=datetime(2026, 10, 1, tzinfo=UTC), end=datetime(2026, 11, 1, tzinfo=UTC), spent_nano=85
    )

    # When it is evaluated in November, by a commit's task or by the beat's sweep
    now = datetime(2026, 11, 1, 0, 30, tzinfo=UTC)
    assert windows_evaluate(window_ids=[window.pk], now=now) == 0
    assert budgets_evaluate(now=now) == 0

    # Then no alert was raised and nobody was told
    assert not Alert.objects.exists()
    assert mailoutbox == []


@pytest.mark.parametrize(
    ("period", "start", "end", "phrase"),
    [
        ("day", datetime(2026, 12, 1, tzinfo=UTC), datetime(2026, 12, 2, tzinfo=UTC), "on Dec 1"),
        ("week", datetime(2026, 11, 30, tzinfo=UTC), datetime(2026, 12, 7, tzinfo=UTC), "in the week of Nov 30"),
        ("month", datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC), "in November"),
    ],
)
def test_threshold_titles_name_their_window(tenant, period, start, end, phrase):
    budget = BudgetFactory(tenant=tenant, name="Ops", scope="tenant", period=period, limit_nano=100)
    window = BudgetWindow.objects.create(budget=budget, start=start, end=end, spent_nano=85)
    assert windows_evaluate(window_ids=[window.pk], now=end - timedelta(hours=1)) == 1
    assert Alert.objects.get().title == f"Ops has used 80% of its limit {phrase}"


def test_channels_only_get_the_kinds_they_chose(tenant, call, mailoutbox):
    services.channel_create(
        tenant=tenant, actor=Actor.system(), name="Only exhaustion", kind="email",
        email_addresses=["ops@acme.test"], alert_kinds=["exhausted"],
    )
    BudgetFactory(tenant=tenant, scope="tenant", limit_nano=2 * CALL_NANO, enforcement="alert")
    call()
    assert Alert.objects.count() == 1
    assert mailoutbox == []


def test_evaluating_again_raises_nothing_new(tenant, channels, call, mailoutbox):
    budget = BudgetFactory(tenant=tenant, scope="tenant", limit_nano=2 * CALL_NANO, enforcement="alert")
    call()
    window = BudgetWindow.objects.get(budget=budget)
    assert windows_evaluate(window_ids=[window.pk]) == 0
    assert len(mailoutbox) == 1


def test_inactive_budgets_stay_quiet(tenant, channels, call, mailoutbox):
    budget = BudgetFactory(tenant=tenant, scope="tenant", limit_nano=2 * CALL_NANO, enforcement="alert")
    call()
    budget.active = False
    budget.save()
    window = BudgetWindow.objects.get(budget=budget)
    BudgetWindow.objects.filter(pk=window.pk).update(spent_nano=10 * CALL_NANO)
    assert windows_evaluate(window_ids=[window.pk]) == 0


def test_windows_of_other_tenants_do_not_alert_this_one(tenant, other_tenant, channels, mailoutbox):
    budget = BudgetFactory(tenant=other_tenant, scope="tenant", limit_nano=100)
    window = BudgetWindow.objects.create(
        budget=budget, start=datetime(2026, 11, 1, tzinfo=UTC), end=datetime(2026, 12, 1, tzinfo=UTC), spent_nano=90
    )
    assert windows_evaluate(window_ids=[window.pk], now=datetime(2026, 11, 2, tzinfo=UTC)) == 1
    assert Alert.objects.get().tenant == other_tenant
    assert mailoutbox == []  # the other tenant has no channels; this tenant's never hear of it


def test_bad_threshold_entries_are_ignored(tenant, mailoutbox):
    budget = BudgetFactory(tenant=tenant, scope="tenant", limit_nano=100, thresholds=[50, "80", None, -5, True])
    start = datetime(2026, 11, 1, tzinfo=UTC)
    window = BudgetWindow.objects.create(budget=budget, start=start, end=start + timedelta(days=30), spent_nano=95)
    assert windows_evaluate(window_ids=[window.pk], now=start + timedelta(days=1)) == 1
    assert Alert.objects.get().threshold == 50


def test_run_budgets_announce_once_a_day_not_once_a_run(tenant, feature, channels, api, mailoutbox, django_capture_on_commit_callbacks):
    # Given a per-run budget of two calls
    BudgetFactory(tenant=tenant, name="Per run", scope="run", period="total", limit_nano=2 * CALL_NANO, enforcement="alert")

    # When three runs each spend half their cap on one day
    with time_machine.travel(datetime(2026, 11, 23, 10, tzinfo=UTC), tick=False):
        for run in ("run-a", "run-b", "run-c"):
            with django_capture_on_commit_callbacks(execute=True):
                hold = api.post("/api/v1/allowances", {**ASK, "run_id": run}, format="json").json()
            with django_capture_on_commit_callbacks(execute=True):
                api.post(f"/api/v1/allowances/{hold['id']}/commit", {"usage": USAGE}, format="json")

    # Then one alert names the first run, and the channels heard once
    alert = Alert.objects.get()
    assert alert.title == "Per run: run run-a has used 50% of its limit"
    assert "not announced separately" in alert.body
    assert len(mailoutbox) == 1

    # And the next day re-arms it
    with time_machine.travel(datetime(2026, 11, 24, 10, tzinfo=UTC), tick=False):
        with django_capture_on_commit_callbacks(execute=True):
            hold = api.post("/api/v1/allowances", {**ASK, "run_id": "run-d"}, format="json").json()
        with django_capture_on_commit_callbacks(execute=True):
            api.post(f"/api/v1/allowances/{hold['id']}/commit", {"usage": USAGE}, format="json")
    assert Alert.objects.count() == 2
    assert len(mailoutbox) == 2


OPUS_CALL = {"input_tokens": 1000, "output_tokens": 1000}  # $0.09 on Opus 4.1 ($15 / $75)


def _commit_as_opus(api, django_capture_on_commit_callbacks, n):
    """Reserve a little Haiku, then commit Opus: spend that no hold of an Opus budget covered."""
    with django_capture_on_commit_callbacks(execute=True):
        hold = api.post("/api/v1/allowances", {**ASK, "model": "claude-haiku-4-5", "max_tokens": 100},
                        format="json").json()
    with django_capture_on_commit_callbacks(execute=True):
        answer = api.post(f"/api/v1/allowances/{hold['id']}/commit",
                          {"model": "claude-opus-4-1", "request_id": f"msg_{n}", "usage": OPUS_CALL}, format="json")
    assert answer.status_code == 200, answer.content
    return answer.json()


def test_spend_past_a_block_limit_raises_overspent_once(
    tenant, feature, channels, api, mailoutbox, django_capture_on_commit_callbacks
):
    # Given an Opus-only block budget of $0.05 for December, with no threshold alerts
    BudgetFactory(tenant=tenant, name="Opus cap", scope="tenant", model_families=["opus"], period="month",
                  limit_nano=50_000_000, enforcement="block", thresholds=[])
    with time_machine.travel(datetime(2026, 12, 10, 9, tzinfo=UTC), tick=False):
        # When two commits of Opus arrive on Haiku holds ($0.09 each: past the cap, spent all the same)
        for n in range(2):
            assert _commit_as_opus(api, django_capture_on_commit_callbacks, n)["off_hold"] is True

    # Then one overspent alert says by how much, and where to find the calls
    alert = Alert.objects.get()
    assert (alert.kind, alert.title) == ("overspent", "Opus cap went past its limit in December")
    assert alert.body.startswith("$0.0900 spent against a limit of $0.0500, $0.0400 over — 01 Dec – 31 Dec 2026 (month).")
    assert "off_hold" in alert.body
    assert alert.data["over_nano"] == 40_000_000
    # reaching each channel once
    assert [m.subject for m in mailoutbox] == ["[Comptroller] Opus cap went past its limit in December"]
    assert slack_titles(channels) == ["Opus cap went past its limit in December"]


def test_an_alert_only_budget_past_its_limit_is_not_overspent(
    tenant, feature, channels, api, mailoutbox, django_capture_on_commit_callbacks
):
    # Given an alert-only budget: going past its limit is what it allows (its thresholds say so)
    BudgetFactory(tenant=tenant, name="Watch", scope="tenant", model_families=["opus"], period="month",
                  limit_nano=50_000_000, enforcement="alert", thresholds=[100])
    with time_machine.travel(datetime(2026, 12, 10, 9, tzinfo=UTC), tick=False):
        _commit_as_opus(api, django_capture_on_commit_callbacks, 0)
    assert list(Alert.objects.values_list("kind", "threshold")) == [("threshold", 100)]


def test_the_beat_sweep_raises_an_overspent_alert_the_commit_path_missed(tenant, channels):
    # Given a block window already past its limit (a worker crashed before evaluating it)
    budget = BudgetFactory(tenant=tenant, name="Tiny", scope="tenant", limit_nano=CALL_NANO, enforcement="block",
                           thresholds=[])
    with time_machine.travel(datetime(2026, 12, 1, 10, tzinfo=UTC), tick=False):
        BudgetWindow.objects.create(budget=budget, start=datetime(2026, 12, 1, tzinfo=UTC),
                                    end=datetime(2027, 1, 1, tzinfo=UTC), spent_nano=CALL_NANO + 1)
        # When the sweep runs twice
        assert budgets_evaluate() == 1
        assert budgets_evaluate() == 0
    # Then one alert
    assert Alert.objects.get().kind == "overspent"
