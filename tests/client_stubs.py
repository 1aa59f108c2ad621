"""Local stand-ins for the client tests: the Messages API, a fake Comptroller, and a relay to unplug.

``MessagesStub`` answers the real ``anthropic`` SDK the way api.anthropic.com
does: JSON messages with ``usage``, SSE streams (message_start, ping,
content_block_start/delta/stop, message_delta with the cumulative usage,
message_stop), ``count_tokens`` and message batches with JSONL results.
Its usage is deterministic so tests can assert the exact ledger rows:

- input tokens: ``len(json of messages + system) // 4 + 7``, or
  ``input_tokens`` when set;
- output: one token per word of ``reply`` (each word one stream delta), cut
  at ``max_tokens`` with ``stop_reason="max_tokens"``.

A message containing ``FAIL_CALL`` gets a 500 ``api_error``, as a failing
model call would; a stream whose message contains ``OVERLOAD_STREAM`` opens
and then sends an ``overloaded_error`` event before ``message_start``.

A document by URL or file id weighs ``DOCUMENT_TOKENS`` input tokens, the
same in ``count_tokens`` as in the call's usage, as a real PDF would.
``dated`` maps a model to the id the stub answers with (a dated id the
price table may not know yet).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from werkzeug import Request, Response

DATED = {
    "claude-sonnet-4-5": "claude-sonnet-4-5-20250929",
    "claude-haiku-4-5": "claude-haiku-4-5-20251001",
    "claude-opus-4-1": "claude-opus-4-1-20250805",
}
DOCUMENT_TOKENS = 40_000
REPLY = (
    "Budgets are a promise you make to your future self, and every token is a small "
    "payment on it, so ask before you spend and write down what you spent afterwards"
)


@dataclass
class Call:
    path: str
    body: dict[str, Any]


@dataclass
class MessagesStub:
    """A Messages API on a pytest-httpserver; ``calls`` records every model request."""

    server: Any
    reply: str = REPLY
    input_tokens: int | None = None
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    calls: list[Call] = field(default_factory=list)
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    _ids: Any = field(default_factory=itertools.count)
    dated: dict[str, str] = field(default_factory=lambda: dict(DATED))
    event_delay: float = 0.0  # seconds between SSE events, to close a stream while it is still coming

    def install(self) -> MessagesStub:
        self.server.expect_request(re.compile(r"/v1/.*")).respond_with_handler(self.handle)
        return self

    @property
    def base_url(self) -> str:
        return self.server.url_for("/").rstrip("/")

    @property
    def model_calls(self) -> list[Call]:
        return [c for c in self.calls if c.path in ("/v1/messages", "/v1/messages/batches")]

    # -- answers -----------------------------------------------------------------------

    def count_input(self, body: dict[str, Any]) -> int:
        if self.input_tokens is not None:
            return self.input_tokens
        text = json.dumps(body.get("messages", [])) + json.dumps(body.get("system", ""))
        documents = text.count('"type": "url"') + text.count('"type": "file"')
        return len(text) // 4 + 7 + documents * DOCUMENT_TOKENS

    def usage(self, body: dict[str, Any], output_tokens: int, tier: str = "standard") -> dict[str, Any]:
        return {
            "input_tokens": self.count_input(body),
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation": {
                "ephemeral_5m_input_tokens": self.cache_creation_input_tokens,
                "ephemeral_1h_input_tokens": 0,
            },
            "output_tokens": output_tokens,
            "server_tool_use": None,
            "service_tier": tier,
        }

    def words(self, body: dict[str, Any]) -> tuple[list[str], str]:
        words = self.reply.split(" ")
        if len(words) > body["max_tokens"]:
            return words[: body["max_tokens"]], "max_tokens"
        return words, "end_turn"

    def message(self, body: dict[str, Any], tier: str = "standard") -> dict[str, Any]:
        words, stop = self.words(body)
        return {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": self.dated.get(body["model"], body["model"]),
            "content": [{"type": "text", "text": " ".join(words)}],
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": self.usage(body, len(words), tier),
        }

    def sse(self, body: dict[str, Any]) -> list[str]:
        message = self.message(body)
        words, stop = self.words(body)
        start = {**message, "content": [], "stop_reason": None,
                 "usage": {**message["usage"], "output_tokens": 1}}
        events: list[tuple[str, dict[str, Any]]] = [
            ("message_start", {"type": "message_start", "message": start}),
            ("content_block_start", {"type": "content_block_start", "index": 0,
                                     "content_block": {"type": "text", "text": ""}}),
            ("ping", {"type": "ping"}),
        ]
        for i, word in enumerate(words):
            text = word if i == 0 else f" {word}"
            events.append(("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                   "delta": {"type": "text_delta", "text": text}}))
        usage = {k: v for k, v in message["usage"].items() if k not in ("service_tier", "cache_creation")}
        events += [
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("message_delta", {"type": "message_delta",
                               "delta": {"stop_reason": stop, "stop_sequence": None}, "usage": usage}),
            ("message_stop", {"type": "message_stop"}),
        ]
        return [f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events]

    def paced(self, events: list[str]) -> Any:
        for event in events:
            yield event.encode()
            if self.event_delay:
                time.sleep(self.event_delay)

    def handle(self, request: Request) -> Response:
        body = request.get_json(silent=True) or {}
        self.calls.append(Call(request.path, body))
        path = request.path
        if path == "/v1/messages/count_tokens":
            return self.json({"input_tokens": self.count_input(body)})
        if path == "/v1/messages":
            if "FAIL_CALL" in json.dumps(body.get("messages")):
                return self.json({"type": "error", "error": {"type": "api_error", "message": "Internal error"}}, 500)
            if body.get("stream") and "OVERLOAD_STREAM" in json.dumps(body.get("messages")):
                error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
                return Response(f"event: error\ndata: {json.dumps(error)}\n\n", content_type="text/event-stream")
            if body.get("stream"):
                return Response(self.paced(self.sse(body)), content_type="text/event-stream",
                                headers={"request-id": f"req_{next(self._ids)}"}, direct_passthrough=True)
            return self.json(self.message(body))
        if path == "/v1/messages/batches" and request.method == "POST":
            return self.json(self.create_batch(body["requests"]))
        match = re.fullmatch(r"/v1/messages/batches/([^/]+)(/results)?", path)
        if match and match.group(1) in self.batches:
            batch = self.batches[match.group(1)]
            if match.group(2):
                return Response("".join(json.dumps(r) + "\n" for r in batch["results"]),
                                content_type="application/binary")
            return self.json(batch["batch"])
        return self.json({"type": "error", "error": {"type": "not_found_error", "message": path}}, 404)

    def create_batch(self, requests: list[dict[str, Any]]) -> dict[str, Any]:
        batch_id = f"msgbatch_{uuid.uuid4().hex[:24]}"
        results = []
        for request in requests:
            if "fail" in request["custom_id"]:
                result = {"type": "errored", "error": {"type": "error", "error": {
                    "type": "invalid_request_error", "message": "bad request"}}}
            else:
                result = {"type": "succeeded", "message": self.message(request["params"], tier="batch")}
            results.append({"custom_id": request["custom_id"], "result": result})
        succeeded = sum(1 for r in results if r["result"]["type"] == "succeeded")
        batch = {
            "id": batch_id, "type": "message_batch", "processing_status": "ended",
            "request_counts": {"processing": 0, "succeeded": succeeded, "errored": len(results) - succeeded,
                               "canceled": 0, "expired": 0},
            "created_at": "2026-11-23T12:00:00Z", "ended_at": "2026-11-23T12:05:00Z",
            "expires_at": "2026-11-24T12:00:00Z", "archived_at": None, "cancel_initiated_at": None,
            "results_url": self.server.url_for(f"/v1/messages/batches/{batch_id}/results"),
        }
        self.batches[batch_id] = {"batch": batch, "results": results}
        return batch

    @staticmethod
    def json(data: Any, status: int = 200) -> Response:
        return Response(json.dumps(data), status=status, content_type="application/json",
                        headers={"request-id": f"req_{uuid.uuid4().hex[:12]}"})


class TcpRelay:
    """Forward a local port to ``target``; ``stop()`` makes it refuse connections, ``start()`` heals it.

    The client under test keeps one base URL while its server "goes down" and
    "comes back", exactly as a service sees an outage.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self._running = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> TcpRelay:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.05)
        self._listener, self._running = listener, True
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def stop(self) -> None:
        self._running = False
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while self._running:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


@dataclass
class FakeComptroller:
    """Comptroller's allowance, usage and feature endpoints, in memory, for the client's unit tests.

    ``fail_next`` is a list of statuses to answer before doing anything;
    ``lose_next`` answers 503 *after* doing the work, as when a response is
    lost on the way back — the retry must not hold or commit twice.
    """

    server: Any
    secret: str = "cpt_test_secret"
    policies: dict[str, dict[str, Any]] = field(default_factory=dict)
    deny: bool = False
    deny_reason: str = "budget_exhausted"
    grant_model: str | None = None
    fail_next: list[int] = field(default_factory=list)
    # (path prefix, status, code, Retry-After) answered once each, before doing anything
    script: list[tuple[str, int, str, str | None]] = field(default_factory=list)
    unknown_models: set[str] = field(default_factory=set)
    hang: float = 0.0  # seconds to sleep before answering an allowance
    error_details: dict[str, Any] = field(default_factory=dict)  # the scripted errors' details
    lose_next: int = 0
    holds: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_key: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str, Any]] = field(default_factory=list)

    def install(self) -> FakeComptroller:
        self.server.expect_request(re.compile(r"/api/v1/.*")).respond_with_handler(self.handle)
        return self

    @property
    def url(self) -> str:
        return self.server.url_for("/").rstrip("/")

    def count(self, method: str, prefix: str) -> int:
        return sum(1 for m, p, _ in self.requests if m == method and p.startswith(prefix))

    def budget(self, binding: bool = False) -> dict[str, Any]:
        return {"id": "bud_1", "name": "Support monthly", "scope": "feature", "period": "month",
                "enforcement": "block", "window_start": "2026-11-01T00:00:00Z",
                "window_end": "2026-12-01T00:00:00Z", "limit_usd": "10.00", "spent_usd": "9.99",
                "reserved_usd": "0.00", "remaining_usd": "0.01", "limit_tokens": None,
                "spent_tokens": 812000, "reserved_tokens": 0, "remaining_tokens": None,
                "binding": binding}

    def handle(self, request: Request) -> Response:
        body = request.get_json(silent=True)
        self.requests.append((request.method, request.path, body))
        if request.headers.get("Authorization") != f"Bearer {self.secret}":
            return self.error(401, "unauthenticated", "Missing or unknown API key.")
        if self.fail_next:
            return self.error(self.fail_next.pop(0), "unavailable", "try again", retry_after="0")
        path = request.path[len("/api/v1"):]
        for index, (prefix, status, code, retry_after) in enumerate(self.script):
            if path.startswith(prefix):
                del self.script[index]
                return self.error(status, code, "scripted", details=self.error_details, retry_after=retry_after)
        if self.hang and path == "/allowances":
            time.sleep(self.hang)
        response = self.route(request.method, request.path[len("/api/v1"):], body)
        if self.lose_next and request.method == "POST":
            self.lose_next -= 1
            return self.error(503, "unavailable", "response lost")
        return response

    def route(self, method: str, path: str, body: Any) -> Response:
        if method == "GET" and path.startswith("/features/"):
            policy = self.policies.get(path.split("/")[-1])
            return MessagesStub.json(policy) if policy else self.error(404, "not_found", "No feature.")
        if method == "POST" and path == "/allowances":
            return self.reserve(body)
        match = re.fullmatch(r"/allowances/([^/]+)/(commit|release)", path)
        if method == "POST" and match:
            hold = self.holds.get(match.group(1))
            if hold is None:
                return self.error(404, "not_found", "No such hold.")
            return self.commit(hold, body) if match.group(2) == "commit" else self.release(hold)
        if method == "POST" and path == "/usage":
            return self.usage(body)
        return self.error(404, "not_found", path)

    def reserve(self, body: dict[str, Any]) -> Response:
        if body["idempotency_key"] in self.by_key:
            return MessagesStub.json(self.by_key[body["idempotency_key"]], 201)
        if self.deny:
            answer = {"id": None, "granted": False, "decision": "denied", "reason": self.deny_reason,
                      "requested_usd": "0.904000", "remaining_usd": "0.010000",
                      "model": body["model"], "max_tokens": body["max_tokens"], "clamped": False,
                      "reserved_usd": "0.000000", "reserved_tokens": 0, "expires_at": None,
                      "retry_after": "2026-12-01T00:00:00Z", "budgets": [self.budget(binding=True)]}
            return MessagesStub.json(answer, 200)
        cap = (self.policies.get(body["feature"]) or {}).get("max_tokens_cap")
        max_tokens = min(body["max_tokens"], cap) if cap else body["max_tokens"]
        hold_id = f"hold_{len(self.holds) + 1}"
        answer = {"id": hold_id, "granted": True,
                  "decision": "downgraded" if self.grant_model else "granted", "reason": None,
                  "model": self.grant_model or body["model"], "max_tokens": max_tokens,
                  "clamped": max_tokens < body["max_tokens"], "reserved_usd": "0.019560",
                  "reserved_tokens": body["input_tokens"] + max_tokens,
                  "expires_at": "2026-11-23T12:10:00Z", "budgets": [self.budget()]}
        self.holds[hold_id] = {"request": body, "state": "held", "commit": None, "answer": None}
        self.by_key[body["idempotency_key"]] = answer
        return MessagesStub.json(answer, 201)

    def commit(self, hold: dict[str, Any], body: dict[str, Any]) -> Response:
        if body.get("model") in self.unknown_models:
            return self.error(400, "unknown_model", "No price for this model.", details={"model": body["model"]})
        if hold["state"] == "released":
            return self.error(409, "conflict", "The hold was released.")
        if hold["state"] == "committed":
            if hold["commit"] != body:
                return self.error(409, "conflict", "A different commit was recorded.")
            return MessagesStub.json(hold["answer"])
        hold.update(state="committed", commit=body)
        hold["answer"] = {"id": next(k for k, v in self.holds.items() if v is hold), "state": "committed",
                          "cost_usd": "0.010500", "released_usd": "0.009060",
                          "usage_event_id": f"use_{len(self.holds)}", "late": False, "budgets": []}
        return MessagesStub.json(hold["answer"])

    def release(self, hold: dict[str, Any]) -> Response:
        if hold["state"] == "committed":
            return self.error(409, "conflict", "The hold was committed.")
        hold["state"] = "released"
        return MessagesStub.json({"id": next(k for k, v in self.holds.items() if v is hold),
                                  "state": "released"})

    def usage(self, body: dict[str, Any]) -> Response:
        events = body.get("events", [body])
        for index, event in enumerate(events):
            if not event.get("feature") or "usage" not in event or event.get("model") in self.unknown_models:
                return self.error(400, "invalid_request", "Invalid event.", details={"index": index})
        results = []
        for event in events:
            duplicate = event["request_id"] in self.events
            self.events.setdefault(event["request_id"], event)
            results.append({"request_id": event["request_id"],
                            "status": "duplicate" if duplicate else "recorded",
                            "cost_usd": "0.010500", "usage_event_id": f"use_{event['request_id']}"})
        return MessagesStub.json({"results": results}, 201)

    @staticmethod
    def error(status: int, code: str, message: str, details: Any = None, retry_after: str | None = None) -> Response:
        headers = {"Retry-After": retry_after} if retry_after else {}
        return Response(json.dumps({"error": {"code": code, "message": message, "details": details or {}}}),
                        status=status, content_type="application/json", headers=headers)
