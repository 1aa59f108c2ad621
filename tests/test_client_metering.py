"""The worst case and the meter: pure functions over request and response bodies (shared with the gateway)."""

from __future__ import annotations

import gzip
import json

from comptroller_client.estimate import (
    DEFAULT_INPUT_CEILING,
    WEB_SEARCH_RESULT_TOKENS,
    expected_ttl_seconds,
    size_request,
    worst_case,
)
from comptroller_client.metering import BatchResultsMeter, MessageMeter

ASK = {"role": "user", "content": "Summarise the attached contract."}
URL_DOC = {"type": "document", "source": {"type": "url", "url": "https://example.com/contract.pdf"}}


def sse(*events: dict) -> bytes:
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()


START = {"type": "message_start", "message": {"id": "msg_1", "model": "claude-sonnet-4-5-20250929",
                                               "usage": {"input_tokens": 900, "output_tokens": 1}}}


def delta(text: str) -> dict:
    return {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}


def test_a_document_by_url_cannot_be_sized_locally():
    body = {"model": "claude-sonnet-4-5", "max_tokens": 1024,
            "messages": [{"role": "user", "content": [URL_DOC, {"type": "text", "text": "Summarise."}]}]}

    size = size_request(body)

    assert size.unsized == ("document_url",) and not size.sure
    # Counted by Anthropic, the hold is the count; not counted, it is the ceiling.
    assert worst_case(body, size=size, counted_input_tokens=41_000).input_tokens == 41_000
    uncounted = worst_case(body, size=size)
    assert (uncounted.input_tokens, uncounted.basis) == (DEFAULT_INPUT_CEILING, "ceiling")
    assert worst_case(body, size=size, input_ceiling=50_000).input_tokens == 50_000


def test_web_search_holds_its_searches_and_their_results():
    body = {"model": "claude-sonnet-4-5", "max_tokens": 1024, "messages": [ASK],
            "tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}]}

    worst = worst_case(body)

    assert worst.max_web_searches == 3
    assert worst.input_tokens == size_request(body).input_tokens + 3 * WEB_SEARCH_RESULT_TOKENS
    assert worst.allowance_fields()["max_web_searches"] == 3


def test_code_execution_grows_without_bound_so_it_holds_the_ceiling():
    body = {"model": "claude-sonnet-4-5", "max_tokens": 1024, "messages": [ASK],
            "tools": [{"type": "code_execution_20250825", "name": "code_execution"}]}

    assert worst_case(body, input_ceiling=120_000).input_tokens == 120_000


def test_cache_writes_are_held_at_the_longest_ttl_asked():
    system = [{"type": "text", "text": "You are terse. " * 40, "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    body = {"model": "claude-sonnet-4-5", "max_tokens": 64, "system": system, "messages": [ASK]}

    worst = worst_case(body)

    assert worst.cache_write_1h_tokens == worst.input_tokens and worst.cache_write_5m_tokens == 0


def test_geo_speed_and_a_long_call_reach_the_allowance():
    body = {"model": "claude-opus-4-6", "max_tokens": 32_000, "messages": [ASK], "inference_geo": "us",
            "speed": "fast"}

    fields = worst_case(body).allowance_fields()

    assert (fields["inference_geo"], fields["speed"]) == ("us", "fast")
    assert expected_ttl_seconds(body) == 60 + 32_000 // 20
    assert expected_ttl_seconds({**body, "max_tokens": 1024}) is None  # the server's 600 s suffice


def test_the_meter_reads_a_stream_split_anywhere():
    body = sse(START, delta("Hello"), delta(" world"),
               {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 12}},
               {"type": "message_stop"})
    meter = MessageMeter(content_type="text/event-stream")
    for i in range(0, len(body), 7):
        meter.feed(body[i:i + 7])

    commit = meter.close().commit_body(input_estimate=5)

    assert commit["usage"] == {"input_tokens": 900, "output_tokens": 12}
    assert (commit["model"], commit["request_id"], commit["stop_reason"]) == (
        "claude-sonnet-4-5-20250929", "msg_1", "end_turn")
    assert commit["streamed"] is True and commit["ttft_ms"] is not None and "metadata" not in commit


def test_a_stream_cut_short_charges_what_was_received():
    meter = MessageMeter(content_type="text/event-stream")
    meter.feed(sse(START, delta("x" * 30), delta("y")))

    commit = meter.close().commit_body(input_estimate=5)

    assert commit["usage"]["output_tokens"] == 11  # 31 characters at 3 a token, rounded up
    assert commit["metadata"] == {"usage_estimated": "output"}


def test_an_error_before_message_start_bills_nothing_and_an_unread_body_charges_the_input():
    failed = MessageMeter(content_type="text/event-stream")
    failed.feed(sse({"type": "error", "error": {"type": "overloaded_error"}}))
    assert failed.close().commit_body(input_estimate=5) is None

    unread = MessageMeter(content_type="application/json").close().commit_body(input_estimate=321)
    assert unread["usage"] == {"input_tokens": 321, "output_tokens": 0}
    assert unread["metadata"] == {"usage_estimated": "input"}


def test_a_gzipped_json_message_is_metered():
    message = {"id": "msg_2", "model": "claude-haiku-4-5-20251001", "stop_reason": "max_tokens",
               "usage": {"input_tokens": 10, "output_tokens": 64, "server_tool_use": {"web_search_requests": 2}}}
    data = gzip.compress(json.dumps(message).encode())
    meter = MessageMeter(content_type="application/json", content_encoding="gzip")
    meter.feed(data[:9])
    meter.feed(data[9:])

    commit = meter.close().commit_body(input_estimate=1)

    assert commit["usage"]["server_tool_use"] == {"web_search_requests": 2}
    assert commit["stop_reason"] == "max_tokens" and commit["streamed"] is False


def test_batch_results_become_usage_events_line_by_line():
    ok = {"custom_id": "a", "result": {"type": "succeeded", "message": {
        "id": "msg_a", "model": "claude-haiku-4-5-20251001", "stop_reason": "end_turn",
        "usage": {"input_tokens": 5, "output_tokens": 7}}}}
    bad = {"custom_id": "b", "result": {"type": "errored", "error": {"type": "invalid_request_error"}}}
    data = (json.dumps(ok) + "\n" + json.dumps(bad) + "\n").encode()
    meter = BatchResultsMeter(batch_id="msgbatch_1", feature="digest")

    events = meter.feed(data[:20]) + meter.feed(data[20:]) + meter.close()

    assert [e["request_id"] for e in events] == ["msg_a"]
    assert events[0]["usage"]["service_tier"] == "batch"
    assert events[0]["metadata"] == {"custom_id": "a", "batch_id": "msgbatch_1"}
    assert meter.counts == {"succeeded": 1, "errored": 1}
