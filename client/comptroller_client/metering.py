"""Meter a Messages API response from its bytes, as they stream through: what the call consumed.

No HTTP machinery and no Django: feed it the body's bytes as they arrive
(``MessageMeter.feed``), then ``close()`` it when the body ended or was
abandoned, and turn the result into a commit (``Metered.commit_body``). The
client's transport and the server's gateway both sit on a byte stream
between a caller and Anthropic, so both use this.

- JSON (``application/json``): the usage, model, id and stop reason of the
  message, read once the body is complete.
- SSE (``text/event-stream``): ``message_start`` (usage so far, model, id),
  ``content_block_delta`` (time to first token, what was received),
  ``message_delta`` (cumulative usage, stop reason), ``error``.

A response cut short still cost money. Closed before ``message_delta``:
``message_start``'s usage with ``output_tokens`` raised to what was
received (one per delta at least, the text at ``CHARS_PER_TOKEN``), marked
``estimated="output"``. Nothing readable at all (closed before
``message_start``, or a JSON body never read): the prompt was sent, so the
hold's input estimate is charged, ``estimated="input"``. An error status,
or an ``error`` event before ``message_start``, billed nothing: the hold is
released (``commit_body`` returns None).

``BatchResultsMeter`` reads a Message Batch's ``results`` JSONL the same
way, one succeeded result at a time, as usage events.
"""

from __future__ import annotations

import json
import math
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from comptroller_client.estimate import CHARS_PER_TOKEN

MAX_JSON_BODY = 64 * 1024 * 1024  # a message body larger than this is not kept for metering


def usage_dict(usage: Any) -> dict[str, Any]:
    """Return a usage object (an Anthropic ``Usage``, a dict, ...) as a JSON dict without nulls."""
    if usage is None:
        return {}
    if isinstance(usage, Mapping):
        data = dict(usage)
    elif hasattr(usage, "model_dump"):
        data = usage.model_dump()
    elif hasattr(usage, "to_dict"):
        data = usage.to_dict()
    else:
        data = dict(vars(usage))
    return _without_none(data)


def _without_none(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (_without_none(v) if isinstance(v, Mapping) else v) for k, v in data.items() if v is not None}


class _Decoder:
    """Undo a gzip or deflate Content-Encoding, chunk by chunk (anything else passes as it is)."""

    def __init__(self, encoding: str | None) -> None:
        encoding = (encoding or "").strip().lower()
        self._zlib: Any = None
        if encoding in ("gzip", "x-gzip"):
            self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._zlib = zlib.decompressobj()
        self.failed = False

    def decode(self, chunk: bytes) -> bytes:
        if self._zlib is None or self.failed:
            return chunk
        try:
            return bytes(self._zlib.decompress(chunk))
        except zlib.error:
            self.failed = True
            return b""


@dataclass
class Metered:
    """What a response showed of the call's consumption. Build the commit with ``commit_body``."""

    streamed: bool
    status: int = 200
    usage: dict[str, Any] | None = None
    model: str | None = None
    request_id: str | None = None
    stop_reason: str | None = None
    ttft_ms: int | None = None
    latency_ms: int | None = None
    complete: bool = False  # the final usage was seen (JSON parsed, or message_delta)
    error: dict[str, Any] | None = None  # an SSE error event
    deltas: int = 0
    chars: int = 0

    @property
    def billed(self) -> bool:
        """False when the call billed nothing: an error status, or an error before message_start."""
        if self.status >= 400:
            return False
        return not (self.usage is None and self.error is not None)

    def commit_body(self, *, input_estimate: int) -> dict[str, Any] | None:
        """Return the commit body (``POST /allowances/{id}/commit``), or None to release the hold.

        ``input_estimate`` is charged as the input when the response showed no
        usage at all (``metadata.usage_estimated = "input"``).
        """
        if not self.billed:
            return None
        metadata: dict[str, Any] = {}
        if self.usage is None:
            usage: dict[str, Any] = {"input_tokens": int(input_estimate), "output_tokens": 0}
            metadata["usage_estimated"] = "input"
        else:
            usage = dict(self.usage)
            if not self.complete:
                received = max(self.deltas, math.ceil(self.chars / CHARS_PER_TOKEN))
                usage["output_tokens"] = max(int(usage.get("output_tokens") or 0), received)
                metadata["usage_estimated"] = "output"
        body: dict[str, Any] = {"usage": usage, "streamed": self.streamed}
        for key in ("model", "request_id", "stop_reason", "latency_ms", "ttft_ms"):
            value = getattr(self, key)
            if value is not None:
                body[key] = value
        if metadata:
            body["metadata"] = metadata
        return body


class MessageMeter:
    """Meter one ``POST /v1/messages`` response body: ``feed`` its bytes, then ``close``."""

    def __init__(
        self,
        *,
        status: int = 200,
        content_type: str | None = None,
        content_encoding: str | None = None,
        started: float | None = None,
    ) -> None:
        self.started = time.perf_counter() if started is None else started
        self.streamed = "text/event-stream" in (content_type or "")
        self.result = Metered(streamed=self.streamed, status=status)
        self._decoder = _Decoder(content_encoding)
        self._buffer = bytearray()
        self._event: str | None = None
        self._data: list[bytes] = []
        self._closed = False

    def _elapsed_ms(self) -> int:
        return round((time.perf_counter() - self.started) * 1000)

    def feed(self, chunk: bytes) -> None:
        """Take the next bytes of the body (as they came off the wire, still encoded)."""
        if self._closed or not chunk or self.result.status >= 400:
            return
        data = self._decoder.decode(chunk)
        if not self.streamed:
            if len(self._buffer) + len(data) <= MAX_JSON_BODY:
                self._buffer += data
            return
        self._buffer += data
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                return
            line = bytes(self._buffer[:end]).rstrip(b"\r")
            del self._buffer[: end + 1]
            self._line(line)

    def _line(self, line: bytes) -> None:
        if not line:
            if self._data:
                self._dispatch(self._event, b"\n".join(self._data))
            self._event, self._data = None, []
        elif line.startswith(b"data:"):
            self._data.append(line[5:].lstrip(b" "))
        elif line.startswith(b"event:"):
            self._event = line[6:].strip().decode("utf-8", "replace")

    def _dispatch(self, name: str | None, data: bytes) -> None:
        if name in ("ping", "content_block_start", "content_block_stop", "message_stop"):
            return
        try:
            event = json.loads(data)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        kind = event.get("type") or name
        result = self.result
        if kind == "content_block_delta":
            if result.ttft_ms is None:
                result.ttft_ms = self._elapsed_ms()
            result.deltas += 1
            delta = event.get("delta") or {}
            text = delta.get("text") or delta.get("partial_json") or delta.get("thinking") or ""
            result.chars += len(text)
        elif kind == "message_start":
            message = event.get("message") or {}
            result.usage = usage_dict(message.get("usage"))
            result.model, result.request_id = message.get("model"), message.get("id")
        elif kind == "message_delta":
            # message_delta's usage is cumulative: it replaces what message_start said.
            if result.usage is not None:
                result.usage.update(usage_dict(event.get("usage")))
                result.complete = True
            result.stop_reason = (event.get("delta") or {}).get("stop_reason") or result.stop_reason
        elif kind == "error":
            result.error = event.get("error") or {"type": "error"}

    def close(self) -> Metered:
        """Finish: the body ended, or was abandoned. Idempotent; returns what was metered."""
        result = self.result
        if self._closed:
            return result
        self._closed = True
        result.latency_ms = self._elapsed_ms()
        if self.streamed or result.status >= 400 or not self._buffer:
            return result
        try:
            message = json.loads(bytes(self._buffer))
        except ValueError:
            return result  # not read to the end: usage unknown, the prompt was sent
        if isinstance(message, dict) and isinstance(message.get("usage"), Mapping):
            result.usage = usage_dict(message["usage"])
            result.model, result.request_id = message.get("model"), message.get("id")
            result.stop_reason = message.get("stop_reason")
            result.complete = True
        self._buffer = bytearray()
        return result


@dataclass
class BatchResultsMeter:
    """Read a Message Batch's results (JSONL, as ``GET …/batches/{id}/results`` sends them).

    ``feed`` returns the succeeded results completed by that chunk, each as
    a ``POST /api/v1/usage`` event (``request_id`` = the message id,
    ``custom_id`` and ``batch_id`` in its metadata, ``service_tier`` batch).
    """

    batch_id: str
    feature: str
    content_encoding: str | None = None
    run_id: str | None = None
    metadata: dict[str, Any] | None = None
    counts: dict[str, int] = field(default_factory=dict)
    _buffer: bytearray = field(default_factory=bytearray)
    _decoder: _Decoder | None = None

    def feed(self, chunk: bytes) -> list[dict[str, Any]]:
        if self._decoder is None:
            self._decoder = _Decoder(self.content_encoding)
        self._buffer += self._decoder.decode(chunk)
        events: list[dict[str, Any]] = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                return events
            line = bytes(self._buffer[:end]).strip()
            del self._buffer[: end + 1]
            event = self._line(line)
            if event is not None:
                events.append(event)

    def close(self) -> list[dict[str, Any]]:
        line, self._buffer = bytes(self._buffer).strip(), bytearray()
        event = self._line(line)
        return [event] if event is not None else []

    def _line(self, line: bytes) -> dict[str, Any] | None:
        if not line:
            return None
        try:
            item = json.loads(line)
        except ValueError:
            return None
        result = item.get("result") if isinstance(item, dict) else None
        if not isinstance(result, dict):
            return None
        kind = str(result.get("type"))
        self.counts[kind] = self.counts.get(kind, 0) + 1
        message = result.get("message")
        if kind != "succeeded" or not isinstance(message, dict):
            return None
        return batch_usage_event(message, feature=self.feature, batch_id=self.batch_id,
                                 custom_id=item.get("custom_id"), run_id=self.run_id, metadata=self.metadata)


def batch_usage_event(
    message: Mapping[str, Any],
    *,
    feature: str,
    batch_id: str,
    custom_id: Any = None,
    run_id: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Return the usage event of one succeeded batch result (a message dict)."""
    usage = usage_dict(message.get("usage"))
    usage.setdefault("service_tier", "batch")
    event: dict[str, Any] = {
        "feature": feature,
        "request_id": message.get("id"),
        "model": message.get("model"),
        "usage": usage,
        "metadata": {**(metadata or {}), "custom_id": custom_id, "batch_id": batch_id},
    }
    if message.get("stop_reason"):
        event["stop_reason"] = message["stop_reason"]
    if run_id:
        event["run_id"] = run_id
    return event
