"""comptroller-client against an in-memory Comptroller: results, retries, fail modes, the spool."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from comptroller_client import (
    ApiError,
    AsyncComptroller,
    BudgetExceeded,
    Comptroller,
    ComptrollerUnavailable,
    Spool,
    estimate_input_tokens,
)
from pytest_httpserver import HTTPServer

from tests.client_stubs import FakeComptroller, TcpRelay

USAGE = {"input_tokens": 1000, "output_tokens": 500, "cache_read_input_tokens": 0}


def policy(key: str = "support-bot", fail_mode: str = "closed", **extra) -> dict:
    return {"key": key, "name": key, "default_model": "claude-sonnet-4-5", "allowed_models": [],
            "fallback_models": [], "max_tokens_cap": 2048, "interactive": True, "fail_mode": fail_mode,
            "active": True, "budgets": [], **extra}


def run_async(scenario):
    """Run the coroutine in a thread of its own: a loop left running by another test cannot refuse it."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(scenario())).result()


@pytest.fixture
def fake(httpserver: HTTPServer) -> FakeComptroller:
    return FakeComptroller(httpserver, policies={"support-bot": policy(), "digest": policy("digest", "open")}).install()


@pytest.fixture
def relay(httpserver: HTTPServer):
    relay = TcpRelay("127.0.0.1", httpserver.port).start()
    yield relay
    relay.stop()


def make(url: str, **options) -> Comptroller:
    options.setdefault("backoff", 0)
    options.setdefault("breaker_seconds", 0)
    options.setdefault("flush_interval", 0)  # no background flusher outliving its test
    return Comptroller(url, "cpt_test_secret", **options)


def test_a_granted_allowance_is_typed(fake):
    # Given a feature with room, when the service asks
    allowance = make(fake.url).reserve("support-bot", "claude-sonnet-4-5", 1200, 1024)

    # Then it gets a hold to commit, with money as Decimal and times as datetimes
    assert allowance.granted and allowance.decision == "granted"
    assert allowance.id == "hold_1"
    assert (allowance.model, allowance.max_tokens) == ("claude-sonnet-4-5", 1024)
    assert allowance.reserved_usd == Decimal("0.019560")
    assert allowance.expires_at == datetime(2026, 11, 23, 12, 10, tzinfo=UTC)
    assert allowance.budgets[0].remaining_usd == Decimal("0.01")


def test_the_feature_cap_and_a_downgrade_change_what_to_send(fake):
    fake.grant_model = "claude-haiku-4-5"

    allowance = make(fake.url).reserve("support-bot", "claude-sonnet-4-5", 100, 8000)

    assert (allowance.decision, allowance.model) == ("downgraded", "claude-haiku-4-5")
    assert (allowance.max_tokens, allowance.clamped) == (2048, True)


def test_a_denial_raises_budget_exceeded_with_the_binding_budget(fake):
    fake.deny = True

    with pytest.raises(BudgetExceeded) as caught:
        make(fake.url).reserve("support-bot", "claude-sonnet-4-5", 1200, 1024)

    error = caught.value
    assert error.budget.name == "Support monthly" and error.budget.binding
    assert error.retry_after == datetime(2026, 12, 1, tzinfo=UTC)
    assert "budget_exhausted" in str(error) and "'Support monthly'" in str(error)
    assert fake.holds == {}


def test_a_denial_can_be_returned_instead_of_raised(fake):
    fake.deny = True

    allowance = make(fake.url).reserve("support-bot", "claude-sonnet-4-5", 1, 1, raise_on_deny=False)

    assert not allowance.granted and allowance.id is None and allowance.reason == "budget_exhausted"


def test_a_lost_reservation_answer_is_retried_without_holding_twice(fake):
    # Given Comptroller holds the money but its answer is lost on the way back
    fake.lose_next = 1

    allowance = make(fake.url).reserve("support-bot", "claude-sonnet-4-5", 1200, 1024)

    # Then the retry carries the same idempotency key and gets the same hold
    assert allowance.id == "hold_1"
    assert len(fake.holds) == 1
    keys = {body["idempotency_key"] for method, path, body in fake.requests if path.endswith("/allowances")}
    assert len(keys) == 1 and fake.count("POST", "/api/v1/allowances") == 2


def test_a_lost_commit_answer_is_retried_without_committing_twice(fake):
    client = make(fake.url)
    allowance = client.reserve("support-bot", "claude-sonnet-4-5", 1200, 1024)
    fake.lose_next = 1

    result = client.commit(allowance, USAGE, model="claude-sonnet-4-5-20250929", request_id="msg_1")

    assert result.state == "committed" and result.cost_usd == Decimal("0.010500")
    assert fake.holds["hold_1"]["state"] == "committed"
    assert fake.count("POST", "/api/v1/allowances/hold_1/commit") == 2


def test_transient_errors_are_retried_then_succeed(fake):
    fake.fail_next = [502, 429]

    allowance = make(fake.url).reserve("support-bot", "claude-sonnet-4-5", 1, 1)

    assert allowance.granted and len(fake.holds) == 1


def test_a_refused_request_is_not_retried(fake):
    client = Comptroller(fake.url, "wrong", backoff=0)

    with pytest.raises(ApiError) as caught:
        client.reserve("support-bot", "claude-sonnet-4-5", 1, 1)

    assert (caught.value.status, caught.value.code) == (401, "unauthenticated")
    assert fake.count("POST", "/api/v1/allowances") == 1


def test_when_retries_run_out_a_fail_closed_feature_refuses(fake):
    fake.fail_next = [503] * 6  # the policy read and the reservation, three tries each

    with pytest.raises(ComptrollerUnavailable) as caught:
        make(fake.url).reserve("support-bot", "claude-sonnet-4-5", 1, 1)

    assert "fails closed" in str(caught.value) and "was not made" in str(caught.value)


def test_the_client_fail_mode_overrides_the_feature(fake):
    fake.fail_next = [503] * 3

    allowance = make(fake.url, fail_mode="open").reserve("support-bot", "claude-sonnet-4-5", 1, 4096)

    assert allowance.offline and allowance.granted and allowance.id is None
    assert allowance.model == "claude-sonnet-4-5"
    assert fake.count("GET", "/api/v1/features/") == 0  # an explicit fail mode needs no policy


def test_the_feature_policy_is_cached_for_its_ttl(fake):
    client = make(fake.url)
    client.reserve("support-bot", "claude-sonnet-4-5", 1, 1)
    client.reserve("support-bot", "claude-sonnet-4-5", 1, 1)
    assert fake.count("GET", "/api/v1/features/support-bot") == 1

    stale = make(fake.url, policy_ttl=0)
    stale.reserve("support-bot", "claude-sonnet-4-5", 1, 1)
    stale.reserve("support-bot", "claude-sonnet-4-5", 1, 1)
    assert fake.count("GET", "/api/v1/features/support-bot") == 3


def test_down_and_fail_closed_raises_a_clear_error(fake, relay):
    client = make(relay.url)
    client.reserve("support-bot", "claude-sonnet-4-5", 1, 1)  # learns the feature fails closed
    relay.stop()

    with pytest.raises(ComptrollerUnavailable) as caught:
        client.reserve("support-bot", "claude-sonnet-4-5", 1, 1)

    assert caught.value.feature == "support-bot"
    assert "unreachable" in str(caught.value)


def test_an_unknown_policy_follows_unknown_fail_mode(fake, relay):
    relay.stop()

    with pytest.raises(ComptrollerUnavailable):
        make(relay.url).reserve("digest", "claude-sonnet-4-5", 1, 1)
    assert make(relay.url, unknown_fail_mode="open").reserve("digest", "claude-sonnet-4-5", 1, 1).offline


def test_down_and_fail_open_spools_usage_and_reports_it_when_back(fake, relay):
    client = make(relay.url)
    client.reserve("digest", "claude-haiku-4-5", 1, 1)  # learns the feature fails open
    relay.stop()

    allowance = client.reserve("digest", "claude-haiku-4-5", 300, 500, run_id="run-7")
    result = client.commit(allowance, USAGE, model="claude-haiku-4-5-20251001", request_id="msg_offline")

    assert allowance.offline and result.spooled and len(client.spool) == 1
    assert "msg_offline" not in fake.events

    relay.start()
    client.commit(client.reserve("digest", "claude-haiku-4-5", 1, 1), USAGE, request_id="msg_next")

    assert len(client.spool) == 0
    event = fake.events["msg_offline"]
    assert event["feature"] == "digest" and event["run_id"] == "run-7"
    assert event["usage"]["input_tokens"] == 1000 and event["model"] == "claude-haiku-4-5-20251001"
    assert event["metadata"] == {"comptroller_offline": True}


def test_a_commit_that_cannot_be_delivered_is_spooled_and_replayed(fake, relay):
    client = make(relay.url, auto_flush=False)
    allowance = client.reserve("support-bot", "claude-sonnet-4-5", 1, 1)
    relay.stop()

    assert client.commit(allowance, USAGE, request_id="msg_1").spooled
    assert client.release("hold_unknown").spooled
    relay.start()

    assert client.flush() == 2
    assert fake.holds["hold_1"]["state"] == "committed"
    assert len(client.spool) == 0  # the release of an unknown hold was refused for good and dropped


def test_the_spool_is_bounded_and_drops_the_oldest():
    spool = Spool(maxlen=2)
    for n in range(3):
        spool.put({"kind": "usage", "event": {"request_id": n}})

    assert [e["event"]["request_id"] for e in spool.peek()] == [1, 2]
    assert spool.dropped == 1


def test_the_spool_survives_a_restart(tmp_path):
    path = str(tmp_path / "spool.jsonl")
    first = Spool(path=path)
    for n in range(3):
        first.put({"kind": "usage", "event": {"request_id": n}})
    first.remove(first.peek()[:1])

    assert [e["event"]["request_id"] for e in Spool(path=path).peek()] == [1, 2]


def test_hold_commits_the_usage_attached(fake):
    client = make(fake.url)

    with client.hold("support-bot", "claude-sonnet-4-5", 1200, 1024) as hold:
        assert (hold.model, hold.max_tokens) == ("claude-sonnet-4-5", 1024)
        hold.attach(USAGE, model="claude-sonnet-4-5-20250929", request_id="msg_1", latency_ms=900)

    assert hold.result.state == "committed"
    assert fake.holds["hold_1"]["commit"] == {
        "usage": USAGE, "model": "claude-sonnet-4-5-20250929", "request_id": "msg_1", "latency_ms": 900,
    }


def test_hold_releases_on_exception(fake):
    with pytest.raises(RuntimeError), make(fake.url).hold("support-bot", "claude-sonnet-4-5", 1, 1):
        raise RuntimeError("model call failed")

    assert fake.holds["hold_1"]["state"] == "released"


def test_hold_releases_when_no_usage_was_attached(fake):
    with make(fake.url).hold("support-bot", "claude-sonnet-4-5", 1, 1) as hold:
        pass

    assert hold.result.state == "released" and fake.holds["hold_1"]["state"] == "released"


def test_hold_commits_attached_usage_even_if_later_code_fails(fake):
    # The call happened and was billed; an error after it does not undo the spend.
    with pytest.raises(KeyError), make(fake.url).hold("support-bot", "claude-sonnet-4-5", 1, 1) as hold:
        hold.attach(USAGE, request_id="msg_1")
        raise KeyError("parsing the answer failed")

    assert fake.holds["hold_1"]["state"] == "committed"


def test_report_usage_sends_batches_of_at_most_1000(fake):
    events = [{"feature": "digest", "request_id": f"msg_{n}", "usage": USAGE} for n in range(2500)]

    report = make(fake.url).report_usage(events)

    assert fake.count("POST", "/api/v1/usage") == 3
    assert len(report.results) == 2500 and {r.status for r in report.results} == {"recorded"}
    assert make(fake.url).report_usage(events[0]).results[0].status == "duplicate"


def test_report_usage_keeps_each_request_under_the_body_limit(fake):
    big = {"note": "x" * 3000}  # 3 KB of metadata: 1,000 such events would be 3 MB
    events = [{"feature": "digest", "request_id": f"msg_{n}", "usage": USAGE, "metadata": big} for n in range(1000)]

    make(fake.url).report_usage(events)

    bodies = [json.dumps(body) for method, path, body in fake.requests if path == "/api/v1/usage"]
    assert len(bodies) == 4 and all(len(b) < 1024 * 1024 for b in bodies)
    assert len(fake.events) == 1000


def test_report_usage_needs_a_feature_and_a_request_id(fake):
    with pytest.raises(ValueError, match="'feature' and 'request_id'"):
        make(fake.url).report_usage({"feature": "digest", "usage": USAGE})


def test_the_local_estimate_is_the_documented_rule():
    # 35 characters of text = 10 tokens, plus 4 for the message.
    assert estimate_input_tokens(messages=[{"role": "user", "content": "x" * 35}]) == 14
    # An image is 1,600 tokens; a 7-character system prompt is 2.
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
    assert estimate_input_tokens(system="x" * 7, messages=[{"role": "user", "content": [image]}]) == 1606


def test_the_async_client_reserves_commits_and_holds(fake):
    async def scenario():
        async with AsyncComptroller(fake.url, "cpt_test_secret", backoff=0) as client:
            allowance = await client.reserve("support-bot", "claude-sonnet-4-5", 1200, 1024)
            committed = await client.commit(allowance, USAGE, request_id="msg_1")
            async with client.hold("support-bot", "claude-sonnet-4-5", 1, 1) as hold:
                hold.attach(USAGE, request_id="msg_2")
            fake.deny = True
            with pytest.raises(BudgetExceeded):
                await client.reserve("support-bot", "claude-sonnet-4-5", 1, 1)
            return committed, hold

    committed, hold = run_async(scenario)

    assert committed.state == "committed" and hold.result.state == "committed"
    assert [h["state"] for h in fake.holds.values()] == ["committed", "committed"]


def test_the_async_client_fails_open_and_spools(fake, relay):
    async def scenario():
        client = AsyncComptroller(relay.url, "cpt_test_secret", backoff=0, breaker_seconds=0)
        await client.reserve("digest", "claude-haiku-4-5", 1, 1)
        relay.stop()
        allowance = await client.reserve("digest", "claude-haiku-4-5", 1, 1)
        result = await client.commit(allowance, USAGE, request_id="msg_async")
        relay.start()
        delivered = await client.flush()
        await client.close()
        return allowance, result, delivered

    allowance, result, delivered = run_async(scenario)

    assert allowance.offline and result.spooled and delivered == 1
    assert "msg_async" in fake.events


def test_an_outage_costs_one_attempt_while_the_breaker_is_open(fake, relay):
    client = make(relay.url, fail_mode="open", breaker_seconds=60)
    relay.stop()
    assert client.reserve("support-bot", "claude-sonnet-4-5", 1, 1).offline
    relay.start()

    # Within the breaker window the client does not wait on Comptroller again.
    assert client.reserve("support-bot", "claude-sonnet-4-5", 1, 1).offline
    assert fake.count("POST", "/api/v1/allowances") == 0


def test_a_spooled_event_the_server_refuses_is_dropped_and_the_rest_delivered(fake):
    client = make(fake.url)
    client.spool.put({"kind": "usage", "event": {"feature": "", "request_id": "msg_bad", "usage": {}}})
    client.spool.put({"kind": "usage", "event": {"feature": "digest", "request_id": "msg_good", "usage": USAGE}})

    assert client.flush() == 2

    assert list(fake.events) == ["msg_good"] and len(client.spool) == 0


def test_the_spool_is_delivered_in_the_background_once_comptroller_is_back(fake, relay):
    client = make(relay.url, fail_mode="open", flush_interval=0.05)
    relay.stop()
    client.commit(client.reserve("digest", "claude-haiku-4-5", 1, 1), USAGE, request_id="msg_idle")
    assert len(client.spool) == 1

    relay.start()  # and the service makes no further call

    client._flusher.join(timeout=30)
    assert len(client.spool) == 0 and "msg_idle" in fake.events
    client.close()
