"""The governor: an httpx transport under the Anthropic SDK that asks Comptroller before each call.

Every request the SDK sends goes through ``handle_request`` (or its async
twin). ``POST …/v1/messages`` — whichever SDK method built it: ``create``,
``stream``, ``parse``, ``beta.messages.*``, raw or streaming responses, a
``with_options`` copy — is governed:

1. size the request (``estimate.size_request``); when it holds what cannot
   be sized locally, ask Anthropic's free ``count_tokens`` first (or hold at
   the input ceiling: ``count_tokens=False``);
2. ask the allowance for the worst case (``estimate.worst_case``); a denial
   or a fail-closed outage answers the SDK with an error response it does
   not retry, and nothing is sent to Anthropic;
3. rewrite the body's ``model`` and ``max_tokens`` to what was granted,
   forward it, and add the decision to the response's headers
   (``x-comptroller-decision``, ``-hold``, ``-model``, ``-max-tokens``,
   ``-reserved-usd``, ``-input-basis``);
4. meter the response as the SDK reads it (``metering.MessageMeter``), and
   hand the commit to the background sender when the body ends, is closed,
   is garbage-collected, or the process exits; an error answer releases.

``POST …/v1/messages/batches`` reserves at the batch tier (one hold per
model, or per group of requests within the feature's ``max_tokens`` cap);
``GET …/batches/{id}/results`` reports each succeeded result as it streams
through and releases the batch's holds once every result was read.
Everything else (``count_tokens``, models, files, …) passes through.

Per call, the caller may set request headers that never reach Anthropic:
``x-comptroller-feature``, ``x-comptroller-run-id``, ``x-comptroller-ttl``
(seconds), ``x-comptroller-metadata`` (a JSON object) — see
``comptroller_client.call_headers``.

The classes are built for the HTTP library the SDK uses (``httpx`` up to the
1.x SDKs, ``httpx2`` from 2.0): ``transport_class(module, is_async)``.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import re
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable

from comptroller_client.client import AsyncComptroller, Comptroller, _Base
from comptroller_client.errors import (
    ApiError,
    BudgetExceeded,
    ComptrollerError,
    ComptrollerUnavailable,
)
from comptroller_client.estimate import (
    RequestSize,
    WorstCase,
    expected_ttl_seconds,
    size_request,
    worst_case,
)
from comptroller_client.metering import BatchResultsMeter, MessageMeter
from comptroller_client.types import Allowance

logger = logging.getLogger("comptroller_client")

HEADER_PREFIX = "x-comptroller-"
FEATURE_HEADER = "x-comptroller-feature"
RUN_ID_HEADER = "x-comptroller-run-id"
TTL_HEADER = "x-comptroller-ttl"
METADATA_HEADER = "x-comptroller-metadata"
# Accept-Encoding values the meter can decode (spaces removed); any other is replaced on the way out.
DECODABLE = frozenset({"gzip,deflate", "gzip", "identity"})
_DECODABLE_RAW = frozenset(v.encode() for v in DECODABLE)
_PREFIX_RAW = HEADER_PREFIX.encode()
ERROR_EXTENSION = "comptroller_error"
ALLOWANCE_EXTENSION = "comptroller_allowance"
COUNT_TOKENS_FIELDS = ("model", "messages", "system", "tools", "tool_choice", "thinking", "mcp_servers")
BATCH_HOLD_TTL = 90_000  # batches may take 24 h; the contract's longest hold
MAX_HOLD_TOKENS = 1_000_000  # the largest max_tokens an allowance accepts
NOT_SENT = ("ConnectError", "ConnectTimeout", "PoolTimeout", "UnsupportedProtocol", "LocalProtocolError")
_RESULTS = re.compile(r"/v1/messages/batches/([^/]+)/results$")


@dataclass
class Governor:
    """What ``governed()`` was asked to do, shared by every copy of the governed client."""

    comptroller: _Base
    feature: str
    count_tokens: Any = "auto"  # "auto": only when the request holds what cannot be sized; True; False
    input_ceiling: int | None = None
    ttl_seconds: int | None = None
    run_id: str | None = None
    metadata: dict[str, Any] | None = None
    batch_holds: dict[str, list[Allowance]] = field(default_factory=dict)

    # -- routing and reading the request ------------------------------------------------

    @staticmethod
    def route(request: Any) -> str | None:
        path = request.url.path
        if request.method == "POST":
            if path.endswith("/v1/messages"):
                return "messages"
            if path.endswith("/v1/messages/batches"):
                return "batch_create"
        elif request.method == "GET" and _RESULTS.search(path):
            return "batch_results"
        return None

    def options(self, headers: Mapping[str, str]) -> tuple[str, dict[str, Any]]:
        """Return the feature and the reservation options for one call (its headers win)."""
        feature = headers.get(FEATURE_HEADER) or self.feature
        options: dict[str, Any] = {}
        run_id = headers.get(RUN_ID_HEADER) or self.run_id
        if run_id:
            options["run_id"] = run_id
        metadata = dict(self.metadata or {})
        if headers.get(METADATA_HEADER):
            try:
                metadata.update(json.loads(headers[METADATA_HEADER]))
            except (ValueError, TypeError):
                logger.warning("ignoring %s: not a JSON object", METADATA_HEADER)
        if metadata:
            options["metadata"] = metadata
        ttl = headers.get(TTL_HEADER) or self.ttl_seconds
        if ttl:
            options["ttl_seconds"] = int(ttl)
        return feature, options

    def should_count(self, size: RequestSize) -> bool:
        if self.count_tokens == "auto":
            return bool(size.unsized)
        return bool(self.count_tokens)

    def reservation(
        self, body: dict[str, Any], size: RequestSize, counted: int | None, options: dict[str, Any]
    ) -> tuple[WorstCase, dict[str, Any]]:
        worst = worst_case(body, size=size, counted_input_tokens=counted, input_ceiling=self.input_ceiling)
        fields = {**worst.allowance_fields(), **options}
        if "ttl_seconds" not in fields:
            ttl = expected_ttl_seconds(body, size)
            if ttl:
                fields["ttl_seconds"] = ttl
        return worst, fields

    @staticmethod
    def forward_headers(request: Any) -> Any:
        """Return a copy of the request's headers for Anthropic: no ``x-comptroller-*``, no Content-Length."""
        # A copy of the SDK's Headers keeps its names and values encoded, where a dict of them
        # would have each one normalised again by the new Request.
        headers = type(request.headers)(request.headers)
        for name in {n for n, _ in request.headers.raw if n.lower().startswith(_PREFIX_RAW)
                     or n.lower() == b"content-length"}:
            del headers[name.decode("latin-1")]
        encoding = headers.get("accept-encoding")
        if encoding and encoding.replace(" ", "") not in DECODABLE:
            headers["accept-encoding"] = "gzip, deflate"  # what the meter can decode
        return headers

    @staticmethod
    def sendable(request: Any) -> bool:
        """Return whether the SDK's request may go to Anthropic as it is (``forward_headers`` would keep it)."""
        for name, value in request.headers.raw:
            name = name.lower()
            if name.startswith(_PREFIX_RAW):
                return False
            if name == b"accept-encoding" and value.replace(b" ", b"") not in _DECODABLE_RAW:
                return False
        return True

    @staticmethod
    def count_body(body: dict[str, Any]) -> bytes:
        return json.dumps({k: body[k] for k in COUNT_TOKENS_FIELDS if k in body}).encode()

    @staticmethod
    def granted_body(body: dict[str, Any], allowance: Allowance) -> dict[str, Any] | None:
        """Return the body to send when the allowance changed it (model, max_tokens), else None."""
        if allowance.model == body.get("model") and allowance.max_tokens == body.get("max_tokens"):
            return None
        return {**body, "model": allowance.model, "max_tokens": allowance.max_tokens}

    @classmethod
    def outgoing(cls, module: ModuleType, request: Any, body: dict[str, Any], allowance: Allowance) -> Any:
        """Return the request to send Anthropic: the SDK's own when granted as asked, else a rewritten copy."""
        granted = cls.granted_body(body, allowance)
        if granted is None and cls.sendable(request):
            return request  # granted as asked: what the SDK built goes as it is, uncopied
        content = json.dumps(granted).encode() if granted is not None else request.content
        headers = cls.forward_headers(request)
        headers["Content-Length"] = str(len(content))
        # A stream rather than content: the headers are complete (Host included, from the SDK's
        # request), so the Request need not add its own and build them all a second time.
        rewritten = module.Request(request.method, request.url, headers=headers, stream=module.ByteStream(content),
                                   extensions=request.extensions)
        rewritten.read()
        return rewritten

    @staticmethod
    def decision_headers(allowance: Allowance, worst: WorstCase | None) -> dict[str, str]:
        headers = {
            "x-comptroller-decision": allowance.decision,
            "x-comptroller-hold": allowance.id or ("offline" if allowance.offline else ""),
            "x-comptroller-model": allowance.model,
            "x-comptroller-max-tokens": str(allowance.max_tokens),
            "x-comptroller-reserved-usd": str(allowance.reserved_usd),
        }
        if worst is not None:
            headers["x-comptroller-input-basis"] = worst.basis
        return headers

    # -- batches -------------------------------------------------------------------------------

    def batch_plan(
        self, requests: list[dict[str, Any]], cap: int | None
    ) -> tuple[list[dict[str, Any]], list[tuple[str, list[dict[str, Any]]]]]:
        """Copy the requests (clamped to the cap) and group them into holds: per model, within the cap.

        A hold's ``max_tokens`` is the sum of its requests'; the server clamps
        it to the feature cap and accepts at most ``MAX_HOLD_TOKENS``, so a
        group never sums past either and the hold stays a true worst case.
        """
        limit = min(cap, MAX_HOLD_TOKENS) if cap else MAX_HOLD_TOKENS
        copies = []
        for request in requests:
            params = dict(request["params"])
            params["max_tokens"] = min(int(params["max_tokens"]), limit)
            copies.append({**request, "params": params})
        groups: list[tuple[str, list[dict[str, Any]]]] = []
        open_groups: dict[str, tuple[list[dict[str, Any]], list[int]]] = {}
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

    def batch_reservation(self, model: str, group: list[dict[str, Any]], options: dict[str, Any]) -> dict[str, Any]:
        cases = [worst_case(r["params"], input_ceiling=self.input_ceiling) for r in group]
        metadata = {**(options.get("metadata") or {}), "batch_requests": len(group)}
        fields: dict[str, Any] = {
            **options, "service_tier": "batch", "ttl_seconds": BATCH_HOLD_TTL, "metadata": metadata,
            "input_tokens": sum(c.input_tokens for c in cases),
            "max_tokens": sum(c.max_tokens for c in cases),
        }
        for name in ("cache_write_5m_tokens", "cache_write_1h_tokens", "max_web_searches"):
            total = sum(getattr(c, name) for c in cases)
            if total:
                fields[name] = total
        return fields


def refusal_status(error: ComptrollerError) -> int:
    if isinstance(error, BudgetExceeded):
        return 429
    if isinstance(error, ComptrollerUnavailable):
        return 503
    if isinstance(error, ApiError) and 400 <= error.status < 500:
        return error.status
    return 502


def refusal_body(error: ComptrollerError) -> bytes:
    kind = {429: "budget_exceeded", 503: "comptroller_unavailable"}.get(refusal_status(error), "comptroller_error")
    return json.dumps({"type": "error", "error": {"type": kind, "message": str(error)}}).encode()


# -- settling a metered response: exactly once, however it ends ------------------------------------

_open: set[_Settlement] = set()
_open_lock = threading.Lock()


class _Settlement:
    """Turns one metered response into a commit (or a release), exactly once."""

    def __init__(self, comptroller: _Base, allowance: Allowance, meter: MessageMeter, close_inner: Callable[[], Any]):
        self.comptroller = comptroller
        self.allowance = allowance
        self.meter = meter
        self.close_inner = close_inner
        self._done = False
        self._lock = threading.Lock()
        with _open_lock:
            _open.add(self)

    def settle(self, *, closing: bool = False) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        with _open_lock:
            _open.discard(self)
        if closing:
            with contextlib.suppress(Exception):
                self.close_inner()
        try:
            metered = self.meter.close()
            body = metered.commit_body(input_estimate=self.allowance.input_tokens)
            if body is None:
                self.comptroller.release_later(self.allowance)
            else:
                self.comptroller.commit_body_later(self.allowance, body)
        except Exception:
            logger.exception("comptroller: could not hand over the commit of hold %s", self.allowance.id)


@atexit.register
def _settle_open_at_exit() -> None:
    # Registered after the clients' own exit hook, so it runs before it: the commits go out with it.
    with _open_lock:
        pending = list(_open)
    for settlement in pending:
        settlement.settle()


def _transport_error_sent(exc: BaseException) -> bool:
    """Return whether a transport error may have come after Anthropic received the request."""
    return type(exc).__name__ not in NOT_SENT


# -- the transports, built per HTTP library --------------------------------------------------------

_classes: dict[tuple[str, bool], type] = {}


def transport_class(module: ModuleType, is_async: bool) -> type:
    """Return the governing transport class for ``module`` (``httpx`` or ``httpx2``)."""
    key = (module.__name__, is_async)
    if key not in _classes:
        _classes[key] = _build_async(module) if is_async else _build_sync(module)
    return _classes[key]


def _response(module: ModuleType, inner: Any, stream: Any, extra_headers: Mapping[str, str] | None,
              extensions: Mapping[str, Any] | None = None) -> Any:
    # The raw (bytes) pairs go into the new Response as they are; decoded to str, each would be
    # encoded back again.
    headers: list[tuple[Any, Any]] = inner.headers.raw
    if inner.is_stream_consumed:  # read already (a MockTransport, an event hook): passed on decoded
        headers = [(k, v) for k, v in headers if k.lower() != b"content-encoding"]
    if extra_headers:
        headers += extra_headers.items()
    return module.Response(inner.status_code, headers=headers, stream=stream,
                           extensions={**inner.extensions, **(extensions or {})})


def _refusal(module: ModuleType, request: Any, error: ComptrollerError) -> Any:
    headers = {"content-type": "application/json", "x-should-retry": "false",
               "x-comptroller-decision": "denied" if isinstance(error, BudgetExceeded) else "error"}
    return module.Response(refusal_status(error), headers=headers, content=refusal_body(error),
                           request=request, extensions={ERROR_EXTENSION: error})


def _build_sync(module: ModuleType) -> type:
    class MeteredStream(module.SyncByteStream):  # type: ignore[name-defined]
        def __init__(self, inner: Any, on_chunk: Callable[[bytes], Any], settlement: _Settlement | None,
                     on_end: Callable[[], Any] | None = None) -> None:
            self._inner = inner
            self._on_chunk = on_chunk
            self._settlement = settlement
            self._on_end = on_end
            if settlement is not None:
                weakref.finalize(self, settlement.settle, closing=True)

        def __iter__(self) -> Any:
            chunks = [self._inner.content] if self._inner.is_stream_consumed else self._inner.iter_raw()
            for chunk in chunks:
                self._on_chunk(chunk)
                yield chunk
            if self._on_end is not None:
                self._on_end()
            if self._settlement is not None:
                self._settlement.settle()

        def close(self) -> None:
            try:
                self._inner.close()
            finally:
                if self._settlement is not None:
                    self._settlement.settle()

    class GoverningTransport(module.BaseTransport):  # type: ignore[name-defined]
        """Sends through the SDK's own httpx client (its pool, proxies and hooks), governing on the way."""

        def __init__(self, inner: Any, governor: Governor) -> None:
            self.inner = inner
            self.governor = governor

        def handle_request(self, request: Any) -> Any:
            route = self.governor.route(request)
            try:
                if route == "messages":
                    return self._messages(request)
                if route == "batch_create":
                    return self._batch_create(request)
                if route == "batch_results":
                    return self._batch_results(request)
            except ComptrollerError as exc:
                return _refusal(module, request, exc)
            inner = self.inner.send(request, stream=True)
            return _response(module, inner, MeteredStream(inner, _ignore, None), None)

        def _reserve(self, feature: str, model: str, fields: dict[str, Any]) -> Allowance:
            cpt = self.governor.comptroller
            assert isinstance(cpt, Comptroller), "a sync SDK client needs a (sync) Comptroller"
            input_tokens, max_tokens = fields.pop("input_tokens"), fields.pop("max_tokens")
            return cpt.reserve(feature, model, input_tokens, max_tokens, raise_on_deny=False, **fields)

        def _count(self, request: Any, body: dict[str, Any]) -> int | None:
            url = request.url.copy_with(path=request.url.path + "/count_tokens")
            counting = module.Request("POST", url, headers=Governor.forward_headers(request),
                                      content=Governor.count_body(body), extensions=request.extensions)
            try:
                response = self.inner.send(counting)
                if response.status_code == 200:
                    return int(response.json()["input_tokens"])
                logger.warning("count_tokens answered %s; holding at the input ceiling", response.status_code)
            except Exception:
                logger.warning("count_tokens failed; holding at the input ceiling", exc_info=True)
            return None

        def _messages(self, request: Any) -> Any:
            g = self.governor
            cpt = g.comptroller
            started = time.perf_counter()
            # Comptroller accepts the allowance's connection while the request is sized.
            ahead = cpt._open_ahead()
            try:
                body = json.loads(request.read())
                feature, options = g.options(request.headers)
                size = size_request(body)
                counted = None
                if g.should_count(size):
                    cpt._close_ahead(ahead)  # not to keep a server's worker waiting through the count
                    counted = self._count(request, body)
                worst, fields = g.reservation(body, size, counted, options)
                allowance = self._reserve(feature, str(body.get("model")), fields)
            finally:
                cpt._close_ahead(ahead)
            if not allowance.granted:
                raise BudgetExceeded(allowance)
            outgoing = g.outgoing(module, request, body, allowance)
            try:
                inner = self.inner.send(outgoing, stream=True)
            except BaseException as exc:
                if _transport_error_sent(exc):
                    _Settlement(cpt, allowance, MessageMeter(started=started), _ignore).settle()
                else:
                    cpt.release_later(allowance)
                raise
            headers = g.decision_headers(allowance, worst)
            extensions = {ALLOWANCE_EXTENSION: allowance}
            if inner.status_code >= 400:
                cpt.release_later(allowance)  # an error answer bills nothing
                return _response(module, inner, MeteredStream(inner, _ignore, None), headers, extensions)
            meter = MessageMeter(status=inner.status_code, content_type=inner.headers.get("content-type"),
                                 content_encoding=inner.headers.get("content-encoding"), started=started)
            settlement = _Settlement(cpt, allowance, meter, inner.close)
            return _response(module, inner, MeteredStream(inner, meter.feed, settlement), headers, extensions)

        def _batch_create(self, request: Any) -> Any:
            g = self.governor
            cpt = g.comptroller
            assert isinstance(cpt, Comptroller), "a sync SDK client needs a (sync) Comptroller"
            body = json.loads(request.read())
            feature, options = g.options(request.headers)
            options.pop("ttl_seconds", None)
            try:
                cap = cpt.feature_policy(feature).max_tokens_cap
            except ComptrollerError:
                cap = None
            copies, groups = g.batch_plan(list(body.get("requests") or ()), cap)
            holds: list[Allowance] = []
            try:
                for model, group in groups:
                    fields = g.batch_reservation(model, group, options)
                    allowance = self._reserve(feature, model, fields)
                    if not allowance.granted:
                        raise BudgetExceeded(allowance)
                    holds.append(allowance)
                    for item in group:
                        item["params"]["model"] = allowance.model
            except BaseException:
                for allowance in holds:
                    cpt.release_later(allowance)
                raise
            outgoing = module.Request(request.method, request.url, headers=g.forward_headers(request),
                                      content=json.dumps({**body, "requests": copies}).encode(),
                                      extensions=request.extensions)
            try:
                inner = self.inner.send(outgoing, stream=True)
            except BaseException:
                for allowance in holds:
                    cpt.release_later(allowance)
                raise
            if inner.status_code >= 400:
                for allowance in holds:
                    cpt.release_later(allowance)
                return _response(module, inner, MeteredStream(inner, _ignore, None), None)
            received = bytearray()

            def keep_holds() -> None:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    g.batch_holds[json.loads(bytes(received))["id"]] = holds

            headers = {"x-comptroller-hold": ",".join(h.id or "offline" for h in holds)}
            return _response(module, inner, MeteredStream(inner, received.extend, None, keep_holds), headers)

        def _batch_results(self, request: Any) -> Any:
            g = self.governor
            cpt = g.comptroller
            batch_id = _RESULTS.search(request.url.path).group(1)  # type: ignore[union-attr]
            feature, options = g.options(request.headers)
            inner = self.inner.send(request, stream=True)
            if inner.status_code >= 400:
                return _response(module, inner, MeteredStream(inner, _ignore, None), None)
            meter = BatchResultsMeter(batch_id=batch_id, feature=feature, run_id=options.get("run_id"),
                                      metadata=g.metadata, content_encoding=inner.headers.get("content-encoding"))

            def report(chunk: bytes) -> None:
                events = meter.feed(chunk)
                if events:
                    cpt.report_later(events)

            def finish() -> None:
                events = meter.close()
                if events:
                    cpt.report_later(events)
                for allowance in g.batch_holds.pop(batch_id, []):
                    cpt.release_later(allowance)

            return _response(module, inner, MeteredStream(inner, report, None, finish), None)

        def close(self) -> None:
            pass  # the inner client belongs to the SDK client it came from

    return GoverningTransport


def _build_async(module: ModuleType) -> type:
    class AsyncMeteredStream(module.AsyncByteStream):  # type: ignore[name-defined]
        def __init__(self, inner: Any, on_chunk: Callable[[bytes], Any], settlement: _Settlement | None,
                     on_end: Callable[[], Any] | None = None) -> None:
            self._inner = inner
            self._on_chunk = on_chunk
            self._settlement = settlement
            self._on_end = on_end
            if settlement is not None:
                weakref.finalize(self, settlement.settle)

        async def __aiter__(self) -> Any:
            if self._inner.is_stream_consumed:  # read already (a MockTransport, an event hook)
                self._on_chunk(self._inner.content)
                yield self._inner.content
            else:
                async for chunk in self._inner.aiter_raw():
                    self._on_chunk(chunk)
                    yield chunk
            if self._on_end is not None:
                self._on_end()
            if self._settlement is not None:
                self._settlement.settle()

        async def aclose(self) -> None:
            try:
                await self._inner.aclose()
            finally:
                if self._settlement is not None:
                    self._settlement.settle()

    class AsyncGoverningTransport(module.AsyncBaseTransport):  # type: ignore[name-defined]
        def __init__(self, inner: Any, governor: Governor) -> None:
            self.inner = inner
            self.governor = governor

        async def handle_async_request(self, request: Any) -> Any:
            route = self.governor.route(request)
            try:
                if route == "messages":
                    return await self._messages(request)
                if route == "batch_create":
                    return await self._batch_create(request)
                if route == "batch_results":
                    return await self._batch_results(request)
            except ComptrollerError as exc:
                return _refusal(module, request, exc)
            inner = await self.inner.send(request, stream=True)
            return _response(module, inner, AsyncMeteredStream(inner, _ignore, None), None)

        async def _reserve(self, feature: str, model: str, fields: dict[str, Any]) -> Allowance:
            cpt = self.governor.comptroller
            input_tokens, max_tokens = fields.pop("input_tokens"), fields.pop("max_tokens")
            if isinstance(cpt, AsyncComptroller):
                return await cpt.reserve(feature, model, input_tokens, max_tokens, raise_on_deny=False, **fields)
            import anyio.to_thread

            assert isinstance(cpt, Comptroller)
            return await anyio.to_thread.run_sync(
                lambda: cpt.reserve(feature, model, input_tokens, max_tokens, raise_on_deny=False, **fields)
            )

        async def _policy_cap(self, feature: str) -> int | None:
            cpt = self.governor.comptroller
            try:
                if isinstance(cpt, AsyncComptroller):
                    return (await cpt.feature_policy(feature)).max_tokens_cap
                import anyio.to_thread

                assert isinstance(cpt, Comptroller)
                return (await anyio.to_thread.run_sync(cpt.feature_policy, feature)).max_tokens_cap
            except ComptrollerError:
                return None

        async def _count(self, request: Any, body: dict[str, Any]) -> int | None:
            url = request.url.copy_with(path=request.url.path + "/count_tokens")
            counting = module.Request("POST", url, headers=Governor.forward_headers(request),
                                      content=Governor.count_body(body), extensions=request.extensions)
            try:
                response = await self.inner.send(counting)
                if response.status_code == 200:
                    return int(response.json()["input_tokens"])
                logger.warning("count_tokens answered %s; holding at the input ceiling", response.status_code)
            except Exception:
                logger.warning("count_tokens failed; holding at the input ceiling", exc_info=True)
            return None

        async def _messages(self, request: Any) -> Any:
            g = self.governor
            started = time.perf_counter()
            body = json.loads(await request.aread())
            feature, options = g.options(request.headers)
            size = size_request(body)
            counted = await self._count(request, body) if g.should_count(size) else None
            worst, fields = g.reservation(body, size, counted, options)
            allowance = await self._reserve(feature, str(body.get("model")), fields)
            if not allowance.granted:
                raise BudgetExceeded(allowance)
            outgoing = g.outgoing(module, request, body, allowance)
            cpt = g.comptroller
            try:
                inner = await self.inner.send(outgoing, stream=True)
            except BaseException as exc:
                if _transport_error_sent(exc):
                    _Settlement(cpt, allowance, MessageMeter(started=started), _ignore).settle()
                else:
                    cpt.release_later(allowance)
                raise
            headers = g.decision_headers(allowance, worst)
            extensions = {ALLOWANCE_EXTENSION: allowance}
            if inner.status_code >= 400:
                cpt.release_later(allowance)
                return _response(module, inner, AsyncMeteredStream(inner, _ignore, None), headers, extensions)
            meter = MessageMeter(status=inner.status_code, content_type=inner.headers.get("content-type"),
                                 content_encoding=inner.headers.get("content-encoding"), started=started)
            settlement = _Settlement(cpt, allowance, meter, _ignore)
            return _response(module, inner, AsyncMeteredStream(inner, meter.feed, settlement), headers, extensions)

        async def _batch_create(self, request: Any) -> Any:
            g = self.governor
            cpt = g.comptroller
            body = json.loads(await request.aread())
            feature, options = g.options(request.headers)
            options.pop("ttl_seconds", None)
            copies, groups = g.batch_plan(list(body.get("requests") or ()), await self._policy_cap(feature))
            holds: list[Allowance] = []
            try:
                for model, group in groups:
                    allowance = await self._reserve(feature, model, g.batch_reservation(model, group, options))
                    if not allowance.granted:
                        raise BudgetExceeded(allowance)
                    holds.append(allowance)
                    for item in group:
                        item["params"]["model"] = allowance.model
            except BaseException:
                for allowance in holds:
                    cpt.release_later(allowance)
                raise
            outgoing = module.Request(request.method, request.url, headers=g.forward_headers(request),
                                      content=json.dumps({**body, "requests": copies}).encode(),
                                      extensions=request.extensions)
            try:
                inner = await self.inner.send(outgoing, stream=True)
            except BaseException:
                for allowance in holds:
                    cpt.release_later(allowance)
                raise
            if inner.status_code >= 400:
                for allowance in holds:
                    cpt.release_later(allowance)
                return _response(module, inner, AsyncMeteredStream(inner, _ignore, None), None)
            received = bytearray()

            def keep_holds() -> None:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    g.batch_holds[json.loads(bytes(received))["id"]] = holds

            headers = {"x-comptroller-hold": ",".join(h.id or "offline" for h in holds)}
            return _response(module, inner, AsyncMeteredStream(inner, received.extend, None, keep_holds), headers)

        async def _batch_results(self, request: Any) -> Any:
            g = self.governor
            cpt = g.comptroller
            batch_id = _RESULTS.search(request.url.path).group(1)  # type: ignore[union-attr]
            feature, options = g.options(request.headers)
            inner = await self.inner.send(request, stream=True)
            if inner.status_code >= 400:
                return _response(module, inner, AsyncMeteredStream(inner, _ignore, None), None)
            meter = BatchResultsMeter(batch_id=batch_id, feature=feature, run_id=options.get("run_id"),
                                      metadata=g.metadata, content_encoding=inner.headers.get("content-encoding"))

            def report(chunk: bytes) -> None:
                events = meter.feed(chunk)
                if events:
                    cpt.report_later(events)

            def finish() -> None:
                events = meter.close()
                if events:
                    cpt.report_later(events)
                for allowance in g.batch_holds.pop(batch_id, []):
                    cpt.release_later(allowance)

            return _response(module, inner, AsyncMeteredStream(inner, report, None, finish), None)

        async def aclose(self) -> None:
            pass

    return AsyncGoverningTransport


def _ignore(*_: Any, **__: Any) -> None:
    return None
