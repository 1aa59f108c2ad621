"""End to end: the real anthropic SDK through governed(...) against a live Comptroller.

The Messages API is a local stub (tests/client_stubs.py) that answers like the
real one (JSON messages with usage, SSE streams, count_tokens, batches);
Comptroller is this project served by pytest-django's live_server over real
HTTP. The ledger must show exactly what each call consumed.
"""

from __future__ import annotations

import asyncio
import math
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from types import SimpleNamespace
from urllib.parse import urlsplit

import anthropic
import pytest
from comptroller_client import (
    AsyncComptroller,
    BudgetExceeded,
    Comptroller,
    ComptrollerUnavailable,
    governed,
)
from pytest_httpserver import HTTPServer

from budgets.models import Budget, BudgetWindow, Hold
from governance.audit import Actor
from governance.models import KeyRole
from governance.services import api_key_create
from tests.client_stubs import MessagesStub, TcpRelay
from tests.factories import FeatureFactory, TenantFactory
from usage.models import NANO, UsageEvent

pytestmark = pytest.mark.django_db(transaction=True)

ASK = {"role": "user", "content": "How should I think about a monthly budget for my support bot?"}
# Sonnet 4.5 in nano-USD per token: $3 / $15 per million.
SONNET_IN, SONNET_OUT = 3_000, 15_000


def run_async(scenario):
    """Run the coroutine in a thread of its own: a loop left running by another test cannot refuse it."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(scenario())).result()


@pytest.fixture
def shop(live_server):
    tenant = TenantFactory(slug="shop")
    support = FeatureFactory(tenant=tenant, key="support-bot", default_model="claude-sonnet-4-5",
                             fail_mode="closed", max_tokens_cap=4096)
    digest = FeatureFactory(tenant=tenant, key="digest", default_model="claude-haiku-4-5",
                            fail_mode="open", interactive=False)
    budget = Budget.objects.create(tenant=tenant, name="Support monthly", scope="feature", feature=support,
                                   period="month", limit_nano=10 * NANO, enforcement="block")
    _, secret = api_key_create(tenant=tenant, actor=Actor.system(), name="svc", role=KeyRole.SERVICE)
    return SimpleNamespace(tenant=tenant, support=support, digest=digest, budget=budget, secret=secret,
                           url=live_server.url)


@pytest.fixture
def messages_api():
    server = HTTPServer()
    server.start()
    yield MessagesStub(server).install()
    server.clear()
    server.stop()


@pytest.fixture
def relay(shop):
    parts = urlsplit(shop.url)
    relay = TcpRelay(parts.hostname, parts.port).start()
    yield relay
    relay.stop()


def sdk(stub: MessagesStub) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key="sk-ant-test", base_url=stub.base_url, max_retries=0)


def comptroller(url: str, secret: str, **options) -> Comptroller:
    # No background flusher: a test's spool is delivered by the calls the test makes.
    return Comptroller(url, secret, backoff=0, breaker_seconds=0, flush_interval=0, **options)


def event_for(message_id: str) -> UsageEvent:
    return UsageEvent.objects.get(request_id=message_id)


def test_create_commits_the_exact_usage_of_the_call(shop, messages_api):
    client = governed(sdk(messages_api), comptroller(shop.url, shop.secret), feature="support-bot")

    message = client.messages.create(model="claude-sonnet-4-5", max_tokens=512, messages=[ASK])

    event = event_for(message.id)
    assert event.feature == shop.support and event.model == "claude-sonnet-4-5-20250929"
    assert (event.input_tokens, event.output_tokens) == (message.usage.input_tokens, message.usage.output_tokens)
    assert event.cost_nano == message.usage.input_tokens * SONNET_IN + message.usage.output_tokens * SONNET_OUT
    assert event.stop_reason == "end_turn" and event.streamed is False and event.latency_ms is not None
    assert Hold.objects.get(usage_event=event).state == "committed"
    window = BudgetWindow.objects.get(budget=shop.budget)
    assert (window.spent_nano, window.reserved_nano) == (event.cost_nano, 0)
    # The call carried what the allowance granted.
    assert messages_api.model_calls[0].body["max_tokens"] == 512


def test_the_feature_cap_clamps_the_call_and_count_tokens_sizes_the_hold(shop, messages_api):
    client = governed(sdk(messages_api), comptroller(shop.url, shop.secret), feature="support-bot",
                      count_tokens=True)

    message = client.messages.create(model="claude-sonnet-4-5", max_tokens=64_000, messages=[ASK])

    assert messages_api.model_calls[0].body["max_tokens"] == 4096
    hold = Hold.objects.get(usage_event__request_id=message.id)
    assert hold.clamped and hold.max_tokens == 4096
    assert hold.input_tokens == messages_api.count_input({"messages": [ASK]})
    assert [c.path for c in messages_api.calls][:1] == ["/v1/messages/count_tokens"]


def test_a_denied_allowance_raises_and_makes_no_model_call(shop, messages_api):
    Budget.objects.filter(pk=shop.budget.pk).update(limit_nano=1_000)  # $0.000001: nothing fits
    client = governed(sdk(messages_api), comptroller(shop.url, shop.secret), feature="support-bot")

    with pytest.raises(BudgetExceeded) as caught:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=512, messages=[ASK])

    assert caught.value.budget.name == "Support monthly" and caught.value.budget.binding
    now = datetime.now(UTC)
    next_month = datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=UTC)
    assert caught.value.retry_after == next_month
    assert messages_api.model_calls == []
    assert not UsageEvent.objects.exists()


def test_a_failed_model_call_releases_its_hold(shop, messages_api):
    client = governed(sdk(messages_api), comptroller(shop.url, shop.secret), feature="support-bot")

    with pytest.raises(anthropic.InternalServerError):
        client.messages.create(model="claude-sonnet-4-5", max_tokens=512,
                               messages=[{"role": "user", "content": "FAIL_CALL"}])

    assert list(Hold.objects.values_list("state", flat=True)) == ["released"]
    assert BudgetWindow.objects.get(budget=shop.budget).reserved_nano == 0
    assert not UsageEvent.objects.exists()


def test_a_stream_commits_its_final_usage_with_ttft_and_latency(shop, messages_api):
    client = governed(sdk(messages_api), comptroller(shop.url, shop.secret), feature="support-bot")

    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=512, messages=[ASK]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()

    assert text == messages_api.reply
    event = event_for(final.id)
    assert (event.input_tokens, event.output_tokens) == (final.usage.input_tokens, final.usage.output_tokens)
    assert event.output_tokens == len(messages_api.reply.split(" "))
    assert event.streamed is True and event.stop_reason == "end_turn"
    assert event.ttft_ms is not None and event.latency_ms >= event.ttft_ms
    assert "usage_estimated" not in event.metadata


def test_a_stream_closed_halfway_commits_the_partial_usage(shop, messages_api):
    client = governed(sdk(messages_api), comptroller(shop.url, shop.secret), feature="support-bot")

    received = []
    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=512, messages=[ASK]) as stream:
        for chunk in stream.text_stream:
            received.append(chunk)
            if len(received) == 6:
                break
        message_id = stream.current_message_snapshot.id

    # message_start's usage, with output raised to what was received (documented in governed.py)
    event = event_for(message_id)
    expected_output = max(len(received), math.ceil(len("".join(received)) / 3.5))
    assert event.input_tokens == messages_api.count_input({"messages": [ASK]})
    assert event.output_tokens == expected_output < len(messages_api.reply.split(" "))
    assert event.cost_nano == event.input_tokens * SONNET_IN + expected_output * SONNET_OUT
    assert event.streamed is True and event.stop_reason == ""
    assert event.metadata["usage_estimated"] == "output"
    assert BudgetWindow.objects.get(budget=shop.budget).reserved_nano == 0


def test_a_stream_closed_before_message_start_charges_the_input_estimate(shop, messages_api):
    client = governed(sdk(messages_api), comptroller(shop.url, shop.secret), feature="support-bot")

    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=512, messages=[ASK]):
        pass  # the prompt was sent; nothing was read

    hold = Hold.objects.get()
    event = hold.usage_event
    assert hold.state == "committed" and (event.input_tokens, event.output_tokens) == (hold.input_tokens, 0)
    assert event.metadata["usage_estimated"] == "input"


def test_a_stream_that_fails_before_message_start_releases_its_hold(shop, messages_api):
    client = governed(sdk(messages_api), comptroller(shop.url, shop.secret), feature="support-bot")

    with pytest.raises(anthropic.APIStatusError), client.messages.stream(
        model="claude-sonnet-4-5", max_tokens=512, messages=[{"role": "user", "content": "OVERLOAD_STREAM"}]
    ) as stream:
        stream.until_done()

    assert Hold.objects.get().state == "released" and not UsageEvent.objects.exists()


def test_a_raw_stream_closed_early_commits_too(shop, messages_api):
    client = governed(sdk(messages_api), comptroller(shop.url, shop.secret), feature="support-bot")

    stream = client.messages.create(model="claude-sonnet-4-5", max_tokens=512, messages=[ASK], stream=True)
    events = [next(stream) for _ in range(4)]  # message_start, block start, two deltas
    stream.close()

    event = event_for(events[0].message.id)
    assert event.output_tokens == max(2, math.ceil(len(events[2].delta.text + events[3].delta.text) / 3.5))


def test_down_and_fail_closed_raises_without_calling_the_model(shop, messages_api, relay):
    client = governed(sdk(messages_api), comptroller(relay.url, shop.secret), feature="support-bot")
    client.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=[ASK])  # learns: fails closed
    relay.stop()

    with pytest.raises(ComptrollerUnavailable) as caught:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=[ASK])

    assert "fails closed" in str(caught.value) and "was not made" in str(caught.value)
    assert len(messages_api.model_calls) == 1


def test_down_and_fail_open_calls_the_model_and_reports_the_usage_when_back(shop, messages_api, relay):
    cpt = comptroller(relay.url, shop.secret)
    client = governed(sdk(messages_api), cpt, feature="digest")
    client.messages.create(model="claude-haiku-4-5", max_tokens=64, messages=[ASK])  # learns: fails open
    relay.stop()

    offline = client.messages.create(model="claude-haiku-4-5", max_tokens=64, messages=[ASK])

    assert offline.content[0].text and len(messages_api.model_calls) == 2
    assert not UsageEvent.objects.filter(request_id=offline.id).exists()
    assert len(cpt.spool) == 1

    relay.start()
    client.messages.create(model="claude-haiku-4-5", max_tokens=64, messages=[ASK])

    assert len(cpt.spool) == 0
    event = event_for(offline.id)
    assert (event.input_tokens, event.output_tokens) == (offline.usage.input_tokens, offline.usage.output_tokens)
    assert event.feature == shop.digest and not Hold.objects.filter(usage_event=event).exists()
    assert event.metadata.get("comptroller_offline") is True
    assert UsageEvent.objects.filter(feature=shop.digest).count() == 3


def test_batches_reserve_at_the_batch_tier_and_report_succeeded_results(shop, messages_api):
    client = governed(sdk(messages_api), comptroller(shop.url, shop.secret), feature="digest")
    requests = [
        {"custom_id": f"ticket-{n}", "params": {"model": "claude-haiku-4-5", "max_tokens": 256,
                                               "messages": [{"role": "user", "content": f"Summarise ticket {n}"}]}}
        for n in range(3)
    ] + [{"custom_id": "ticket-fail", "params": {"model": "claude-haiku-4-5", "max_tokens": 256,
                                                 "messages": [ASK]}}]

    batch = client.messages.batches.create(requests=requests)
    hold = Hold.objects.get()
    assert (hold.service_tier, hold.state, hold.max_tokens) == ("batch", "held", 4 * 256)

    report = client.messages.batches.report_results(batch.id)

    assert (report.succeeded, report.errored) == (3, 1)
    events = UsageEvent.objects.order_by("metadata__custom_id")
    assert [e.metadata["custom_id"] for e in events] == ["ticket-0", "ticket-1", "ticket-2"]
    results = {r["custom_id"]: r["result"]["message"] for r in messages_api.batches[batch.id]["results"]
               if r["result"]["type"] == "succeeded"}
    for event in events:
        usage = results[event.metadata["custom_id"]]["usage"]
        assert event.service_tier == "batch" and event.request_id == results[event.metadata["custom_id"]]["id"]
        assert (event.input_tokens, event.output_tokens) == (usage["input_tokens"], usage["output_tokens"])
        # Haiku 4.5 at half price: $0.50 / $2.50 per million.
        assert event.cost_nano == usage["input_tokens"] * 500 + usage["output_tokens"] * 2_500
    hold.refresh_from_db()
    assert hold.state == "released"


def test_hold_context_commits_through_the_live_server(shop):
    client = comptroller(shop.url, shop.secret)
    usage = {"input_tokens": 1000, "output_tokens": 500}

    with client.hold("support-bot", "claude-sonnet-4-5", 1000, 1024) as hold:
        hold.attach(usage, request_id="msg_manual", latency_ms=1200)

    assert hold.result.cost_usd is not None
    assert event_for("msg_manual").cost_nano == 1000 * SONNET_IN + 500 * SONNET_OUT  # $0.0105


def test_the_async_client_governs_create_and_stream(shop, messages_api):
    async def scenario():
        sdk_async = anthropic.AsyncAnthropic(api_key="sk-ant-test", base_url=messages_api.base_url, max_retries=0)
        async with AsyncComptroller(shop.url, shop.secret, backoff=0) as cpt:
            client = governed(sdk_async, cpt, feature="support-bot")
            message = await client.messages.create(model="claude-sonnet-4-5", max_tokens=256, messages=[ASK])
            async with client.messages.stream(model="claude-sonnet-4-5", max_tokens=256, messages=[ASK]) as s:
                final = await s.get_final_message()
        return message, final

    message, final = run_async(scenario)

    assert event_for(message.id).output_tokens == message.usage.output_tokens
    streamed = event_for(final.id)
    assert streamed.streamed is True and streamed.output_tokens == final.usage.output_tokens


def test_batch_holds_stay_within_the_feature_cap(shop, messages_api):
    client = governed(sdk(messages_api), comptroller(shop.url, shop.secret), feature="support-bot")
    params = {"model": "claude-sonnet-4-5", "messages": [ASK]}
    requests = [{"custom_id": f"c-{n}", "params": {**params, "max_tokens": tokens}}
                for n, tokens in enumerate([2048, 2048, 2048, 8000])]

    client.messages.batches.create(requests=requests)

    # Each hold's max_tokens is the sum of its requests', so none is clamped below its worst case.
    holds = sorted(Hold.objects.values_list("max_tokens", "clamped", "service_tier"))
    assert holds == [(2048, False, "batch"), (4096, False, "batch"), (4096, False, "batch")]
    sent = messages_api.batches[next(iter(messages_api.batches))]
    assert sent["batch"]["request_counts"]["succeeded"] == 4
    assert [c.body["requests"][3]["params"]["max_tokens"] for c in messages_api.model_calls] == [4096]


def test_the_async_client_governs_batches(shop, messages_api):
    async def scenario():
        sdk_async = anthropic.AsyncAnthropic(api_key="sk-ant-test", base_url=messages_api.base_url, max_retries=0)
        async with AsyncComptroller(shop.url, shop.secret, backoff=0) as cpt:
            client = governed(sdk_async, cpt, feature="digest")
            batch = await client.messages.batches.create(requests=[
                {"custom_id": "a", "params": {"model": "claude-haiku-4-5", "max_tokens": 100, "messages": [ASK]}},
            ])
            return await client.messages.batches.report_results(batch.id)

    report = run_async(scenario)

    assert report.succeeded == 1 and report.records[0].status == "recorded"
    assert UsageEvent.objects.get().service_tier == "batch"
    assert Hold.objects.get().state == "released"


def test_a_downgrade_budget_moves_the_call_to_the_fallback_model(shop, messages_api):
    shop.support.fallback_models = ["claude-haiku-4-5"]
    shop.support.save()
    Budget.objects.create(tenant=shop.tenant, name="Support daily", scope="feature", feature=shop.support,
                          period="day", limit_nano=5_000_000, enforcement="downgrade")  # $0.005
    client = governed(sdk(messages_api), comptroller(shop.url, shop.secret), feature="support-bot")

    message = client.messages.create(model="claude-sonnet-4-5", max_tokens=512, messages=[ASK])

    assert messages_api.model_calls[0].body["model"] == "claude-haiku-4-5-20251001"
    event = event_for(message.id)
    assert event.model == "claude-haiku-4-5-20251001"
    assert event.cost_nano == message.usage.input_tokens * 1_000 + message.usage.output_tokens * 5_000
    assert Hold.objects.get(usage_event=event).decision == "downgraded"
