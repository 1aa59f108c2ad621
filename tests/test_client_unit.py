"""comptroller-client against an in-memory Comptroller: results, retries, the breaker, the spool, the sender."""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from comptroller_client import (
    ApiError,
    AsyncComptroller,
    BudgetExceeded,
    Comptroller,
    ComptrollerRedirect,
    ComptrollerUnavailable,
    Spool,
    estimate_input_tokens,
)
from pytest_httpserver import HTTPServer
from werkzeug import Response

from tests.client_stubs import FakeComptroller, TcpRelay
from tests.conftest import run_async

USAGE = {"input_tokens": 1000, "output_tokens": 500, "cache_read_input_tokens": 0}


def policy(key: str = "support-bot", fail_mode: str = "closed", **extra) -> dict:
    return {"key": key, "name": key, "default_model": "claude-sonnet-4-5", "allowed_models": [],
            "fallback_models": [], "max_tokens_cap": 2048, "interactive": True, "fail_mode": fail_mode,
            "active": True, "budgets": [], **extra}



@pytest.fixture
def fake(httpserver: HTTPServer) -> FakeComptroller:
    return FakeComptroller(httpserver, policies={"support-bot": policy(), "digest": policy("digest", "open")}).install()


@pytest.fixture
def relay(httpserver: HTTPServer):
    relay = TcpRelay("127.0.0.1", httpserver.port).start()
    yield relay
    relay.stop()



def test_a_granted_allowance_is_typed(fake, make):
    # Given a feature with room, when the service asks
    allowance = make(fake.url).reserve("support-bot", "claude-sonnet-4-5", 1200, 1024)

    # Then it gets a hold to commit, with money as Decimal and times as datetimes
    assert allowance.granted and allowance.decision == "granted"
    assert allowance.id == "hold_1"
    assert (allowance.model, allowance.max_tokens) == ("claude-sonnet-4-5", 1024)
    assert allowance.reserved_usd == Decimal("0.019560")
    assert allowance.expires_at == datetime(2026, 11, 23, 12, 10, tzinfo=UTC)
    assert allowance.budgets[0].remaining_usd == Decimal("0.01")


def test_the_feature_cap_and_a_downgrade_change_what_to_send(fake, make):
    fake.grant_model = "claude-haiku-4-5"

    allowance = make(fake.url).reserve("support-bot", "claude-sonnet-4-5", 100, 8000)

    assert (allowance.decision, allowance.model) == ("downgraded", "claude-haiku-4-5")
    assert (allowance.max_tokens, allowance.clamped) == (2048, True)


def test_a_denial_raises_budget_exceeded_with_the_binding_budget(fake, make):
    fake.deny = True

    with pytest.raises(BudgetExceeded) as caught:
        make(fake.url).reserve("support-bot", "claude-sonnet-4-5", 1200, 1024)

    error = caught.value
    assert error.budget.name == "Support monthly" and error.budget.binding
    assert error.retry_after == datetime(2026, 12, 1, tzinfo=UTC)
    assert "budget_exhausted" in str(error) and "'Support monthly'" in str(error)
    assert fake.holds == {}


def test_a_denial_can_be_returned_instead_of_raised(fake, make):
    fake.deny = True

    allowance = make(fake.url).reserve("support-bot", "claude-sonnet-4-5", 1, 1, raise_on_deny=False)

    assert not allowance.granted and allowance.id is None and allowance.reason == "budget_exhausted"


def test_a_lost_reservation_answer_is_retried_without_holding_twice(fake, make):
    # Given Comptroller holds the money but its answer is lost on the way back
    fake.lose_next = 1

    allowance = make(fake.url).reserve("support-bot", "claude-sonnet-4-5", 1200, 1024)

    # Then the retry carries the same idempotency key and gets the same hold
    assert allowance.id == "hold_1"
    assert len(fake.holds) == 1
    keys = {body["idempotency_key"] for method, path, body in fake.requests if path.endswith("/allowances")}
    assert len(keys) == 1 and fake.count("POST", "/api/v1/allowances") == 2


def test_a_lost_commit_answer_is_retried_without_committing_twice(fake, make):
    client = make(fake.url)
    allowance = client.reserve("support-bot", "claude-sonnet-4-5", 1200, 1024)
    fake.lose_next = 1

    result = client.commit(allowance, USAGE, model="claude-sonnet-4-5-20250929", request_id="msg_1")

    assert result.state == "committed" and result.cost_usd == Decimal("0.010500")
    assert fake.holds["hold_1"]["state"] == "committed"
    assert fake.count("POST", "/api/v1/allowances/hold_1/commit") == 2


def test_transient_errors_are_retried_then_succeed(fake, make):
    fake.fail_next = [502, 429]

    allowance = make(fake.url).reserve("support-bot", "claude-sonnet-4-5", 1, 1)

    assert allowance.granted and len(fake.holds) == 1


def test_a_refused_request_is_not_retried(fake, make):
    fake.secret = "cpt_another_secret"  # the key the client holds is not (or no longer) Comptroller's

    with pytest.raises(ApiError) as caught:
        make(fake.url).reserve("support-bot", "claude-sonnet-4-5", 1, 1)

    assert (caught.value.status, caught.value.code) == (401, "unauthenticated")
    assert fake.count("POST", "/api/v1/allowances") == 1


def test_when_retries_run_out_a_fail_closed_feature_refuses(fake, make):
    fake.fail_next = [503] * 6  # the policy read and the reservation, three tries each

    with pytest.raises(ComptrollerUnavailable) as caught:
        make(fake.url).reserve("support-bot", "claude-sonnet-4-5", 1, 1)

    assert "fails closed" in str(caught.value) and "was not made" in str(caught.value)


def test_the_client_fail_mode_overrides_the_feature(fake, make):
    fake.fail_next = [503] * 3

    allowance = make(fake.url, fail_mode="open").reserve("support-bot", "claude-sonnet-4-5", 1, 4096)

    assert allowance.offline and allowance.granted and allowance.id is None
    assert allowance.model == "claude-sonnet-4-5"
    assert fake.count("GET", "/api/v1/features/") == 0  # an explicit fail mode needs no policy


def test_the_feature_policy_is_cached_for_its_ttl(fake, make):
    client = make(fake.url)
    client.reserve("support-bot", "claude-sonnet-4-5", 1, 1)
    client.reserve("support-bot", "claude-sonnet-4-5", 1, 1)
    assert fake.count("GET", "/api/v1/features/support-bot") == 1

    stale = make(fake.url, policy_ttl=0)
    stale.reserve("support-bot", "claude-sonnet-4-5", 1, 1)
    stale.reserve("support-bot", "claude-sonnet-4-5", 1, 1)
    assert fake.count("GET", "/api/v1/features/support-bot") == 3


def test_down_and_fail_closed_raises_a_clear_error(fake, relay, make):
    client = make(relay.url)
    client.reserve("support-bot", "claude-sonnet-4-5", 1, 1)  # learns the feature fails closed
    relay.stop()

    with pytest.raises(ComptrollerUnavailable) as caught:
        client.reserve("support-bot", "claude-sonnet-4-5", 1, 1)

    assert caught.value.feature == "support-bot"
    assert "unavailable" in str(caught.value)


def test_an_unknown_policy_follows_unknown_fail_mode(fake, relay, make):
    relay.stop()

    with pytest.raises(ComptrollerUnavailable):
        make(relay.url).reserve("digest", "claude-sonnet-4-5", 1, 1)
    assert make(relay.url, unknown_fail_mode="open").reserve("digest", "claude-sonnet-4-5", 1, 1).offline


def test_down_and_fail_open_spools_usage_and_reports_it_when_back(fake, relay, make):
    client = make(relay.url)
    client.reserve("digest", "claude-haiku-4-5", 1, 1)  # learns the feature fails open
    relay.stop()

    allowance = client.reserve("digest", "claude-haiku-4-5", 300, 500, run_id="run-7")
    before = datetime.now(UTC)
    result = client.commit(allowance, USAGE, model="claude-haiku-4-5-20251001", request_id="msg_offline")

    assert allowance.offline and result.spooled and len(client.spool) == 1
    assert "msg_offline" not in fake.events

    relay.start()
    client.commit(client.reserve("digest", "claude-haiku-4-5", 1, 1), USAGE, request_id="msg_next")

    # Comptroller answering again wakes the sender: the spool goes without a flush() or a timer.
    wait_for(lambda: len(client.spool) == 0)
    event = fake.events["msg_offline"]
    assert event["feature"] == "digest" and event["run_id"] == "run-7"
    assert event["usage"]["input_tokens"] == 1000 and event["model"] == "claude-haiku-4-5-20251001"
    assert event["metadata"] == {"comptroller_offline": True}
    # It keeps the time the call happened, not the time it was replayed.
    assert before <= datetime.fromisoformat(event["occurred_at"]) <= datetime.now(UTC)

def test_a_commit_that_cannot_be_delivered_is_spooled_and_replayed(fake, relay, make):
    client = make(relay.url)
    allowance = client.reserve("support-bot", "claude-sonnet-4-5", 1, 1)
    relay.stop()

    assert client.commit(allowance, USAGE, request_id="msg_1").spooled
    assert client.release("hold_unknown").spooled
    relay.start()

    client.flush()
    assert fake.holds["hold_1"]["state"] == "committed"
    assert len(client.spool) == 0  # the release of an unknown hold was refused for good and dropped


def test_the_spool_is_bounded_and_drops_the_oldest():
    spool = Spool(":memory:", maxlen=2)
    for n in range(3):
        spool.put({"kind": "usage", "event": {"request_id": n}})

    assert [e["event"]["request_id"] for e in spool.peek()] == [1, 2]
    assert spool.dropped == 1

def test_the_spool_survives_a_restart_and_skips_a_torn_line(tmp_path):
    # Given a process that spooled three reports, delivered one and died mid-write
    first = Spool(str(tmp_path))
    for n in range(3):
        first.put({"kind": "usage", "event": {"request_id": n}})
    first.ack(first.peek()[:1])
    first._file.write('{"put": {"kind": "usage", "ev')  # the torn last line
    first._file.flush()
    abandon(first)

    # When the next process starts
    second = Spool(str(tmp_path))

    # Then it adopts what was left, skips the torn line and says so
    assert [e["event"]["request_id"] for e in second.peek()] == [1, 2]
    assert second.torn == 1
    assert os.listdir(tmp_path) == [os.path.basename(second.path)]

def test_hold_commits_the_usage_attached(fake, make):
    client = make(fake.url)

    with client.hold("support-bot", "claude-sonnet-4-5", 1200, 1024) as hold:
        assert (hold.model, hold.max_tokens) == ("claude-sonnet-4-5", 1024)
        hold.attach(USAGE, model="claude-sonnet-4-5-20250929", request_id="msg_1", latency_ms=900)

    assert hold.result.state == "committed"
    assert fake.holds["hold_1"]["commit"] == {
        "usage": USAGE, "model": "claude-sonnet-4-5-20250929", "request_id": "msg_1", "latency_ms": 900,
    }


def test_hold_releases_on_exception(fake, make):
    with pytest.raises(RuntimeError), make(fake.url).hold("support-bot", "claude-sonnet-4-5", 1, 1):
        raise RuntimeError("model call failed")

    assert fake.holds["hold_1"]["state"] == "released"


def test_hold_releases_when_no_usage_was_attached(fake, make):
    with make(fake.url).hold("support-bot", "claude-sonnet-4-5", 1, 1) as hold:
        pass

    assert hold.result.state == "released" and fake.holds["hold_1"]["state"] == "released"


def test_hold_commits_attached_usage_even_if_later_code_fails(fake, make):
    # The call happened and was billed; an error after it does not undo the spend.
    with pytest.raises(KeyError), make(fake.url).hold("support-bot", "claude-sonnet-4-5", 1, 1) as hold:
        hold.attach(USAGE, request_id="msg_1")
        raise KeyError("parsing the answer failed")

    assert fake.holds["hold_1"]["state"] == "committed"


def test_report_usage_sends_batches_of_at_most_1000(fake, make):
    events = [{"feature": "digest", "request_id": f"msg_{n}", "usage": USAGE} for n in range(2500)]

    report = make(fake.url).report_usage(events)

    assert fake.count("POST", "/api/v1/usage") == 3
    assert len(report.results) == 2500 and {r.status for r in report.results} == {"recorded"}
    assert make(fake.url).report_usage(events[0]).results[0].status == "duplicate"


def test_report_usage_keeps_each_request_under_the_body_limit(fake, make):
    big = {"note": "x" * 3000}  # 3 KB of metadata: 1,000 such events would be 3 MB
    events = [{"feature": "digest", "request_id": f"msg_{n}", "usage": USAGE, "metadata": big} for n in range(1000)]

    make(fake.url).report_usage(events)

    bodies = [json.dumps(body) for method, path, body in fake.requests if path == "/api/v1/usage"]
    assert len(bodies) == 4 and all(len(b) < 1024 * 1024 for b in bodies)
    assert len(fake.events) == 1000


def test_report_usage_needs_a_feature_and_a_request_id(fake, make):
    with pytest.raises(ValueError, match="'feature' and 'request_id'"):
        make(fake.url).report_usage({"feature": "digest", "usage": USAGE})


def test_the_local_estimate_is_the_documented_rule():
    # 36 ASCII characters = 12 tokens, plus 4 for the message.
    assert estimate_input_tokens(messages=[{"role": "user", "content": "x" * 36}]) == 16
    # An image is 1,600 tokens; a 6-character system prompt is 2.
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
    assert estimate_input_tokens(system="x" * 6, messages=[{"role": "user", "content": [image]}]) == 1606
    # CJK text: two tokens a character, where 3 characters a token would hold a third of it.
    assert estimate_input_tokens(messages=[{"role": "user", "content": "预算" * 50}]) == 204

def test_the_async_client_reserves_commits_and_holds(fake, tmp_path):
    async def scenario():
        async with AsyncComptroller(fake.url, "cpt_test_secret", backoff=0, spool_dir=str(tmp_path)) as client:
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

def test_the_async_client_fails_open_and_spools(fake, relay, tmp_path):
    async def scenario():
        client = AsyncComptroller(relay.url, "cpt_test_secret", backoff=0, breaker_seconds=0,
                                  flush_interval=0, spool_dir=str(tmp_path))
        await client.reserve("digest", "claude-haiku-4-5", 1, 1)
        relay.stop()
        allowance = await client.reserve("digest", "claude-haiku-4-5", 1, 1)
        result = await client.commit(allowance, USAGE, request_id="msg_async")
        relay.start()
        delivered = await client.flush()
        await client.close()
        return allowance, result, delivered

    allowance, result, delivered = run_async(scenario)

    # Delivered by flush(), or by the sender just before it
    assert allowance.offline and result.spooled and delivered <= 1
    assert "msg_async" in fake.events

def test_an_outage_costs_one_attempt_while_the_breaker_is_open(fake, relay, make):
    client = make(relay.url, fail_mode="open", breaker_seconds=60)
    relay.stop()
    assert client.reserve("support-bot", "claude-sonnet-4-5", 1, 1).offline
    relay.start()

    # Within the breaker window the client does not wait on Comptroller again.
    assert client.reserve("support-bot", "claude-sonnet-4-5", 1, 1).offline
    assert fake.count("POST", "/api/v1/allowances") == 0


def test_one_bad_event_is_quarantined_with_its_reason_and_the_rest_delivered(fake, make, tmp_path):
    # Given three usage events for the sender, one of which Comptroller refuses
    fake.unknown_models = {"claude-unheard-of"}
    client = make(fake.url)
    client.report_later([
        {"feature": "digest", "request_id": "msg_a", "model": "claude-haiku-4-5", "usage": USAGE},
        {"feature": "digest", "request_id": "msg_bad", "model": "claude-unheard-of", "usage": USAGE},
        {"feature": "digest", "request_id": "msg_c", "model": "claude-haiku-4-5", "usage": USAGE},
    ])

    # Then the batch is split: the good ones are recorded, the bad one set aside, none left waiting
    wait_for(lambda: len(client.spool) == 0)
    assert sorted(fake.events) == ["msg_a", "msg_c"] and client.spool.quarantined == 1
    with open(tmp_path / "spool" / "quarantine.jsonl") as fh:
        [record] = [json.loads(line) for line in fh]
    assert record["entry"]["event"]["request_id"] == "msg_bad"
    assert record["status"] == 400 and "invalid_request" in record["reason"]

def test_the_spool_is_delivered_in_the_background_once_comptroller_is_back(fake, relay, make):
    client = make(relay.url, fail_mode="open", flush_interval=0.05)
    relay.stop()
    client.commit(client.reserve("digest", "claude-haiku-4-5", 1, 1), USAGE, request_id="msg_idle")
    assert len(client.spool) == 1

    relay.start()  # and the service makes no further call

    wait_for(lambda: len(client.spool) == 0)
    assert "msg_idle" in fake.events

def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def abandon(spool: Spool) -> None:
    """Drop a spool's file lock without tidying up, as a killed process does."""
    spool._file.close()
    spool._file = None


# -- the breaker --------------------------------------------------------------------------------


def test_a_500_from_one_request_leaves_the_breaker_closed(fake, make):
    client = make(fake.url, breaker_seconds=60, max_retries=0)
    client.feature_policy("support-bot")
    fake.script = [("/allowances", 500, "server_error", None)]

    with pytest.raises(ComptrollerUnavailable):  # that one request: support-bot fails closed
        client.reserve("support-bot", "claude-sonnet-4-5", 1, 1)
    allowance = client.reserve("support-bot", "claude-sonnet-4-5", 1, 1)

    assert allowance.granted and not allowance.offline and not client.breaker.is_open
    assert fake.count("POST", "/api/v1/allowances") == 2


def test_a_4xx_never_opens_the_breaker(fake, make):
    client = make(fake.url, breaker_seconds=60)
    fake.script = [("/allowances", 404, "unknown_feature", None)]
    with pytest.raises(ApiError):
        client.reserve("support-bot", "claude-sonnet-4-5", 1, 1)

    assert not client.breaker.is_open and client.reserve("support-bot", "claude-sonnet-4-5", 1, 1).granted


def test_a_hung_server_costs_one_timeout_per_breaker_cycle(make):
    # Given a Comptroller that hangs on every allowance, and eight callers at once
    server = HTTPServer(threaded=True)
    server.start()
    fake = FakeComptroller(server).install()
    client = make(fake.url, fail_mode="open", timeout=0.3, breaker_seconds=0.6)
    fake.hang = 1.0

    def wave() -> list[float]:
        def call() -> float:
            started = time.monotonic()
            assert client.reserve("digest", "claude-haiku-4-5", 1, 1).offline
            return time.monotonic() - started
        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(lambda _: call(), range(8)))

    first = wave()  # all in flight together: they share one timeout
    during = wave()  # the breaker is open: nobody waits
    time.sleep(0.7)
    after = wave()  # the window is over: one caller probes, the others do not wait for it

    assert max(first) < 0.3 * 3 and max(during) < 0.1
    assert sorted(after)[6] < 0.1 and max(after) >= 0.3
    assert fake.count("POST", "/api/v1/allowances") == 8 + 1
    server.stop()


# -- the sender -----------------------------------------------------------------------------------


def test_a_commit_answered_429_waits_for_retry_after_then_goes(fake, make):
    client = make(fake.url)
    allowance = client.reserve("support-bot", "claude-sonnet-4-5", 1, 1)
    fake.script = [("/allowances/hold_1/commit", 429, "rate_limited", "0.2")]

    started = time.monotonic()
    client.commit_later(allowance, USAGE, request_id="msg_1")
    handed_over = time.monotonic() - started

    wait_for(lambda: len(client.spool) == 0)
    assert fake.holds["hold_1"]["state"] == "committed"
    assert handed_over < 0.05 and fake.count("POST", "/api/v1/allowances/hold_1/commit") == 2


def test_a_commit_still_rate_limited_stays_in_the_spool(fake, make):
    client = make(fake.url, max_retries=1, max_backoff=0.01)
    allowance = client.reserve("support-bot", "claude-sonnet-4-5", 1, 1)
    fake.script = [("/allowances/hold_1/commit", 429, "rate_limited", "30")] * 4

    client.commit_later(allowance, USAGE, request_id="msg_1")
    wait_for(lambda: fake.count("POST", "/api/v1/allowances/hold_1/commit") >= 4)

    assert len(client.spool) == 1 and client.spool.quarantined == 0
    assert client.flush() == 1 and fake.holds["hold_1"]["state"] == "committed"


def test_a_commit_of_a_model_the_server_does_not_know_is_retried_with_the_holds_model(fake, make):
    fake.unknown_models = {"claude-sonnet-4-5-20991231"}
    client = make(fake.url)
    allowance = client.reserve("support-bot", "claude-sonnet-4-5", 1, 1)

    client.commit_later(allowance, USAGE, model="claude-sonnet-4-5-20991231", request_id="msg_1")

    wait_for(lambda: fake.holds["hold_1"]["state"] == "committed")
    commit = fake.holds["hold_1"]["commit"]
    assert "model" not in commit and commit["metadata"]["reported_model"] == "claude-sonnet-4-5-20991231"


def test_close_delivers_even_while_the_breaker_is_open(fake, relay, make):
    client = make(relay.url, breaker_seconds=60)
    allowances = [client.reserve("support-bot", "claude-sonnet-4-5", 1, 1) for _ in range(3)]
    relay.stop()
    for n, allowance in enumerate(allowances):
        client.commit_later(allowance, USAGE, request_id=f"msg_{n}")
    wait_for(lambda: client.breaker.is_open)
    relay.start()

    client.close()

    assert [h["state"] for h in fake.holds.values()] == ["committed"] * 3


def test_two_processes_share_a_spool_directory_without_erasing_each_other(tmp_path):
    # Given two live processes spooling into the same directory
    one, two = Spool(str(tmp_path)), Spool(str(tmp_path))
    one.put({"kind": "release", "hold_id": "hold_1"})
    two.put({"kind": "release", "hold_id": "hold_2"})
    two.ack(two.peek())

    # Then a third cannot take a live process's reports, only an ended one's
    three = Spool(str(tmp_path))
    assert len(three) == 0
    abandon(one)
    assert three.adopt() == 1 and three.peek()[0]["hold_id"] == "hold_1"


def test_a_spool_left_by_an_ended_process_is_delivered_in_the_background(fake, make, tmp_path):
    left = Spool(str(tmp_path / "spool"))
    left.put({"kind": "usage", "event": {"feature": "digest", "request_id": "msg_left", "model": "claude-haiku-4-5",
                                          "usage": USAGE, "occurred_at": "2026-11-20T10:00:00Z"}})
    abandon(left)

    make(fake.url)  # a new process starts and makes no call

    wait_for(lambda: "msg_left" in fake.events)
    assert fake.events["msg_left"]["occurred_at"] == "2026-11-20T10:00:00Z"


# -- configuration and answers -------------------------------------------------------------------------


def test_the_client_is_configured_from_the_environment(fake, monkeypatch, tmp_path):
    monkeypatch.setenv("COMPTROLLER_URL", fake.url)
    monkeypatch.setenv("COMPTROLLER_API_KEY", "cpt_test_secret")
    monkeypatch.setenv("COMPTROLLER_SPOOL_DIR", str(tmp_path))

    client = Comptroller(backoff=0)

    assert client.reserve("support-bot", "claude-sonnet-4-5", 1, 1).granted
    assert client.spool.directory.startswith(str(tmp_path))
    client.close()
    monkeypatch.delenv("COMPTROLLER_URL")
    with pytest.raises(ValueError, match="COMPTROLLER_URL"):
        Comptroller()


def test_a_redirect_is_an_error_naming_the_url_to_use(httpserver: HTTPServer, make):
    httpserver.expect_request("/api/v1/allowances").respond_with_response(
        Response(status=301, headers={"Location": "https://comptroller.example/api/v1/allowances"})
    )

    with pytest.raises(ComptrollerRedirect) as caught:
        make(httpserver.url_for("/").rstrip("/")).reserve("support-bot", "claude-sonnet-4-5", 1, 1)

    assert caught.value.suggested_url == "https://comptroller.example"
    assert "'https://comptroller.example'" in str(caught.value) and "301" in str(caught.value)


def test_a_denial_that_exceeds_what_remains_says_by_how_much(fake, make):
    fake.deny = True
    fake.deny_reason = "exceeds_remaining"

    with pytest.raises(BudgetExceeded) as caught:
        make(fake.url).reserve("support-bot", "claude-sonnet-4-5", 1200, 60_000)

    error = caught.value
    assert error.reason == "exceeds_remaining"
    assert (error.requested_usd, error.remaining_usd) == (Decimal("0.904"), Decimal("0.01"))
    assert "may cost $0.904000, $0.010000 remains" in str(error)


def test_the_sender_keeps_up_with_callers_on_many_threads(fake, make):
    client = make(fake.url)
    allowances = [client.reserve("support-bot", "claude-sonnet-4-5", 1, 1) for _ in range(20)]
    threads = [threading.Thread(target=client.commit_later, args=(a, USAGE), kwargs={"request_id": a.id})
               for a in allowances]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    wait_for(lambda: len(client.spool) == 0)
    assert all(h["state"] == "committed" for h in fake.holds.values())
    assert all(fake.count("POST", f"/api/v1/allowances/{a.id}/commit") == 1 for a in allowances)


def test_an_older_server_that_refuses_the_newer_fields_is_asked_without_them(fake, make):
    fake.script = [("/allowances", 400, "invalid_request", None)]
    fake.error_details = {"max_web_searches": ["Unknown field."]}
    client = make(fake.url)

    first = client.reserve("support-bot", "claude-sonnet-4-5", 1, 1, max_web_searches=3)
    second = client.reserve("support-bot", "claude-sonnet-4-5", 1, 1, max_web_searches=3)

    assert first.granted and second.granted
    bodies = [body for method, path, body in fake.requests if path == "/api/v1/allowances"]
    assert [("max_web_searches" in b) for b in bodies] == [True, False, False]


def _pool(http) -> tuple[int, int]:
    pool = http._transport._pool  # httpx's HTTP(S) transport and its httpcore pool
    return pool._max_connections, pool._max_keepalive_connections


def test_the_httpx_pools_keep_alive_as_many_connections_as_they_open(tmp_path):
    """httpcore 1.0.9 closes an idle connection whenever its pool holds more connections than it
    keeps alive, even one it has just handed to a waiting request, which then fails or hangs
    until its timeout (encode/httpcore#1110): with as many kept alive as opened, it never does.
    The pools serve the client behind a proxy and AsyncComptroller; the direct path has its own."""
    client = Comptroller("http://127.0.0.1:9", "cpt_test_secret", spool_dir=str(tmp_path / "a"), flush_interval=0)
    try:
        opened, kept = _pool(client._sync_http)
        assert kept >= opened
    finally:
        client.close(timeout=1)
    async_client = AsyncComptroller("http://127.0.0.1:9", "cpt_test_secret", spool_dir=str(tmp_path / "b"),
                                    flush_interval=0)
    try:
        opened, kept = _pool(async_client._http)
        assert kept >= opened
    finally:
        run_async(lambda: async_client.close(timeout=1))
