"""``governed(anthropic_client, comptroller, feature=...)``: the Anthropic SDK, asking before each call.

- ``messages.create(...)``: estimate the input tokens (``count_tokens`` when
  enabled, else ``estimate.estimate_input_tokens``), reserve, call with the
  granted model and ``max_tokens``, commit the response's usage; release if
  the call raises. ``stream=True`` is metered like ``messages.stream``.
- ``messages.stream(...)``: the same, and the commit carries the final
  cumulative usage when the stream ends or is closed early, with ttft and
  latency. A stream closed before ``message_delta`` commits the usage of
  ``message_start`` with ``output_tokens`` raised to what was received (one
  token per delta at least, and the text at ``CHARS_PER_TOKEN``): the
  tokens were generated and billed. Closed before ``message_start``: the
  hold's input estimate, no output. An error before ``message_start``
  releases the hold.
- ``messages.batches``: ``create`` reserves at the batch tier (one hold per
  model, or per group of requests that fits the feature's ``max_tokens`` cap),
  ``results`` reports each succeeded result (``request_id`` = the message id,
  ``custom_id`` and ``batch_id`` in the metadata) and releases the holds once
  every result has been read.

Per call, ``run_id=`` and ``hold_metadata=`` are taken out of the keyword
arguments and sent to Comptroller, not to Anthropic.

Everything else is the wrapped client's: ``governed(...).models``,
``governed(...).messages.count_tokens`` and so on pass straight through.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, Callable

from comptroller_client.client import AsyncComptroller, Comptroller, usage_dict
from comptroller_client.errors import ComptrollerError
from comptroller_client.estimate import CHARS_PER_TOKEN, estimate_input_tokens
from comptroller_client.types import Allowance, UsageRecord

logger = logging.getLogger("comptroller_client")

COUNT_TOKENS_PARAMS = ("model", "messages", "system", "thinking", "tool_choice", "tools")
BATCH_HOLD_TTL = 90_000  # batches may take 24 h; the contract's longest hold
MAX_HOLD_TOKENS = 1_000_000  # the largest max_tokens an allowance accepts
USAGE_BATCH_LIMIT = 1000


def governed(
    client: Any,
    comptroller: Comptroller | AsyncComptroller,
    *,
    feature: str,
    count_tokens: bool = False,
    run_id: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> GovernedAnthropic | AsyncGovernedAnthropic:
    """Wrap an ``anthropic.Anthropic`` (with ``Comptroller``) or ``AsyncAnthropic`` (with ``AsyncComptroller``)."""
    # The SDK wraps create() in a decorator; the coroutine function is underneath.
    is_async = inspect.iscoroutinefunction(inspect.unwrap(client.messages.create))
    if is_async != isinstance(comptroller, AsyncComptroller):
        raise TypeError("Pair anthropic.Anthropic with Comptroller, and AsyncAnthropic with AsyncComptroller.")
    governor = _Governor(client, comptroller, feature, count_tokens, run_id, metadata)
    return AsyncGovernedAnthropic(governor) if is_async else GovernedAnthropic(governor)


@dataclass
class BatchReport:
    """What ``batches.report_results`` found and reported."""

    succeeded: int = 0
    errored: int = 0
    canceled: int = 0
    expired: int = 0
    records: tuple[UsageRecord, ...] = ()


class _Governor:
    """The configuration and the decisions shared by the sync and async wrappers."""

    def __init__(self, client, comptroller, feature, count_tokens, run_id, metadata) -> None:
        self.client = client
        self.comptroller = comptroller
        self.feature = feature
        self.count_tokens = count_tokens
        self.run_id = run_id
        self.metadata = metadata

    def split(self, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Separate Comptroller's per-call options from the Anthropic call's arguments."""
        call = dict(kwargs)
        options: dict[str, Any] = {}
        run_id = call.pop("run_id", None) or self.run_id
        if run_id:
            options["run_id"] = run_id
        metadata = {**(self.metadata or {}), **(call.pop("hold_metadata", None) or {})}
        if metadata:
            options["metadata"] = metadata
        if call.get("max_tokens") is None:
            raise TypeError("max_tokens is required: the allowance is priced at it.")
        return call, options

    @staticmethod
    def count_params(call: dict[str, Any]) -> dict[str, Any]:
        return {k: call[k] for k in COUNT_TOKENS_PARAMS if k in call}

    @staticmethod
    def local_estimate(call: dict[str, Any]) -> int:
        return estimate_input_tokens(
            messages=call.get("messages") or (), system=call.get("system"),
            tools=call.get("tools"), tool_choice=call.get("tool_choice"),
        )

    @staticmethod
    def granted(call: dict[str, Any], allowance: Allowance) -> dict[str, Any]:
        return {**call, "model": allowance.model, "max_tokens": allowance.max_tokens}

    def batch_plan(self, requests: list[Any], cap: int | None) -> tuple[list[dict], list[tuple[str, list[dict]]]]:
        """Copy the requests (clamped to the cap) and group them into holds: per model, within the cap.

        A hold's ``max_tokens`` is the sum of its requests'; the server clamps
        it to the feature cap and accepts at most ``MAX_HOLD_TOKENS``, so a
        group never sums past either and the hold stays a true worst case.
        """
        limit = min(cap, MAX_HOLD_TOKENS) if cap else MAX_HOLD_TOKENS
        copies = []
        for request in requests:
            params = dict(request["params"])
            params["max_tokens"] = min(params["max_tokens"], limit)
            copies.append({**request, "params": params})
        groups: list[tuple[str, list[dict]]] = []
        open_groups: dict[str, tuple[list[dict], list[int]]] = {}
        for request in copies:
            model, tokens = request["params"]["model"], request["params"]["max_tokens"]
            group, total = open_groups.get(model, (None, [0]))
            if group is None or total[0] + tokens > limit:
                group, total = [], [0]
                open_groups[model] = (group, total)
                groups.append((model, group))
            group.append(request)
            total[0] += tokens
        return copies, groups

    def batch_hold_request(self, model: str, group: list[dict]) -> dict[str, Any]:
        options: dict[str, Any] = {"service_tier": "batch", "ttl_seconds": BATCH_HOLD_TTL}
        if self.run_id:
            options["run_id"] = self.run_id
        options["metadata"] = {**(self.metadata or {}), "batch_requests": len(group)}
        return dict(
            feature=self.feature,
            model=model,
            input_tokens=sum(self.local_estimate(r["params"]) for r in group),
            max_tokens=sum(r["params"]["max_tokens"] for r in group),
            **options,
        )

    def batch_event(self, batch_id: str, item: Any) -> dict[str, Any]:
        message = item.result.message
        usage = usage_dict(message.usage)
        usage.setdefault("service_tier", "batch")
        event = {
            "feature": self.feature,
            "request_id": message.id,
            "model": message.model,
            "usage": usage,
            "stop_reason": message.stop_reason,
            "metadata": {**(self.metadata or {}), "custom_id": item.custom_id, "batch_id": batch_id},
        }
        if self.run_id:
            event["run_id"] = self.run_id
        return event


def _count(report: BatchReport, kind: str) -> None:
    if kind in ("succeeded", "errored", "canceled", "expired"):
        setattr(report, kind, getattr(report, kind) + 1)


class _Meter:
    """Watches a message stream: usage so far, time to first token, latency."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.ttft_ms: int | None = None
        self.usage: dict[str, Any] | None = None
        self.model: str | None = None
        self.request_id: str | None = None
        self.stop_reason: str | None = None
        self.deltas = 0
        self.chars = 0
        self.final_usage_seen = False
        self.failed = False

    def _elapsed_ms(self) -> int:
        return round((time.perf_counter() - self.started) * 1000)

    def observe(self, event: Any) -> None:
        kind = getattr(event, "type", None)
        if kind == "message_start":
            message = event.message
            self.usage = usage_dict(message.usage)
            self.model, self.request_id = message.model, message.id
        elif kind == "content_block_delta":
            if self.ttft_ms is None:
                self.ttft_ms = self._elapsed_ms()
            self.deltas += 1
            delta = event.delta
            text = getattr(delta, "text", None) or getattr(delta, "partial_json", None) or getattr(delta, "thinking", None)
            self.chars += len(text or "")
        elif kind == "message_delta":
            # message_delta's usage is cumulative: it replaces what message_start said.
            self.final_usage_seen = True
            if self.usage is not None:
                self.usage.update(usage_dict(event.usage))
            self.stop_reason = getattr(event.delta, "stop_reason", None)

    def commit_args(self, allowance: Allowance) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """Return (usage, details) for the commit, or None when the call failed before it began.

        A stream closed before ``message_delta`` has no final usage: output is
        raised to what was received. One closed before ``message_start`` has
        none at all: the prompt was sent and is charged at the hold's input
        estimate. Either way ``metadata.usage_estimated`` says which part was
        estimated.
        """
        details: dict[str, Any] = {
            "model": self.model,
            "request_id": self.request_id,
            "stop_reason": self.stop_reason,
            "latency_ms": self._elapsed_ms(),
            "ttft_ms": self.ttft_ms,
            "streamed": True,
        }
        if self.usage is None:
            if self.failed:
                return None  # an error event before message_start: nothing was processed
            details["metadata"] = {"usage_estimated": "input"}
            return {"input_tokens": allowance.input_tokens, "output_tokens": 0}, details
        usage = dict(self.usage)
        if not self.final_usage_seen:
            received = max(self.deltas, math.ceil(self.chars / CHARS_PER_TOKEN))
            usage["output_tokens"] = max(int(usage.get("output_tokens") or 0), received)
            details["metadata"] = {"usage_estimated": "output"}
        return usage, details


# -- synchronous ----------------------------------------------------------------


def _settle(governor: _Governor, allowance: Allowance, meter: _Meter) -> None:
    args = meter.commit_args(allowance)
    try:
        if args is None:
            governor.comptroller.release(allowance)
        else:
            governor.comptroller.commit(allowance, args[0], **args[1])
    except ComptrollerError:
        logger.exception("Comptroller refused the commit of a finished stream (hold %s)", allowance.id)


def _release_quietly(comptroller: Comptroller, allowance: Allowance) -> None:
    try:
        comptroller.release(allowance)
    except ComptrollerError:
        logger.exception("could not release hold %s after a failed call", allowance.id)


class _MeteredStream:
    """A raw ``anthropic.Stream`` that meters each event and settles the hold when it ends or closes."""

    def __init__(self, raw: Any, meter: _Meter, on_done: Callable[[_Meter], None]) -> None:
        self._raw = raw
        self._meter = meter
        self._on_done: Callable[[_Meter], None] | None = on_done
        self._iterator = self.__stream__()

    @property
    def response(self) -> Any:
        return self._raw.response

    def __stream__(self) -> Iterator[Any]:
        try:
            for event in self._raw:
                self._meter.observe(event)
                yield event
        except Exception:
            self._meter.failed = True
            raise
        finally:
            self._finish()

    def __iter__(self) -> Iterator[Any]:
        yield from self._iterator

    def __next__(self) -> Any:
        return next(self._iterator)

    def __enter__(self) -> _MeteredStream:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._raw.close()
        finally:
            self._finish()

    def _finish(self) -> None:
        on_done, self._on_done = self._on_done, None
        if on_done is not None:
            on_done(self._meter)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class GovernedMessageStreamManager:
    """``with governed(...).messages.stream(...) as stream:`` — the SDK's own ``MessageStream``, metered.

    The SDK's ``messages.stream`` makes the request, so every option it
    supports (in whichever SDK version is installed) keeps working; the
    meter goes between that stream and its raw events.
    """

    def __init__(self, messages: GovernedMessages, kwargs: dict[str, Any]) -> None:
        self._messages = messages
        self._kwargs = kwargs
        self._manager: Any = None
        self.allowance: Allowance | None = None

    def __enter__(self) -> Any:
        governor = self._messages._g
        call, options = governor.split(self._kwargs)
        call.pop("stream", None)
        allowance = self.allowance = self._messages._reserve(call, options)
        meter = _Meter()
        try:
            self._manager = governor.client.messages.stream(**governor.granted(call, allowance))
            stream = self._manager.__enter__()
        except BaseException:
            _release_quietly(governor.comptroller, allowance)
            raise
        stream._raw_stream = _MeteredStream(stream._raw_stream, meter, lambda m: _settle(governor, allowance, m))
        return stream

    def __exit__(self, *exc_info: Any) -> None:
        if self._manager is not None:
            self._manager.__exit__(*exc_info)


class GovernedBatches:
    def __init__(self, governor: _Governor) -> None:
        self._g = governor
        self._batches = governor.client.messages.batches
        self.holds: dict[str, list[Allowance]] = {}

    def create(self, *, requests: Any, **kwargs: Any) -> Any:
        """Reserve the batch at the batch tier, then create it with the granted models and caps."""
        comptroller: Comptroller = self._g.comptroller
        try:
            cap = comptroller.feature_policy(self._g.feature).max_tokens_cap
        except ComptrollerError:
            cap = None
        copies, groups = self._g.batch_plan(list(requests), cap)
        holds: list[Allowance] = []
        try:
            for model, group in groups:
                allowance = comptroller.reserve(**self._g.batch_hold_request(model, group))
                holds.append(allowance)
                for request in group:
                    request["params"]["model"] = allowance.model
            batch = self._batches.create(requests=copies, **kwargs)
        except BaseException:
            for allowance in holds:
                _release_quietly(comptroller, allowance)
            raise
        self.holds[batch.id] = holds
        return batch

    def results(
        self, message_batch_id: str, *, holds: list[Allowance] | None = None,
        report: BatchReport | None = None, **kwargs: Any,
    ) -> Iterator[Any]:
        """Yield the batch's results, reporting the succeeded ones; release its holds after the last."""
        comptroller: Comptroller = self._g.comptroller
        report = report if report is not None else BatchReport()
        pending: list[dict[str, Any]] = []
        records: list[UsageRecord] = []
        complete = False
        try:
            for item in self._batches.results(message_batch_id, **kwargs):
                _count(report, item.result.type)
                if item.result.type == "succeeded":
                    pending.append(self._g.batch_event(message_batch_id, item))
                    if len(pending) >= USAGE_BATCH_LIMIT:
                        records.extend(comptroller.report_usage(pending).results)
                        pending = []
                yield item
            complete = True
        finally:
            if pending:
                records.extend(comptroller.report_usage(pending).results)
            report.records = report.records + tuple(records)
            if complete:
                for allowance in holds if holds is not None else self.holds.pop(message_batch_id, []):
                    comptroller.release(allowance)

    def report_results(self, message_batch_id: str, **kwargs: Any) -> BatchReport:
        """Read every result of a finished batch and report the succeeded ones."""
        report = BatchReport()
        for _ in self.results(message_batch_id, report=report, **kwargs):
            pass
        return report

    def __getattr__(self, name: str) -> Any:
        return getattr(self._batches, name)


class GovernedMessages:
    def __init__(self, governor: _Governor) -> None:
        self._g = governor
        self.batches = GovernedBatches(governor) if hasattr(governor.client.messages, "batches") else None

    def _reserve(self, call: dict[str, Any], options: dict[str, Any]) -> Allowance:
        comptroller: Comptroller = self._g.comptroller
        if not call.get("model"):
            call["model"] = comptroller.feature_policy(self._g.feature).default_model
        input_tokens = None
        if self._g.count_tokens:
            try:
                input_tokens = self._g.client.messages.count_tokens(**self._g.count_params(call)).input_tokens
            except Exception:
                logger.warning("count_tokens failed; using the local estimate", exc_info=True)
        if input_tokens is None:
            input_tokens = self._g.local_estimate(call)
        return comptroller.reserve(self._g.feature, call["model"], input_tokens, call["max_tokens"], **options)

    def _open_stream(self, kwargs: dict[str, Any]) -> tuple[Any, Allowance, _Meter]:
        call, options = self._g.split(kwargs)
        allowance = self._reserve(call, options)
        meter = _Meter()
        try:
            raw = self._g.client.messages.create(**{**self._g.granted(call, allowance), "stream": True})
        except BaseException:
            _release_quietly(self._g.comptroller, allowance)
            raise
        return raw, allowance, meter

    def create(self, **kwargs: Any) -> Any:
        """``messages.create`` under an allowance; raises ``BudgetExceeded`` without calling when denied."""
        if kwargs.get("stream"):
            raw, allowance, meter = self._open_stream(kwargs)
            return _MeteredStream(raw, meter, lambda m: _settle(self._g, allowance, m))
        call, options = self._g.split(kwargs)
        allowance = self._reserve(call, options)
        started = time.perf_counter()
        try:
            message = self._g.client.messages.create(**self._g.granted(call, allowance))
        except BaseException:
            _release_quietly(self._g.comptroller, allowance)
            raise
        latency_ms = round((time.perf_counter() - started) * 1000)
        try:
            self._g.comptroller.commit(
                allowance, message.usage, model=message.model, request_id=message.id,
                stop_reason=message.stop_reason, latency_ms=latency_ms, streamed=False,
            )
        except ComptrollerError:
            # The call happened and is paid for: hand back its answer rather than lose it.
            logger.exception("Comptroller refused the commit of hold %s", allowance.id)
        return message

    def stream(self, **kwargs: Any) -> GovernedMessageStreamManager:
        return GovernedMessageStreamManager(self, kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._g.client.messages, name)


class GovernedAnthropic:
    """An ``anthropic.Anthropic`` whose ``messages`` ask Comptroller first."""

    def __init__(self, governor: _Governor) -> None:
        self._g = governor
        self.messages = GovernedMessages(governor)
        self.comptroller = governor.comptroller
        self.feature = governor.feature

    def __getattr__(self, name: str) -> Any:
        return getattr(self._g.client, name)


# -- asyncio ---------------------------------------------------------------------------


async def _asettle(governor: _Governor, allowance: Allowance, meter: _Meter) -> None:
    args = meter.commit_args(allowance)
    try:
        if args is None:
            await governor.comptroller.release(allowance)
        else:
            await governor.comptroller.commit(allowance, args[0], **args[1])
    except ComptrollerError:
        logger.exception("Comptroller refused the commit of a finished stream (hold %s)", allowance.id)


async def _arelease_quietly(comptroller: AsyncComptroller, allowance: Allowance) -> None:
    try:
        await comptroller.release(allowance)
    except ComptrollerError:
        logger.exception("could not release hold %s after a failed call", allowance.id)


class _AsyncMeteredStream:
    def __init__(self, raw: Any, meter: _Meter, on_done: Callable[[_Meter], Any]) -> None:
        self._raw = raw
        self._meter = meter
        self._on_done: Callable[[_Meter], Any] | None = on_done
        self._iterator = self.__stream__()

    @property
    def response(self) -> Any:
        return self._raw.response

    async def __stream__(self) -> AsyncIterator[Any]:
        try:
            async for event in self._raw:
                self._meter.observe(event)
                yield event
        except Exception:
            self._meter.failed = True
            raise
        finally:
            await self._finish()

    async def __aiter__(self) -> AsyncIterator[Any]:
        async for event in self._iterator:
            yield event

    async def __anext__(self) -> Any:
        return await self._iterator.__anext__()

    async def __aenter__(self) -> _AsyncMeteredStream:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    async def close(self) -> None:
        try:
            await self._raw.close()
        finally:
            await self._finish()

    async def _finish(self) -> None:
        on_done, self._on_done = self._on_done, None
        if on_done is not None:
            await on_done(self._meter)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class AsyncGovernedMessageStreamManager:
    """``async with governed(...).messages.stream(...) as stream:`` — the SDK's ``AsyncMessageStream``, metered."""

    def __init__(self, messages: AsyncGovernedMessages, kwargs: dict[str, Any]) -> None:
        self._messages = messages
        self._kwargs = kwargs
        self._manager: Any = None
        self.allowance: Allowance | None = None

    async def __aenter__(self) -> Any:
        governor = self._messages._g
        call, options = governor.split(self._kwargs)
        call.pop("stream", None)
        allowance = self.allowance = await self._messages._reserve(call, options)
        meter = _Meter()
        try:
            self._manager = governor.client.messages.stream(**governor.granted(call, allowance))
            stream = await self._manager.__aenter__()
        except BaseException:
            await _arelease_quietly(governor.comptroller, allowance)
            raise
        stream._raw_stream = _AsyncMeteredStream(
            stream._raw_stream, meter, lambda m: _asettle(governor, allowance, m)
        )
        return stream

    async def __aexit__(self, *exc_info: Any) -> None:
        if self._manager is not None:
            await self._manager.__aexit__(*exc_info)


class AsyncGovernedBatches:
    def __init__(self, governor: _Governor) -> None:
        self._g = governor
        self._batches = governor.client.messages.batches
        self.holds: dict[str, list[Allowance]] = {}

    async def create(self, *, requests: Any, **kwargs: Any) -> Any:
        comptroller: AsyncComptroller = self._g.comptroller
        try:
            cap = (await comptroller.feature_policy(self._g.feature)).max_tokens_cap
        except ComptrollerError:
            cap = None
        copies, groups = self._g.batch_plan(list(requests), cap)
        holds: list[Allowance] = []
        try:
            for model, group in groups:
                allowance = await comptroller.reserve(**self._g.batch_hold_request(model, group))
                holds.append(allowance)
                for request in group:
                    request["params"]["model"] = allowance.model
            batch = await self._batches.create(requests=copies, **kwargs)
        except BaseException:
            for allowance in holds:
                await _arelease_quietly(comptroller, allowance)
            raise
        self.holds[batch.id] = holds
        return batch

    async def results(
        self, message_batch_id: str, *, holds: list[Allowance] | None = None,
        report: BatchReport | None = None, **kwargs: Any,
    ) -> AsyncIterator[Any]:
        comptroller: AsyncComptroller = self._g.comptroller
        report = report if report is not None else BatchReport()
        pending: list[dict[str, Any]] = []
        records: list[UsageRecord] = []
        complete = False
        try:
            async for item in await self._batches.results(message_batch_id, **kwargs):
                _count(report, item.result.type)
                if item.result.type == "succeeded":
                    pending.append(self._g.batch_event(message_batch_id, item))
                    if len(pending) >= USAGE_BATCH_LIMIT:
                        records.extend((await comptroller.report_usage(pending)).results)
                        pending = []
                yield item
            complete = True
        finally:
            if pending:
                records.extend((await comptroller.report_usage(pending)).results)
            report.records = report.records + tuple(records)
            if complete:
                for allowance in holds if holds is not None else self.holds.pop(message_batch_id, []):
                    await comptroller.release(allowance)

    async def report_results(self, message_batch_id: str, **kwargs: Any) -> BatchReport:
        report = BatchReport()
        async for _ in self.results(message_batch_id, report=report, **kwargs):
            pass
        return report

    def __getattr__(self, name: str) -> Any:
        return getattr(self._batches, name)


class AsyncGovernedMessages:
    def __init__(self, governor: _Governor) -> None:
        self._g = governor
        self.batches = AsyncGovernedBatches(governor) if hasattr(governor.client.messages, "batches") else None

    async def _reserve(self, call: dict[str, Any], options: dict[str, Any]) -> Allowance:
        comptroller: AsyncComptroller = self._g.comptroller
        if not call.get("model"):
            call["model"] = (await comptroller.feature_policy(self._g.feature)).default_model
        input_tokens = None
        if self._g.count_tokens:
            try:
                counted = await self._g.client.messages.count_tokens(**self._g.count_params(call))
                input_tokens = counted.input_tokens
            except Exception:
                logger.warning("count_tokens failed; using the local estimate", exc_info=True)
        if input_tokens is None:
            input_tokens = self._g.local_estimate(call)
        return await comptroller.reserve(self._g.feature, call["model"], input_tokens, call["max_tokens"], **options)

    async def _open_stream(self, kwargs: dict[str, Any]) -> tuple[Any, Allowance, _Meter]:
        call, options = self._g.split(kwargs)
        allowance = await self._reserve(call, options)
        meter = _Meter()
        try:
            raw = await self._g.client.messages.create(**{**self._g.granted(call, allowance), "stream": True})
        except BaseException:
            await _arelease_quietly(self._g.comptroller, allowance)
            raise
        return raw, allowance, meter

    async def create(self, **kwargs: Any) -> Any:
        if kwargs.get("stream"):
            raw, allowance, meter = await self._open_stream(kwargs)
            return _AsyncMeteredStream(raw, meter, lambda m: _asettle(self._g, allowance, m))
        call, options = self._g.split(kwargs)
        allowance = await self._reserve(call, options)
        started = time.perf_counter()
        try:
            message = await self._g.client.messages.create(**self._g.granted(call, allowance))
        except BaseException:
            await _arelease_quietly(self._g.comptroller, allowance)
            raise
        latency_ms = round((time.perf_counter() - started) * 1000)
        try:
            await self._g.comptroller.commit(
                allowance, message.usage, model=message.model, request_id=message.id,
                stop_reason=message.stop_reason, latency_ms=latency_ms, streamed=False,
            )
        except ComptrollerError:
            logger.exception("Comptroller refused the commit of hold %s", allowance.id)
        return message

    def stream(self, **kwargs: Any) -> AsyncGovernedMessageStreamManager:
        return AsyncGovernedMessageStreamManager(self, kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._g.client.messages, name)


class AsyncGovernedAnthropic:
    """An ``anthropic.AsyncAnthropic`` whose ``messages`` ask Comptroller first."""

    def __init__(self, governor: _Governor) -> None:
        self._g = governor
        self.messages = AsyncGovernedMessages(governor)
        self.comptroller = governor.comptroller
        self.feature = governor.feature

    def __getattr__(self, name: str) -> Any:
        return getattr(self._g.client, name)
