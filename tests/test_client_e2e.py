"""End to end: the real anthropic SDK through governed(...) against a live Comptroller.

The Messages API is a local stub (tests/client_stubs.py) that answers like the
real one (JSON messages with usage, SSE streams, count_tokens, batches);
Comptroller is this project served by pytest-django's live_server over real
HTTP. The ledger must show exactly what each call consumed. ``make test``
runs this file against the newest and the oldest supported ``anthropic``.
"""

from __future__ import annotations

import gc
import math
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace
from urllib.parse import urlsplit

import anthropic
import pytest
from comptroller_client import (
    AsyncComptroller,
    BudgetExceeded,
    Comptroller,
    ComptrollerUnavailable,
    call_headers,
    governed,
)
from pytest_httpserver import HTTPServer

from budgets.models import Budget, BudgetWindow, Hold
from governance.audit import Actor
from governance.models import KeyRole
from governance.services import api_key_create
from tests.client_stubs import DOCUMENT_TOKENS, MessagesStub, TcpRelay
from tests.conftest import run_async
from tests.factories import FeatureFactory, TenantFactory
from usage.models import NANO, UsageEvent

pytestmark = pytest.mark.django_db(transaction=True)

ASK = {"role": "user", "content": "How should I think about a monthly budget for my support bot?"}
# Sonnet 4.5 in nano-USD per token: $3 / $15 per million.
SONNET_IN, SONNET_OUT = 3_000, 15_000
SDK_2 = int(anthropic.__version__.split(".")[0]) >= 2



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
    server = HTTPServer(threaded=True)
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


@pytest.fixture
def cpt(shop, tmp_path):
    """Build Comptrollers with their own spool; each is closed (delivering what waits) after the test."""
    made: list[Comptroller] = []

    def build(url: str | None = None, **options) -> Comptroller:
        options.setdefault("backoff", 0)
        options.setdefault("breaker_seconds", 0)
        options.setdefault("flush_interval", 0)
        options.setdefault("spool_dir", str(tmp_path / "spool"))
        client = Comptroller(url or shop.url, shop.secret, **options)
        made.append(client)
        return client

    yield build
    for client in made:
        client.close(timeout=2)


def sdk(stub: MessagesStub) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key="sk-ant-test", base_url=stub.base_url, max_retries=0)


def event_for(message_id: str) -> UsageEvent:
    return UsageEvent.objects.get(request_id=message_id)


def test_governed_is_a_real_anthropic_client_and_leaves_the_original_alone(shop, messages_api, cpt):
    original = sdk(messages_api)
    client = governed(original, cpt(), feature="support-bot")

    assert isinstance(client, anthropic.Anthropic)
    assert isinstance(client.with_options(timeout=5), anthropic.Anthropic)
    original.messages.create(model="claude-sonnet-4-5", max_tokens=16, messages=[ASK])
    assert not Hold.objects.exists()  # only the governed copy asks


def test_create_commits_the_exact_usage_of_the_call(shop, messages_api, cpt):
    comptroller = cpt()
    client = governed(sdk(messages_api), comptroller, feature="support-bot")

    message = client.messages.create(model="claude-sonnet-4-5", max_tokens=512, messages=[ASK])
    comptroller.flush()

    event = event_for(message.id)
    assert event.feature == shop.support and event.model == "claude-sonnet-4-5-20250929"
    assert (event.input_tokens, event.output_tokens) == (message.usage.input_tokens, message.usage.output_tokens)
    assert event.cost_nano == message.usage.input_tokens * SONNET_IN + message.usage.output_tokens * SONNET_OUT
    assert event.stop_reason == "end_turn" and event.streamed is False and event.latency_ms is not None
    assert Hold.objects.get(usage_event=event).state == "committed"
    window = BudgetWindow.objects.get(budget=shop.budget)
    assert (window.spent_nano, window.reserved_nano) == (event.cost_nano, 0)
    assert messages_api.model_calls[0].body["max_tokens"] == 512


def _create(client):
    return client.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=[ASK])


def _stream(client):
    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=64, messages=[ASK]) as stream:
        return stream.get_final_message()


def _raw_stream(client):
    events = list(client.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=[ASK], stream=True))
    return events[0].message


def _parse(client):
    if not hasattr(client.messages, "parse"):
        pytest.skip(f"messages.parse is not in anthropic {anthropic.__version__}")
    return client.messages.parse(model="claude-sonnet-4-5", max_tokens=64, messages=[ASK])


def _beta(client):
    return client.beta.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=[ASK],
                                       betas=["context-1m-2025-08-07"])


def _with_raw_response(client):
    raw = client.messages.with_raw_response.create(model="claude-sonnet-4-5", max_tokens=64, messages=[ASK])
    assert raw.headers["x-comptroller-decision"] == "granted" and raw.headers["x-comptroller-hold"]
    return raw.parse()


def _with_streaming_response(client):
    with client.messages.with_streaming_response.create(
        model="claude-sonnet-4-5", max_tokens=64, messages=[ASK]
    ) as response:
        return response.parse()


def _with_options(client):
    return client.with_options(timeout=30, max_retries=1).messages.create(
        model="claude-sonnet-4-5", max_tokens=64, messages=[ASK])


def _copy(client):
    return client.copy(default_headers={"x-team": "support"}).messages.create(
        model="claude-sonnet-4-5", max_tokens=64, messages=[ASK])


def _copy_with_a_new_http_client(client):
    return client.copy(http_client=anthropic.DefaultHttpxClient()).messages.create(
        model="claude-sonnet-4-5", max_tokens=64, messages=[ASK])


@pytest.mark.parametrize("call", [_create, _stream, _raw_stream, _parse, _beta, _with_raw_response,
                                  _with_streaming_response, _with_options, _copy, _copy_with_a_new_http_client])
def test_every_entry_point_leaves_exactly_one_ledger_row(shop, messages_api, cpt, call):
    comptroller = cpt()
    client = governed(sdk(messages_api), comptroller, feature="support-bot")

    message = call(client)
    comptroller.flush()

    event = UsageEvent.objects.get()
    assert event.request_id == message.id and event.feature == shop.support
    assert Hold.objects.get().state == "committed"
    assert len(messages_api.model_calls) == 1


def test_count_tokens_and_other_endpoints_pass_through_ungoverned(shop, messages_api, cpt):
    client = governed(sdk(messages_api), cpt(), feature="support-bot")

    counted = client.messages.count_tokens(model="claude-sonnet-4-5", messages=[ASK])

    assert counted.input_tokens == messages_api.count_input({"messages": [ASK]})
    assert not Hold.objects.exists()


def test_a_denied_allowance_raises_and_makes_no_model_call(shop, messages_api, cpt):
    Budget.objects.filter(pk=shop.budget.pk).update(limit_nano=1_000)  # $0.000001: nothing fits
    client = governed(sdk(messages_api), cpt(), feature="support-bot")

    with pytest.raises(BudgetExceeded) as caught:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=512, messages=[ASK])

    assert caught.value.budget.name == "Support monthly" and caught.value.budget.binding
    assert isinstance(caught.value, anthropic.RateLimitError)  # and the SDK did not retry it
    now = datetime.now(UTC)
    next_month = datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=UTC)
    assert caught.value.retry_after == next_month
    assert messages_api.model_calls == [] and not UsageEvent.objects.exists()


def test_a_failed_model_call_releases_its_hold(shop, messages_api, cpt):
    comptroller = cpt()
    client = governed(sdk(messages_api), comptroller, feature="support-bot")

    with pytest.raises(anthropic.InternalServerError):
        client.messages.create(model="claude-sonnet-4-5", max_tokens=512,
                               messages=[{"role": "user", "content": "FAIL_CALL"}])
    comptroller.flush()

    assert list(Hold.objects.values_list("state", flat=True)) == ["released"]
    assert BudgetWindow.objects.get(budget=shop.budget).reserved_nano == 0
    assert not UsageEvent.objects.exists()


def test_the_feature_cap_clamps_the_call(shop, messages_api, cpt):
    comptroller = cpt()
    client = governed(sdk(messages_api), comptroller, feature="support-bot")

    raw = client.messages.with_raw_response.create(model="claude-sonnet-4-5", max_tokens=10_000, messages=[ASK])
    comptroller.flush()

    assert messages_api.model_calls[0].body["max_tokens"] == 4096
    assert raw.headers["x-comptroller-max-tokens"] == "4096"
    hold = Hold.objects.get(usage_event__request_id=raw.parse().id)
    assert hold.clamped and hold.max_tokens == 4096


def test_a_stream_commits_its_final_usage_with_ttft_and_latency(shop, messages_api, cpt):
    comptroller = cpt()
    client = governed(sdk(messages_api), comptroller, feature="support-bot")

    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=512, messages=[ASK]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    comptroller.flush()

    assert text == messages_api.reply
    event = event_for(final.id)
    assert (event.input_tokens, event.output_tokens) == (final.usage.input_tokens, final.usage.output_tokens)
    assert event.streamed is True and event.stop_reason == "end_turn"
    assert event.ttft_ms is not None and event.latency_ms >= event.ttft_ms
    assert "usage_estimated" not in event.metadata


def test_a_stream_closed_halfway_commits_the_partial_usage(shop, messages_api, cpt):
    messages_api.event_delay = 0.02  # the reply is still coming when the caller stops reading
    comptroller = cpt()
    client = governed(sdk(messages_api), comptroller, feature="support-bot")

    received = []
    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=512, messages=[ASK]) as stream:
        for chunk in stream.text_stream:
            received.append(chunk)
            if len(received) == 6:
                break
        message_id = stream.current_message_snapshot.id
    comptroller.flush()

    event = event_for(message_id)
    # At least what was received: the SDK may have read a few more deltas off the wire than it yielded.
    assert event.output_tokens >= max(len(received), math.ceil(len("".join(received)) / 3))
    assert event.output_tokens < len(messages_api.reply.split(" "))
    assert event.input_tokens == messages_api.count_input({"messages": [ASK]})
    assert event.streamed is True and event.metadata["usage_estimated"] == "output"
    assert BudgetWindow.objects.get(budget=shop.budget).reserved_nano == 0


def test_a_stream_that_fails_before_message_start_releases_its_hold(shop, messages_api, cpt):
    comptroller = cpt()
    client = governed(sdk(messages_api), comptroller, feature="support-bot")

    with pytest.raises(anthropic.APIStatusError), client.messages.stream(
        model="claude-sonnet-4-5", max_tokens=512, messages=[{"role": "user", "content": "OVERLOAD_STREAM"}]
    ) as stream:
        stream.until_done()
    comptroller.flush()

    assert Hold.objects.get().state == "released" and not UsageEvent.objects.exists()


def test_a_raw_stream_never_iterated_commits_when_it_is_collected(shop, messages_api, cpt):
    comptroller = cpt()
    client = governed(sdk(messages_api), comptroller, feature="support-bot")

    stream = client.messages.create(model="claude-sonnet-4-5", max_tokens=512, messages=[ASK], stream=True)
    del stream
    gc.collect()
    comptroller.flush()

    hold = Hold.objects.get()
    assert hold.state == "committed" and hold.usage_event.metadata["usage_estimated"] in ("input", "output")


EXITING_SERVICE = """
import sys, anthropic
from comptroller_client import Comptroller, governed
comptroller = Comptroller(sys.argv[1], sys.argv[2], spool_dir=sys.argv[4], flush_interval=0)
client = governed(anthropic.Anthropic(api_key="sk-ant-test", base_url=sys.argv[3], max_retries=0),
                  comptroller, feature="support-bot")
stream = client.messages.create(model="claude-sonnet-4-5", max_tokens=64, stream=True,
                                messages=[{"role": "user", "content": "Hello"}])
first = next(iter(stream))
print(first.message.id)
# and the process exits with the stream open and its commit not yet made
"""


def test_a_stream_still_open_when_the_process_exits_is_committed(shop, messages_api, tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", EXITING_SERVICE, shop.url, shop.secret, messages_api.base_url, str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=True,
    )

    hold = Hold.objects.get()
    assert hold.state == "committed" and hold.usage_event.request_id == done.stdout.strip()
    assert hold.usage_event.streamed is True


def test_an_async_stream_left_after_break_commits_once_the_loop_is_gone(shop, messages_api, cpt):
    comptroller = cpt()

    async def scenario():
        sdk_async = anthropic.AsyncAnthropic(api_key="sk-ant-test", base_url=messages_api.base_url, max_retries=0)
        client = governed(sdk_async, comptroller, feature="support-bot")
        stream = await client.messages.create(model="claude-sonnet-4-5", max_tokens=512, messages=[ASK],
                                              stream=True)
        async for event in stream:
            if event.type == "content_block_delta":
                break  # and never aclose()
        return event

    run_async(scenario)
    gc.collect()
    comptroller.flush()

    hold = Hold.objects.get()
    assert hold.state == "committed" and hold.usage_event.streamed is True


def test_a_commit_of_a_dated_model_the_price_table_lacks_is_still_recorded(shop, messages_api, cpt):
    messages_api.dated["claude-sonnet-4-5"] = "claude-sonnet-4-5-20991231"
    comptroller = cpt()
    client = governed(sdk(messages_api), comptroller, feature="support-bot")

    message = client.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=[ASK])
    comptroller.flush()

    event = event_for(message.id)
    assert event.output_tokens == message.usage.output_tokens
    assert comptroller.spool.quarantined == 0 and Hold.objects.get().state == "committed"


def test_documents_by_url_never_take_a_block_budget_past_its_limit(shop, messages_api, cpt):
    # Given $0.50 and calls carrying a PDF by URL (40,000 input tokens each: $0.12 at Sonnet's price)
    Budget.objects.filter(pk=shop.budget.pk).update(limit_nano=NANO // 2)
    comptroller = cpt()
    client = governed(sdk(messages_api), comptroller, feature="support-bot")
    doc = {"role": "user", "content": [{"type": "document", "source": {"type": "url", "url": "https://x.test/a.pdf"}},
                                       {"type": "text", "text": "Summarise it."}]}

    denied = 0
    for _ in range(8):
        try:
            client.messages.create(model="claude-sonnet-4-5", max_tokens=256, messages=[doc])
        except BudgetExceeded:
            denied += 1
    comptroller.flush()

    # Then count_tokens sized each hold, and the spend stays within the limit
    window = BudgetWindow.objects.get(budget=shop.budget)
    assert denied > 0 and window.spent_nano <= NANO // 2 and window.reserved_nano == 0
    assert UsageEvent.objects.count() == 8 - denied
    assert all(e.input_tokens > DOCUMENT_TOKENS for e in UsageEvent.objects.all())
    assert sum(c.path.endswith("count_tokens") for c in messages_api.calls) == 8


def test_per_call_headers_set_the_run_and_never_reach_anthropic(shop, messages_api, cpt):
    comptroller = cpt()
    client = governed(sdk(messages_api), comptroller, feature="support-bot", metadata={"team": "care"})

    client.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=[ASK],
                           extra_headers=call_headers(run_id="run-42", metadata={"ticket": 7}))
    comptroller.flush()

    hold = Hold.objects.get()
    assert hold.run_id == "run-42" and hold.metadata == {"team": "care", "ticket": 7}
    request = messages_api.server.log[-1][0]
    assert not [h for h, _ in request.headers.items() if h.lower().startswith("x-comptroller")]


def test_anthropic_gets_the_sdks_request_with_an_encoding_the_meter_can_read(shop, messages_api, cpt):
    comptroller = cpt()
    client = governed(sdk(messages_api), comptroller, feature="support-bot")

    client.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=[ASK])
    client.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=[ASK],
                           extra_headers={"Accept-Encoding": "br, zstd"})
    comptroller.flush()

    as_built, narrowed = (entry[0] for entry in messages_api.server.log[-2:])
    assert as_built.headers["Accept-Encoding"] == "gzip, deflate"
    assert as_built.headers["Anthropic-Version"] and as_built.headers["Content-Type"] == "application/json"
    assert narrowed.headers["Accept-Encoding"] == "gzip, deflate"
    assert UsageEvent.objects.count() == 2


def test_down_and_fail_closed_raises_without_calling_the_model(shop, messages_api, relay, cpt):
    client = governed(sdk(messages_api), cpt(relay.url), feature="support-bot")
    client.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=[ASK])  # learns: fails closed
    relay.stop()

    with pytest.raises(ComptrollerUnavailable) as caught:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=[ASK])

    assert "fails closed" in str(caught.value) and "was not made" in str(caught.value)
    assert isinstance(caught.value, anthropic.APIStatusError)
    assert len(messages_api.model_calls) == 1


def test_down_and_fail_open_calls_the_model_and_reports_the_usage_when_back(shop, messages_api, relay, cpt):
    comptroller = cpt(relay.url)
    client = governed(sdk(messages_api), comptroller, feature="digest")
    client.messages.create(model="claude-haiku-4-5", max_tokens=64, messages=[ASK])  # learns: fails open
    relay.stop()

    offline = client.messages.create(model="claude-haiku-4-5", max_tokens=64, messages=[ASK])

    assert offline.content[0].text and len(messages_api.model_calls) == 2
    relay.start()
    comptroller.flush()

    event = event_for(offline.id)
    assert (event.input_tokens, event.output_tokens) == (offline.usage.input_tokens, offline.usage.output_tokens)
    assert event.feature == shop.digest and not Hold.objects.filter(usage_event=event).exists()
    assert event.metadata.get("comptroller_offline") is True
    assert UsageEvent.objects.filter(feature=shop.digest).count() == 2


def test_batches_reserve_at_the_batch_tier_and_report_results_as_they_are_read(shop, messages_api, cpt):
    comptroller = cpt()
    client = governed(sdk(messages_api), comptroller, feature="digest")
    requests = [
        {"custom_id": f"ticket-{n}", "params": {"model": "claude-haiku-4-5", "max_tokens": 256,
                                               "messages": [{"role": "user", "content": f"Summarise ticket {n}"}]}}
        for n in range(3)
    ] + [{"custom_id": "ticket-fail", "params": {"model": "claude-haiku-4-5", "max_tokens": 256,
                                                 "messages": [ASK]}}]

    batch = client.messages.batches.create(requests=requests)
    hold = Hold.objects.get()
    assert (hold.service_tier, hold.state, hold.max_tokens) == ("batch", "held", 4 * 256)

    results = list(client.messages.batches.results(batch.id))
    comptroller.flush()

    assert [r.result.type for r in results].count("succeeded") == 3
    events = UsageEvent.objects.order_by("metadata__custom_id")
    assert [e.metadata["custom_id"] for e in events] == ["ticket-0", "ticket-1", "ticket-2"]
    sent = {r["custom_id"]: r["result"]["message"] for r in messages_api.batches[batch.id]["results"]
            if r["result"]["type"] == "succeeded"}
    for event in events:
        usage = sent[event.metadata["custom_id"]]["usage"]
        assert event.service_tier == "batch" and event.request_id == sent[event.metadata["custom_id"]]["id"]
        # Haiku 4.5 at half price: $0.50 / $2.50 per million.
        assert event.cost_nano == usage["input_tokens"] * 500 + usage["output_tokens"] * 2_500
    hold.refresh_from_db()
    assert hold.state == "released"


def test_batch_holds_stay_within_the_feature_cap(shop, messages_api, cpt):
    client = governed(sdk(messages_api), cpt(), feature="support-bot")
    params = {"model": "claude-sonnet-4-5", "messages": [ASK]}
    requests = [{"custom_id": f"c-{n}", "params": {**params, "max_tokens": tokens}}
                for n, tokens in enumerate([2048, 2048, 2048, 8000])]

    client.messages.batches.create(requests=requests)

    holds = sorted(Hold.objects.values_list("max_tokens", "clamped", "service_tier"))
    assert holds == [(2048, False, "batch"), (4096, False, "batch"), (4096, False, "batch")]
    assert [c.body["requests"][3]["params"]["max_tokens"] for c in messages_api.model_calls] == [4096]


def test_the_async_client_governs_create_stream_and_batches(shop, messages_api, tmp_path):
    async def scenario():
        sdk_async = anthropic.AsyncAnthropic(api_key="sk-ant-test", base_url=messages_api.base_url, max_retries=0)
        async with AsyncComptroller(shop.url, shop.secret, backoff=0, spool_dir=str(tmp_path)) as comptroller:
            client = governed(sdk_async, comptroller, feature="support-bot")
            assert isinstance(client, anthropic.AsyncAnthropic)
            message = await client.messages.create(model="claude-sonnet-4-5", max_tokens=256, messages=[ASK])
            async with client.messages.stream(model="claude-sonnet-4-5", max_tokens=256, messages=[ASK]) as s:
                final = await s.get_final_message()
            batch = await client.messages.batches.create(requests=[
                {"custom_id": "a", "params": {"model": "claude-haiku-4-5", "max_tokens": 100, "messages": [ASK]}},
            ])
            results = [r async for r in await client.messages.batches.results(batch.id)]
        return message, final, results

    message, final, results = run_async(scenario)

    assert event_for(message.id).output_tokens == message.usage.output_tokens
    streamed = event_for(final.id)
    assert streamed.streamed is True and streamed.output_tokens == final.usage.output_tokens
    assert event_for(results[0].result.message.id).service_tier == "batch"
    assert sorted(Hold.objects.values_list("state", flat=True)) == ["committed", "committed", "released"]


def test_an_async_client_with_a_sync_comptroller_is_governed_too(shop, messages_api, cpt):
    comptroller = cpt()

    async def scenario():
        sdk_async = anthropic.AsyncAnthropic(api_key="sk-ant-test", base_url=messages_api.base_url, max_retries=0)
        client = governed(sdk_async, comptroller, feature="support-bot")
        return await client.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=[ASK])

    message = run_async(scenario)
    comptroller.flush()

    assert event_for(message.id).output_tokens == message.usage.output_tokens


def test_a_downgrade_budget_moves_the_call_to_the_fallback_model(shop, messages_api, cpt):
    shop.support.fallback_models = ["claude-haiku-4-5"]
    shop.support.save()
    Budget.objects.create(tenant=shop.tenant, name="Support daily", scope="feature", feature=shop.support,
                          period="day", limit_nano=5_000_000, enforcement="downgrade")  # $0.005
    comptroller = cpt()
    client = governed(sdk(messages_api), comptroller, feature="support-bot")

    raw = client.messages.with_raw_response.create(model="claude-sonnet-4-5", max_tokens=512, messages=[ASK])
    message = raw.parse()
    comptroller.flush()

    assert raw.headers["x-comptroller-decision"] == "downgraded"
    assert messages_api.model_calls[0].body["model"] == "claude-haiku-4-5-20251001"
    event = event_for(message.id)
    assert event.cost_nano == message.usage.input_tokens * 1_000 + message.usage.output_tokens * 5_000


def test_hold_context_commits_through_the_live_server(shop, cpt):
    client = cpt()
    usage = {"input_tokens": 1000, "output_tokens": 500}

    with client.hold("support-bot", "claude-sonnet-4-5", 1000, 1024) as hold:
        hold.attach(usage, request_id="msg_manual", latency_ms=1200)

    assert hold.result.cost_usd == Decimal("0.0105")
    assert event_for("msg_manual").cost_nano == 1000 * SONNET_IN + 500 * SONNET_OUT


def test_a_web_search_call_holds_its_searches(shop, messages_api, cpt):
    comptroller = cpt()
    client = governed(sdk(messages_api), comptroller, feature="support-bot")

    client.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=[ASK],
                           tools=[{"type": "web_search_20250305", "name": "web_search", "max_uses": 2}])
    comptroller.flush()

    # The searches are held, and the results they may add as input
    hold = Hold.objects.get()
    assert hold.state == "committed" and hold.max_web_searches == 2 and hold.input_tokens > 2 * 10_000


def test_the_requests_inference_geo_reaches_the_hold(shop, messages_api, cpt):
    comptroller = cpt()
    client = governed(sdk(messages_api), comptroller, feature="support-bot")

    client.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=[ASK],
                           extra_body={"inference_geo": "us"})
    comptroller.flush()

    assert Hold.objects.get().inference_geo == "us"


def test_a_call_bigger_than_what_remains_is_denied_saying_so(shop, messages_api, cpt):
    Budget.objects.filter(pk=shop.budget.pk).update(limit_nano=NANO // 100)  # $0.01: room for small calls
    client = governed(sdk(messages_api), cpt(), feature="support-bot")

    with pytest.raises(BudgetExceeded) as caught:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=4096, messages=[ASK])

    error = caught.value
    assert error.reason == "exceeds_remaining" and error.remaining_usd == Decimal("0.01")
    assert error.requested_usd > error.remaining_usd and messages_api.model_calls == []
