"""The gateway through the real ``anthropic`` SDK: base_url=<comptroller>/anthropic, api_key=a service key.

Against a live server (uvicorn over ASGI, and Django's threaded WSGI live server for the
same async view) and a local Messages API stub. The ledger must show what each call
consumed, the stub what was forwarded.
"""

from __future__ import annotations

import anthropic
import httpx
import pytest

from budgets.models import Budget, Hold, HoldState
from tests.gateway_support import (
    ASK,
    UPSTREAM_KEY,
    WEATHER_TOOL,
    asgi_url,  # noqa: F401  (fixtures)
    error_of,
    shop,  # noqa: F401
    upstream,  # noqa: F401
    wait_for,
)
from usage.models import NANO, UsageEvent

pytestmark = pytest.mark.django_db(transaction=True)

FEATURE = {"x-comptroller-feature": "support-bot"}


def sdk(base: str, secret: str, **options) -> anthropic.Anthropic:
    options.setdefault("max_retries", 0)
    return anthropic.Anthropic(base_url=f"{base}/anthropic", api_key=secret, default_headers=FEATURE, **options)


def test_create_through_the_gateway_is_forwarded_with_the_tenants_key_and_committed(shop, upstream, asgi_url):
    client = sdk(asgi_url, shop.secret)

    raw = client.messages.with_raw_response.create(
        model="claude-sonnet-4-5", max_tokens=64, messages=[ASK],
        extra_headers={"anthropic-version": "2023-06-01", "anthropic-beta": "test-beta-1"},
    )
    message = raw.parse()

    assert message.content[0].text.startswith("Budgets are a promise")
    sent = upstream.headers[-1]
    assert sent["x-api-key"] == UPSTREAM_KEY  # the tenant's key, never the caller's
    assert "cpt_" not in str(sent) and "x-comptroller-feature" not in sent
    assert sent["anthropic-version"] == "2023-06-01" and sent["anthropic-beta"] == "test-beta-1"
    event = wait_for(lambda: UsageEvent.objects.filter(request_id=message.id).first())  # committed after the answer
    assert (event.input_tokens, event.output_tokens) == (message.usage.input_tokens, message.usage.output_tokens)
    assert event.feature_id == shop.support.pk and event.streamed is False
    assert event.metadata["gateway"]["decision"] == "granted"
    hold = Hold.objects.get()
    assert hold.state == HoldState.COMMITTED and hold.usage_event_id == event.pk
    assert raw.headers["x-comptroller-decision"] == "granted"
    assert raw.headers["x-comptroller-hold"] == f"hold_{hold.pk.hex}"
    assert raw.headers["x-comptroller-remaining-usd"]  # what the budget has left after this hold
    assert raw.headers["request-id"].startswith("req_")  # Anthropic's headers pass through


def test_streaming_passes_events_through_and_commits_the_final_usage(shop, upstream, asgi_url):
    client = sdk(asgi_url, shop.secret)

    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=64, messages=[ASK]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()

    assert text == final.content[0].text and text.startswith("Budgets are a promise")
    event = wait_for(lambda: UsageEvent.objects.filter(request_id=final.id).first())
    assert event.streamed is True and event.output_tokens == final.usage.output_tokens
    assert event.ttft_ms is not None and "usage_estimated" not in event.metadata


def test_tool_use_round_trip(shop, upstream, asgi_url):
    client = sdk(asgi_url, shop.secret)

    message = client.messages.create(model="claude-sonnet-4-5", max_tokens=256, messages=[ASK],
                                     tools=[WEATHER_TOOL])

    tool_use = message.content[1]
    assert message.stop_reason == "tool_use" and tool_use.type == "tool_use" and tool_use.input == {"city": "Paris"}
    answer = client.messages.create(
        model="claude-sonnet-4-5", max_tokens=256, tools=[WEATHER_TOOL],
        messages=[ASK, {"role": "assistant", "content": [b.model_dump() for b in message.content]},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id,
                                                "content": "Sunny, 21 °C"}]}],
    )
    assert answer.stop_reason == "tool_use"
    assert wait_for(lambda: UsageEvent.objects.count() == 2)
    first, second = Hold.objects.order_by("created_at")
    assert second.input_tokens > first.input_tokens  # the tool result is part of the worst case


def test_a_denial_is_raised_at_once_naming_the_budget_and_nothing_is_forwarded(shop, upstream, asgi_url):
    Budget.objects.filter(pk=shop.budget.pk).update(limit_nano=NANO // 1000)  # $0.001
    client = sdk(asgi_url, shop.secret, max_retries=2)  # the SDK's default retries must not fire

    with pytest.raises(anthropic.PermissionDeniedError) as raised:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=1024, messages=[ASK])

    error = raised.value
    assert error.status_code == 403 and error.body["error"]["type"] == "budget_exceeded"
    assert "Support monthly" in error.message and "It resets at" in error.message
    assert error.response.headers["x-comptroller-decision"] == "denied"
    assert upstream.message_calls == [] and not Hold.objects.exists()


def test_an_upstream_error_passes_through_and_releases_the_hold(shop, upstream, asgi_url):
    client = sdk(asgi_url, shop.secret)

    with pytest.raises(anthropic.InternalServerError) as raised:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=64,
                               messages=[{"role": "user", "content": "FAIL_CALL please"}])

    assert raised.value.body == {"type": "error", "error": {"type": "api_error", "message": "Internal error"}}
    assert Hold.objects.get().state == HoldState.RELEASED
    assert not UsageEvent.objects.exists()
    window = shop.budget.windows.get()
    assert (window.reserved_nano, window.spent_nano) == (0, 0)


def test_a_client_that_leaves_mid_stream_is_charged_for_what_was_generated(shop, upstream, asgi_url):
    upstream.event_delay = 0.05
    body = {"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": True, "messages": [ASK]}
    headers = {"x-api-key": shop.secret, **FEATURE}

    with httpx.Client(timeout=10) as http, http.stream("POST", f"{asgi_url}/anthropic/v1/messages",
                                                       json=body, headers=headers) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        deltas = 0
        for line in lines:
            deltas += "content_block_delta" in line and line.startswith("event:")
            if deltas == 3:
                break  # and hang up

    hold = wait_for(lambda: Hold.objects.filter(state=HoldState.COMMITTED).first())
    assert hold is not None, "the hold was not settled after the caller left"
    event = hold.usage_event
    assert event.metadata["usage_estimated"] == "output" and event.metadata["gateway"]["outcome"] == "client_gone"
    assert 3 <= event.output_tokens < 30  # the words received, not the whole reply
    assert event.input_tokens == upstream.count_input(body)  # message_start's input was read


def test_the_async_view_also_serves_under_wsgi_with_a_bearer_key(shop, upstream, live_server):
    client = anthropic.Anthropic(base_url=f"{live_server.url}/anthropic", auth_token=shop.secret, api_key=None,
                                 default_headers=FEATURE, max_retries=0)

    message = client.messages.create(model="claude-sonnet-4-5", max_tokens=16, messages=[ASK])
    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=16, messages=[ASK]) as stream:
        streamed = stream.get_final_message()

    assert UsageEvent.objects.filter(request_id__in=[message.id, streamed.id]).count() == 2  # WSGI: before the answer
    assert upstream.headers[0]["x-api-key"] == UPSTREAM_KEY and "authorization" not in upstream.headers[0]


def test_unknown_paths_are_404_in_anthropics_shape_and_count_tokens_passes_through(shop, upstream, asgi_url):
    client = sdk(asgi_url, shop.secret)

    with pytest.raises(anthropic.NotFoundError) as raised:
        client.models.list()
    counted = client.messages.count_tokens(model="claude-sonnet-4-5", messages=[ASK])

    assert raised.value.body["error"]["type"] == "not_found_error"
    assert counted.input_tokens == upstream.count_input({"messages": [ASK]})
    assert not Hold.objects.exists() and upstream.headers[-1]["x-api-key"] == UPSTREAM_KEY


@pytest.mark.parametrize(
    ("headers", "status", "kind"),
    [
        ({}, 401, "authentication_error"),
        ({"x-api-key": "cpt_0123_nope"}, 401, "authentication_error"),
        ({"x-api-key": "SECRET"}, 400, "invalid_request_error"),  # no feature named
        ({"x-api-key": "SECRET", "x-comptroller-feature": "nope"}, 400, "invalid_request_error"),
        ({"x-api-key": "SECRET", "x-comptroller-feature": "support-bot", "x-comptroller-ttl": "5"}, 400,
         "invalid_request_error"),
    ],
)
def test_refusals_before_the_allowance(shop, upstream, asgi_url, headers, status, kind):
    headers = {k: v.replace("SECRET", shop.secret) for k, v in headers.items()}
    response = httpx.post(f"{asgi_url}/anthropic/v1/messages", headers=headers,
                          json={"model": "claude-sonnet-4-5", "max_tokens": 16, "messages": [ASK]})

    assert (response.status_code, error_of(response)["type"]) == (status, kind)
    assert response.headers["x-should-retry"] == "false" and upstream.calls == []


def test_the_grant_is_what_is_forwarded_and_a_key_for_one_feature_needs_no_header(shop, upstream, asgi_url):
    from governance.audit import Actor
    from governance.models import KeyRole
    from governance.services import api_key_create

    _, secret = api_key_create(tenant=shop.tenant, actor=Actor.system(), name="bot", role=KeyRole.SERVICE,
                               features=[shop.support])
    client = anthropic.Anthropic(base_url=f"{asgi_url}/anthropic", api_key=secret, max_retries=0)

    raw = client.messages.with_raw_response.create(model="claude-sonnet-4-5", max_tokens=10_000, messages=[ASK])

    assert upstream.message_calls[-1].body["max_tokens"] == 4096  # the feature's cap
    assert raw.headers["x-comptroller-max-tokens"] == "4096"
    assert raw.headers["x-comptroller-feature"] == "support-bot"
    event = wait_for(lambda: UsageEvent.objects.first())
    assert event.metadata["gateway"]["clamped"] is True


def test_an_idempotency_key_admits_one_call(shop, upstream, asgi_url):
    client = sdk(asgi_url, shop.secret)
    once = {"Idempotency-Key": "nightly-report-2026-12-01"}

    client.messages.create(model="claude-sonnet-4-5", max_tokens=16, messages=[ASK], extra_headers=once)
    with pytest.raises(anthropic.ConflictError) as raised:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=16, messages=[ASK], extra_headers=once)

    assert "Idempotency-Key was already used" in raised.value.message
    assert raised.value.response.headers["x-should-retry"] == "false"
    assert len(upstream.message_calls) == 1 and Hold.objects.count() == 1


def test_a_stream_open_when_the_worker_stops_is_committed(shop, upstream, transactional_db):
    from tests.gateway_support import AsgiServer

    # Given a worker that cancels open streams shortly after it is told to stop (GatewayWorker)
    upstream.event_delay = 0.2
    server = AsgiServer(timeout_graceful_shutdown=0.5).start()
    body = {"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": True, "messages": [ASK]}
    headers = {"x-api-key": shop.secret, **FEATURE}
    try:
        with httpx.Client(timeout=10) as http, http.stream("POST", f"{server.url}/anthropic/v1/messages",
                                                           json=body, headers=headers) as response:
            lines = response.iter_lines()
            while "content_block_delta" not in next(lines):
                pass
            # When it stops with the stream still open
            server.server.should_exit = True
            with pytest.raises(httpx.RemoteProtocolError):  # the caller's stream is cut
                for _ in lines:
                    pass
    finally:
        server.stop()

    # Then what the stream had used is committed before the worker ends
    hold = Hold.objects.get()
    assert hold.state == HoldState.COMMITTED, hold.state
    assert hold.usage_event.metadata["usage_estimated"] == "output"


def test_the_keys_rate_limit_counts_gateway_calls_too(shop, upstream, asgi_url, settings):
    settings.API_RATE_LIMIT = "2/min"
    client = sdk(asgi_url, shop.secret)

    for _ in range(2):
        client.messages.create(model="claude-sonnet-4-5", max_tokens=16, messages=[ASK])
    with pytest.raises(anthropic.RateLimitError) as raised:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=16, messages=[ASK])

    assert raised.value.body["error"]["type"] == "rate_limit_error"
    assert int(raised.value.response.headers["retry-after"]) >= 1
    assert len(upstream.message_calls) == 2


def test_what_cannot_be_sized_locally_is_counted_upstream_before_the_allowance(shop, upstream, asgi_url):
    from tests.client_stubs import DOCUMENT_TOKENS

    client = sdk(asgi_url, shop.secret)
    document = {"role": "user", "content": [
        {"type": "document", "source": {"type": "url", "url": "https://example.com/report.pdf"}},
        {"type": "text", "text": "Summarise this report."}]}

    raw = client.messages.with_raw_response.create(model="claude-sonnet-4-5", max_tokens=64, messages=[document])

    assert [c.path for c in upstream.calls] == ["/v1/messages/count_tokens", "/v1/messages"]
    assert upstream.headers[0]["x-api-key"] == UPSTREAM_KEY
    assert raw.headers["x-comptroller-input-basis"] == "count_tokens"
    assert Hold.objects.get().input_tokens >= DOCUMENT_TOKENS  # the document's weight, not a guess


def test_a_downgrade_budget_sends_the_cheaper_model(shop, upstream, asgi_url):
    shop.support.fallback_models = ["claude-haiku-4-5"]
    shop.support.save()
    Budget.objects.create(tenant=shop.tenant, name="Sonnet guard", scope="feature", feature=shop.support,
                          period="day", limit_nano=NANO // 100, enforcement="downgrade")  # $0.01
    client = sdk(asgi_url, shop.secret)

    raw = client.messages.with_raw_response.create(model="claude-sonnet-4-5", max_tokens=1000, messages=[ASK])

    forwarded = upstream.message_calls[-1].body["model"]
    assert forwarded.startswith("claude-haiku-4-5")  # the catalog's id for the fallback
    assert raw.headers["x-comptroller-decision"] == "downgraded" and raw.headers["x-comptroller-model"] == forwarded
    event = wait_for(lambda: UsageEvent.objects.first())
    assert event.model.startswith("claude-haiku-4-5")
    assert event.metadata["gateway"]["requested_model"] == "claude-sonnet-4-5"
