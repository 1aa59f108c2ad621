"""The comptroller-client's own overhead per governed call, with the network taken out.

Both Comptroller and the Messages API are in-process ``httpx.MockTransport``
handlers that return prebuilt bytes, so what is left is the work done in
this process: the anthropic SDK's request building and response parsing
(the bare call), plus — for the governed call — the input-token estimate,
the reservation and the commit through httpx, and the bookkeeping around
them. The overhead is governed minus bare, per call, in CPU time of the
calling thread (so other work on a busy machine does not count).

    .venv/bin/python bench/client_overhead.py [--calls 1000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import anthropic
import httpx
from comptroller_client import Comptroller, governed
from comptroller_client.estimate import estimate_input_tokens

USAGE = {"input_tokens": 412, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
         "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
         "output_tokens": 180, "service_tier": "standard"}
MESSAGE = json.dumps({
    "id": "msg_bench", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
    "content": [{"type": "text", "text": "word " * 180}], "stop_reason": "end_turn", "stop_sequence": None,
    "usage": USAGE,
}).encode()
SSE = "".join(
    f"event: {name}\ndata: {json.dumps(data)}\n\n"
    for name, data in [
        ("message_start", {"type": "message_start", "message": {**json.loads(MESSAGE), "content": [],
                                                                 "usage": {**USAGE, "output_tokens": 1}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        *[("content_block_delta", {"type": "content_block_delta", "index": 0,
                                   "delta": {"type": "text_delta", "text": "word "}})] * 60,
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                           "usage": {"output_tokens": 180}}),
        ("message_stop", {"type": "message_stop"}),
    ]
).encode()
FEATURE = json.dumps({"key": "bench", "fail_mode": "open", "default_model": "claude-sonnet-4-5",
                      "allowed_models": [], "fallback_models": [], "max_tokens_cap": None,
                      "interactive": True, "active": True, "budgets": []}).encode()
BUDGET = {"id": "bud_1", "name": "Bench", "scope": "feature", "period": "month", "enforcement": "block",
          "window_start": "2026-11-01T00:00:00Z", "window_end": "2026-12-01T00:00:00Z",
          "limit_usd": "100.00", "spent_usd": "12.50", "reserved_usd": "0.40", "remaining_usd": "87.10",
          "limit_tokens": None, "spent_tokens": 812000, "reserved_tokens": 9000, "remaining_tokens": None,
          "binding": False}
ALLOWANCE = json.dumps({"id": "hold_1", "granted": True, "decision": "granted", "reason": None,
                        "model": "claude-sonnet-4-5", "max_tokens": 1024, "clamped": False,
                        "reserved_usd": "0.019560", "reserved_tokens": 2200,
                        "expires_at": "2026-11-23T12:10:00Z", "budgets": [BUDGET]}).encode()
COMMIT = json.dumps({"id": "hold_1", "state": "committed", "cost_usd": "0.003936", "released_usd": "0.015624",
                     "usage_event_id": "use_1", "late": False, "budgets": [BUDGET]}).encode()
MESSAGES = [{"role": "user", "content": "Summarise this support ticket for the on-call engineer. " * 20}]
JSON_HEADERS = {"content-type": "application/json"}


def anthropic_handler(request: httpx.Request) -> httpx.Response:
    if json.loads(request.content).get("stream"):
        return httpx.Response(200, content=SSE, headers={"content-type": "text/event-stream"})
    return httpx.Response(200, content=MESSAGE, headers=JSON_HEADERS)


def comptroller_handler(request: httpx.Request) -> httpx.Response:
    path = request.url.path
    if path.endswith("/commit"):
        return httpx.Response(200, content=COMMIT, headers=JSON_HEADERS)
    if path.endswith("/allowances"):
        return httpx.Response(201, content=ALLOWANCE, headers=JSON_HEADERS)
    return httpx.Response(200, content=FEATURE, headers=JSON_HEADERS)


def per_call_us(fn: Callable[[], object], calls: int) -> float:
    # CPU time of this thread, not wall time: a busy machine descheduling us is not overhead.
    start = time.thread_time_ns()
    for _ in range(calls):
        fn()
    return (time.thread_time_ns() - start) / calls / 1000


def compare(cases: dict[str, Callable[[], object]], calls: int, rounds: int) -> dict[str, float]:
    """Return each case's best round (µs per call), the rounds interleaved so drift hits all alike."""
    for fn in cases.values():
        per_call_us(fn, min(100, calls))
    best = {name: float("inf") for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            best[name] = min(best[name], per_call_us(fn, calls))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    sdk = anthropic.Anthropic(api_key="sk-bench", max_retries=0,
                              http_client=httpx.Client(transport=httpx.MockTransport(anthropic_handler)))
    cpt = Comptroller("http://comptroller.bench", "cpt_bench", transport=httpx.MockTransport(comptroller_handler))
    wrapped = governed(sdk, cpt, feature="bench")
    params = {"model": "claude-sonnet-4-5", "max_tokens": 1024, "messages": MESSAGES}

    def bare_stream() -> None:
        with sdk.messages.stream(**params) as stream:
            stream.until_done()

    def governed_stream() -> None:
        with wrapped.messages.stream(**params) as stream:
            stream.until_done()

    allowance = cpt.reserve("bench", "claude-sonnet-4-5", 400, 1024)
    creates = compare({
        "bare messages.create": lambda: sdk.messages.create(**params),
        "governed messages.create": lambda: wrapped.messages.create(**params),
    }, args.calls, args.rounds)
    streams = compare({
        "bare messages.stream (60 deltas)": bare_stream,
        "governed messages.stream (60 deltas)": governed_stream,
    }, max(1, args.calls // 4), args.rounds)
    parts = compare({
        "  local token estimate": lambda: estimate_input_tokens(messages=MESSAGES),
        "  reserve (httpx + client)": lambda: cpt.reserve("bench", "claude-sonnet-4-5", 400, 1024),
        "  commit (httpx + client)": lambda: cpt.commit(allowance, USAGE, request_id="msg_bench"),
    }, args.calls, args.rounds)
    rows = {**creates, **streams, "governed call's parts:": None, **parts}
    width = max(len(name) for name in rows)
    print(f"{'':{width}}  CPU µs/call  (best of {args.rounds} interleaved rounds of {args.calls})")
    for name, value in rows.items():
        print(f"{name:{width}}" + ("" if value is None else f"  {value:8.1f}"))
    (create_bare, create_gov), (stream_bare, stream_gov) = creates.values(), streams.values()
    print()
    print(f"overhead per governed create: {create_gov - create_bare:7.1f} µs "
          f"(governed/bare = {create_gov / create_bare:.2f}, network excluded)")
    print(f"overhead per governed stream: {stream_gov - stream_bare:7.1f} µs "
          f"(governed/bare = {stream_gov / stream_bare:.2f}, network excluded)")


if __name__ == "__main__":
    main()
