"""The provider sync, run for real against a local stub of Anthropic's Usage and Cost Admin API."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from governance.audit import Actor
from governance.notify.models import Alert
from usage.models import NANO
from usage.pricing import TokenUsage, usage_cost_nano
from usage.provider import services
from usage.provider.models import ConnectionStatus, ProviderCostBucket, ProviderUsageBucket
from usage.provider.stub import Canned, StubReports, cost_row, usage_row

DAY = datetime(2026, 11, 20, tzinfo=UTC)


def hour(n: int) -> datetime:
    return DAY + timedelta(hours=n)


@pytest.fixture
def stub(httpserver, settings):
    reports = StubReports()
    settings.ANTHROPIC_API_BASE_URL = reports.serve(httpserver)
    return reports


@pytest.fixture
def connection(tenant, stub):
    return services.provider_connection_save(tenant=tenant, actor=Actor.system(), admin_key=stub.api_key)


@pytest.fixture
def sleeps():
    return []


def sync_usage(connection, sleeps, start=DAY, end=DAY + timedelta(days=1)):
    client = services.connection_client(connection, sleep=sleeps.append)
    return services.provider_usage_sync(connection=connection, start=start, end=end, client=client)


def sync_cost(connection, sleeps, start=DAY, end=DAY + timedelta(days=1)):
    client = services.connection_client(connection, sleep=sleeps.append)
    return services.provider_cost_sync(connection=connection, start=start, end=end, client=client)


def usage_totals(tenant) -> tuple[int, int, int]:
    rows = list(ProviderUsageBucket.objects.filter(tenant=tenant))
    return len(rows), sum(r.output_tokens for r in rows), sum(r.cost_nano or 0 for r in rows)


# --- pagination, idempotence, corrections ------------------------------------------------------


def test_three_pages_are_followed_with_identical_parameters(stub, connection, sleeps, tenant):
    # given 24 hourly buckets with two results each, served 8 buckets a page
    for h in range(24):
        stub.usage[hour(h)] = [
            usage_row(output_tokens=100, api_key_id="apikey_a"),
            usage_row(output_tokens=50, api_key_id="apikey_b"),
        ]
    stub.page_size = 8

    # when the day is synced
    result = sync_usage(connection, sleeps)

    # then all three pages were read, every row is stored once and the connection is healthy
    assert result.ok, result.error
    assert len(stub.requests) == 3
    first, *rest = (r["args"] for r in stub.requests)
    assert "page" not in first
    for args in rest:
        assert {k: v for k, v in args.items() if k != "page"} == first
    assert first["group_by[]"] == [
        "model", "workspace_id", "api_key_id", "service_tier", "context_window", "inference_geo"
    ]
    assert first["bucket_width"] == ["1h"]
    assert usage_totals(tenant)[:2] == (48, 24 * 150)
    connection.refresh_from_db()
    assert connection.status == ConnectionStatus.OK
    assert connection.usage_synced_until == DAY + timedelta(days=1)


def test_rerun_over_the_same_window_adds_nothing(stub, connection, sleeps, tenant):
    # given a synced day
    for h in range(24):
        stub.usage[hour(h)] = [usage_row(output_tokens=1000, uncached_input_tokens=5000)]
    sync_usage(connection, sleeps)
    before = usage_totals(tenant)

    written = set(ProviderUsageBucket.objects.values_list("pk", "synced_at"))

    # when it is synced again, and once more with an overlapping window
    sync_usage(connection, sleeps)
    sync_usage(connection, sleeps, start=hour(12), end=hour(36))

    # then nothing is counted twice, and unchanged rows were not even rewritten
    assert usage_totals(tenant) == before
    assert before[0] == 24
    assert set(ProviderUsageBucket.objects.values_list("pk", "synced_at")) == written


def test_late_correction_replaces_the_old_value(stub, connection, sleeps, tenant):
    # given a synced bucket
    stub.usage[hour(3)] = [
        usage_row(output_tokens=1000, api_key_id="apikey_a"),
        usage_row(output_tokens=7, api_key_id="apikey_gone"),
    ]
    sync_usage(connection, sleeps)

    # when the provider revises it (more tokens, and one row no longer reported)
    stub.usage[hour(3)] = [usage_row(output_tokens=1500, api_key_id="apikey_a")]
    sync_usage(connection, sleeps, start=hour(0), end=hour(6))

    # then the stored bucket holds the new value only
    rows = list(ProviderUsageBucket.objects.filter(tenant=tenant))
    assert [(r.api_key_id, r.output_tokens) for r in rows] == [("apikey_a", 1500)]
    assert rows[0].cost_nano == 1500 * 15 * NANO // 1_000_000


def test_rows_are_priced_by_our_table_including_long_context(stub, connection, sleeps, tenant):
    # given a normal and a long-context row of Sonnet 4.5 in one hour
    normal = dict(uncached_input_tokens=150_000, output_tokens=2_000, cache_write_5m=500, cache_write_1h=1_000,
                  cache_read=200, web_search_requests=3)
    stub.usage[hour(0)] = [
        usage_row(**normal),
        usage_row(uncached_input_tokens=300_000, output_tokens=1_000, context_window="200k-1M"),
    ]

    sync_usage(connection, sleeps)

    rows = {r.context_window: r for r in ProviderUsageBucket.objects.filter(tenant=tenant)}
    expected = usage_cost_nano(
        "claude-sonnet-4-5-20250929",
        TokenUsage(input_tokens=150_000, output_tokens=2_000, cache_write_5m_tokens=500,
                   cache_write_1h_tokens=1_000, cache_read_tokens=200, web_search_requests=3),
    )
    assert rows["0-200k"].cost_nano == expected
    # long context: $6 in, $22.50 out per MTok
    assert rows["200k-1M"].cost_nano == (300_000 * 6 + 1_000 * 22_500_000 // 1_000_000) * 1000
    assert rows["0-200k"].canonical_model == "claude-sonnet-4-5-20250929"


def test_null_dimensions_are_stored_and_kept_apart(stub, connection, sleeps, tenant):
    # given rows for the default workspace, Console use, and an ungrouped tier
    stub.usage[hour(1)] = [
        usage_row(output_tokens=10, workspace_id=None, api_key_id=None, service_tier=None,
                  context_window=None, inference_geo=None),
        usage_row(output_tokens=20, workspace_id="wrkspc_1", api_key_id="apikey_1"),
        usage_row(model=None, output_tokens=30),
    ]

    sync_usage(connection, sleeps)
    sync_usage(connection, sleeps)

    rows = ProviderUsageBucket.objects.filter(tenant=tenant).order_by("output_tokens")
    assert [(r.workspace_id, r.api_key_id, r.service_tier, r.output_tokens) for r in rows] == [
        ("", "", "", 10), ("wrkspc_1", "apikey_1", "standard", 20), ("", "", "standard", 30)
    ]
    # a null tier is priced as standard; a null model cannot be priced
    assert rows[0].cost_nano == 10 * 15 * 1000
    assert rows[2].cost_nano is None


def test_usage_is_attributed_to_mapped_features(stub, tenant, sleeps):
    from tests.factories import FeatureFactory

    support = FeatureFactory(tenant=tenant, key="support")
    search = FeatureFactory(tenant=tenant, key="search")
    connection = services.provider_connection_save(
        tenant=tenant, actor=Actor.system(), admin_key=stub.api_key,
        feature_mapping={"api_keys": {"apikey_s": "support"}, "workspaces": {"wrkspc_x": "search"}},
    )
    stub.usage[hour(0)] = [
        usage_row(output_tokens=1, api_key_id="apikey_s", workspace_id="wrkspc_x"),
        usage_row(output_tokens=2, api_key_id="apikey_other", workspace_id="wrkspc_x"),
        usage_row(output_tokens=3, api_key_id="apikey_other"),
    ]

    sync_usage(connection, sleeps)

    features = {r.output_tokens: r.feature for r in ProviderUsageBucket.objects.filter(tenant=tenant)}
    assert features == {1: support, 2: search, 3: None}

    # and a new mapping re-attributes what is already stored
    services.provider_connection_save(
        tenant=tenant, actor=Actor.system(), feature_mapping={"api_keys": {"apikey_other": "support"}}
    )
    features = {r.output_tokens: r.feature for r in ProviderUsageBucket.objects.filter(tenant=tenant)}
    assert features == {1: None, 2: support, 3: support}


def test_workspace_filter_limits_both_reports(stub, tenant, sleeps):
    # given a connection limited to two workspaces
    connection = services.provider_connection_save(
        tenant=tenant, actor=Actor.system(), admin_key=stub.api_key, workspace_ids=["wrkspc_a", "wrkspc_b"]
    )
    stub.cost[DAY] = [cost_row(amount="1", workspace_id="wrkspc_a"), cost_row(amount="2", workspace_id="wrkspc_z"),
                      cost_row(amount="4", workspace_id=None)]

    sync_usage(connection, sleeps)
    sync_cost(connection, sleeps)

    # then the usage report is asked for those workspaces (a documented filter), and the cost
    # report (which documents none) is filtered by its workspace_id grouping
    usage_request, cost_request = (r["args"] for r in stub.requests)
    assert usage_request["workspace_ids[]"] == ["wrkspc_a", "wrkspc_b"]
    assert "workspace_ids[]" not in cost_request
    assert list(ProviderCostBucket.objects.values_list("workspace_id", flat=True)) == ["wrkspc_a"]


# --- failures --------------------------------------------------------------------------------


def test_429_honours_retry_after_then_succeeds(stub, connection, sleeps, tenant):
    stub.usage[hour(0)] = [usage_row(output_tokens=5)]
    stub.script = [Canned(429, {"type": "error", "error": {"type": "rate_limit_error", "message": "slow"}},
                          {"retry-after": "7"})]

    result = sync_usage(connection, sleeps)

    assert result.ok, result.error
    assert sleeps == [7.0]
    assert usage_totals(tenant)[:2] == (1, 5)


def test_a_retry_after_longer_than_a_run_waits_for_the_next_run(stub, connection, sleeps, tenant):
    stub.script = [Canned(429, {"type": "error", "error": {"type": "rate_limit_error", "message": "slow"}},
                          {"retry-after": "600"})]

    result = sync_usage(connection, sleeps)

    assert not result.ok and "retry after 600s" in result.error
    assert sleeps == []  # it neither sleeps ten minutes nor retries early
    connection.refresh_from_db()
    assert connection.status == ConnectionStatus.ERROR


def test_an_unusable_base_url_is_permanent(tenant, sleeps, settings):
    settings.ANTHROPIC_API_BASE_URL = "ftp://example.invalid"
    connection = services.provider_connection_save(tenant=tenant, actor=Actor.system(), admin_key="sk-ant-admin01-x")

    result = sync_usage(connection, sleeps)

    assert not result.ok and sleeps == []
    connection.refresh_from_db()
    assert connection.status == ConnectionStatus.FAILING


def test_500_is_retried_with_backoff_then_succeeds(stub, connection, sleeps, tenant):
    stub.usage[hour(0)] = [usage_row(output_tokens=5)]
    stub.script = [Canned(500, {"type": "error", "error": {"type": "api_error", "message": "oops"}}),
                   Canned(503, "upstream unavailable")]

    result = sync_usage(connection, sleeps)

    assert result.ok, result.error
    assert sleeps == [1.0, 2.0]
    assert usage_totals(tenant)[:2] == (1, 5)
    connection.refresh_from_db()
    assert connection.status == ConnectionStatus.OK


def test_persistent_5xx_is_recorded_as_a_retrying_error(stub, connection, sleeps, tenant):
    stub.script = [Canned(502, "bad gateway")] * 5

    result = sync_usage(connection, sleeps)

    assert not result.ok
    assert len(sleeps) == 4
    connection.refresh_from_db()
    assert connection.status == ConnectionStatus.ERROR
    assert "HTTP 502" in connection.last_error
    # a fresh connection's first failure is not yet an outage worth an alert
    assert not Alert.objects.filter(tenant=tenant).exists()


def test_401_marks_the_connection_failing_and_raises_one_alert(stub, tenant, sleeps):
    connection = services.provider_connection_save(
        tenant=tenant, actor=Actor.system(), admin_key="sk-ant-admin01-revoked-9999"
    )

    first = sync_usage(connection, sleeps)
    second = sync_cost(connection, sleeps)

    assert not first.ok and not second.ok
    assert sleeps == []  # a rejected key is not retried
    connection.refresh_from_db()
    assert connection.status == ConnectionStatus.FAILING
    assert "401" in connection.last_error
    assert "revoked-9999" not in connection.last_error
    alerts = list(Alert.objects.filter(tenant=tenant))
    assert [a.kind for a in alerts] == ["sync_failing"]
    assert "admin key" in alerts[0].title
    assert "revoked-9999" not in alerts[0].body


def test_403_is_permanent_too(stub, connection, sleeps, tenant):
    stub.script = [Canned(403, {"type": "error", "error": {"type": "permission_error", "message": "no"}})]
    sync_usage(connection, sleeps)
    connection.refresh_from_db()
    assert connection.status == ConnectionStatus.FAILING
    assert Alert.objects.filter(tenant=tenant, kind="sync_failing").count() == 1


@pytest.mark.parametrize(
    "body",
    [
        "<html>not json</html>",
        [1, 2],
        {"data": "nope"},
        {"data": [{"starting_at": "2026-11-20T00:00:00Z", "results": "x"}]},
        {"data": [{"starting_at": "yesterday", "results": [{}]}], "has_more": False},
        {"data": [{"starting_at": "2026-11-20T00:00:00Z", "results": [{"output_tokens": -1}]}]},
        {"data": [{"starting_at": "2026-11-20T00:00:00Z", "results": [{"output_tokens": "12"}]}]},
        {"data": [{"starting_at": "2026-11-20T00:00:00Z", "results": [{"model": 7}]}]},
        {"data": [], "has_more": True},
    ],
)
def test_malformed_response_is_an_error_recorded_not_a_crash(stub, connection, sleeps, tenant, body):
    stub.script = [Canned(200, body)]

    result = sync_usage(connection, sleeps)

    assert not result.ok
    assert "Malformed" in result.error
    connection.refresh_from_db()
    assert connection.status == ConnectionStatus.ERROR
    assert "Malformed" in connection.last_error
    assert not ProviderUsageBucket.objects.filter(tenant=tenant).exists()


def test_transient_failures_alert_once_the_data_goes_stale(stub, connection, sleeps, tenant):
    # given a connection whose last good sync was three hours ago
    stub.usage[hour(0)] = [usage_row(output_tokens=5)]
    assert sync_usage(connection, sleeps).ok
    connection.usage_synced_at = connection.usage_synced_at - timedelta(hours=3)
    connection.save()

    # when the provider keeps failing
    stub.script = [Canned(503, "down")] * 10
    sync_usage(connection, sleeps)
    sync_usage(connection, sleeps)

    # then the connection is retrying, and one sync_failing alert says so
    connection.refresh_from_db()
    assert connection.status == ConnectionStatus.ERROR
    assert Alert.objects.filter(tenant=tenant, kind="sync_failing").count() == 1


def test_a_new_key_resets_a_failing_connection(stub, tenant, sleeps):
    connection = services.provider_connection_save(tenant=tenant, actor=Actor.system(), admin_key="sk-ant-bad-key")
    sync_usage(connection, sleeps)
    connection = services.provider_connection_save(tenant=tenant, actor=Actor.system(), admin_key=stub.api_key)
    assert connection.status == ConnectionStatus.PENDING
    assert sync_usage(connection, sleeps).ok
    connection.refresh_from_db()
    assert connection.status == ConnectionStatus.OK
    assert connection.last_error == ""


# --- cost ------------------------------------------------------------------------------------


def test_cost_cents_with_fractions_become_exact_dollars(stub, connection, sleeps, tenant):
    stub.cost[DAY] = [
        cost_row(amount="123.45", token_type="uncached_input_tokens"),
        cost_row(amount="0.0000001", token_type="output_tokens", description="Claude Sonnet 4.5 Usage - Output"),
        cost_row(amount="1250", workspace_id=None, model=None, description=None, cost_type=None,
                 service_tier=None, context_window=None, token_type=None),
    ]

    result = sync_cost(connection, sleeps)

    assert result.ok, result.error
    assert stub.requests[0]["args"]["group_by[]"] == ["workspace_id", "description"]
    assert stub.requests[0]["args"]["bucket_width"] == ["1d"]
    amounts = sorted(ProviderCostBucket.objects.filter(tenant=tenant).values_list("amount_nano", flat=True))
    # "123.45" cents is $1.2345; "0.0000001" cents is one nano-dollar; "1250" cents is $12.50
    assert amounts == [1, 1_234_500_000, 12_500_000_000]


def test_cost_rerun_and_correction_replace_rows(stub, connection, sleeps, tenant):
    stub.cost[DAY] = [cost_row(amount="100")]
    stub.cost[DAY + timedelta(days=1)] = [cost_row(amount="50")]
    sync_cost(connection, sleeps, end=DAY + timedelta(days=2))
    sync_cost(connection, sleeps, end=DAY + timedelta(days=2))
    stub.cost[DAY] = [cost_row(amount="180.5")]
    sync_cost(connection, sleeps, end=DAY + timedelta(days=2))

    rows = dict(ProviderCostBucket.objects.filter(tenant=tenant).values_list("day", "amount_nano"))
    assert rows == {DAY.date(): 1_805_000_000, (DAY + timedelta(days=1)).date(): 500_000_000}


def test_bad_cost_amount_is_malformed(stub, connection, sleeps, tenant):
    stub.cost[DAY] = [cost_row(amount="12,50")]
    result = sync_cost(connection, sleeps)
    assert not result.ok and "amount" in result.error
    assert not ProviderCostBucket.objects.exists()


# --- windows the beat reads --------------------------------------------------------------------


def test_default_windows_reread_trailing_hours_and_days(connection):
    now = datetime(2026, 11, 24, 10, 17, tzinfo=UTC)
    connection.usage_synced_until = datetime(2026, 11, 24, 10, 12, tzinfo=UTC)
    connection.cost_synced_until = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)

    assert services.usage_window(connection, now=now) == (
        datetime(2026, 11, 24, 4, tzinfo=UTC), datetime(2026, 11, 24, 11, tzinfo=UTC)
    )
    start, end = services.cost_window(connection, now=now)
    assert start <= datetime(2026, 11, 21, tzinfo=UTC)
    assert end == datetime(2026, 11, 25, tzinfo=UTC)


def test_first_sync_looks_back_a_week(connection):
    now = datetime(2026, 11, 24, 10, 17, tzinfo=UTC)
    assert services.usage_window(connection, now=now)[0] == datetime(2026, 11, 17, 10, tzinfo=UTC)


def test_beat_tasks_sync_every_due_connection(stub, connection, settings, tenant):
    from usage.provider import tasks

    stub.usage[hour(0)] = [usage_row(output_tokens=1)]
    import time_machine

    with time_machine.travel(DAY + timedelta(hours=2), tick=False):
        tasks.sync_usage_all.delay()
        tasks.sync_cost_all.delay()
    assert {r["path"].rsplit("/", 1)[-1] for r in stub.requests} == {"messages", "cost_report"}
    assert ProviderUsageBucket.objects.filter(tenant=tenant).count() == 1


def test_failing_connections_are_retried_hourly_not_every_run(connection):
    from usage.provider.selectors import connection_ids_due

    now = datetime(2026, 11, 24, 10, tzinfo=UTC)
    connection.status = ConnectionStatus.FAILING
    connection.last_attempt_at = now - timedelta(minutes=10)
    connection.save()
    assert connection_ids_due(now=now) == []
    assert connection_ids_due(now=now + timedelta(hours=1)) == [connection.pk]


# --- backfill ----------------------------------------------------------------------------------


def test_backfill_command_reads_a_date_range(stub, connection, tenant, capsys):
    for d in range(3):
        stub.usage[DAY + timedelta(days=d, hours=5)] = [usage_row(output_tokens=10)]
        stub.cost[DAY + timedelta(days=d)] = [cost_row(amount="1")]

    call_command("sync_backfill", "acme", "--start", "2026-11-20", "--end", "2026-11-22")

    out = capsys.readouterr().out
    assert "usage: 72 buckets, 3 rows" in out
    assert "cost: 3 buckets, 3 rows" in out
    assert "reconciled 3 days" in out
    assert ProviderUsageBucket.objects.filter(tenant=tenant).count() == 3


def test_backfill_command_reports_bad_input(connection):
    with pytest.raises(CommandError, match="not a date"):
        call_command("sync_backfill", "acme", "--start", "20-11-2026")
    with pytest.raises(CommandError, match="No tenant"):
        call_command("sync_backfill", "nobody", "--start", "2026-11-20")
