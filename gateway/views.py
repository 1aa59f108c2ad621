"""``/anthropic/v1/messages``: the Messages API, governed, for any client that can change a base URL.

Each call: authenticate the Comptroller key, find the feature, size the request (asking
``count_tokens`` upstream only for what the local rules cannot size), ask the allowance,
forward with the granted model and ``max_tokens`` and the tenant's Anthropic key, pass the
answer back byte for byte as it arrives, meter it, and commit (or release) once it ends —
also when the caller goes away mid-stream. Async: under ASGI a stream holds no thread,
only the database steps borrow one (``gateway.db``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from contextlib import suppress
from typing import Any

import httpx
from comptroller_client.metering import MessageMeter, Metered
from django.conf import settings
from django.core.handlers.asgi import ASGIRequest
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, HttpResponseBase, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from gateway import db, services, upstream
from gateway.errors import DECISION_HEADER, GatewayError, error_response, invalid, not_found
from gateway.services import Caller, CallOptions, Reservation

logger = logging.getLogger(__name__)

MESSAGES_PATH = "/v1/messages"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"
MAX_METADATA_BYTES = 4096


def _governed(view):
    """Answer every failure in Anthropic's error shape: never an HTML page, never a bare 500."""

    async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        try:
            return await view(request, *args, **kwargs)
        except GatewayError as exc:
            return exc.response()
        except (OperationalError, InterfaceError):
            logger.exception("database error on %s", request.path)
            return error_response(503, "overloaded_error", "Comptroller's database is unreachable; retry shortly.",
                                  retry=True)
        except Exception:
            logger.exception("gateway error on %s", request.path)
            return error_response(500, "api_error", "Comptroller's gateway failed on this request; it has been logged.")

    wrapper.__name__ = view.__name__
    wrapper.__doc__ = view.__doc__
    return csrf_exempt(wrapper)


# --- reading the request ----------------------------------------------------------------------


def _require_post_over_https(request: HttpRequest) -> None:
    if request.method != "POST":
        raise GatewayError(405, "invalid_request_error", f"{request.method} is not served here; send POST.",
                           headers={"Allow": "POST"})
    if settings.API_REQUIRE_HTTPS and not request.is_secure():
        raise GatewayError(403, "permission_error",
                           f"The gateway is served over HTTPS only: call https://{request.get_host()}{request.path}")


def _secret(request: HttpRequest) -> str:
    """Return the Comptroller key: ``x-api-key`` or ``Authorization: Bearer`` (SDKs differ), a cpt_ one first."""
    candidates = [request.headers.get("x-api-key", "").strip()]
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        candidates.append(token.strip())
    candidates = [c for c in candidates if c]
    return next((c for c in candidates if c.startswith("cpt_")), candidates[0] if candidates else "")


def _options(request: HttpRequest) -> CallOptions:
    headers = request.headers
    feature = headers.get("x-comptroller-feature", "").strip()
    run_id = headers.get("x-comptroller-run-id", "").strip()
    idempotency_key = headers.get("idempotency-key", "").strip()
    if len(feature) > 63:
        raise invalid("x-comptroller-feature: at most 63 characters (a feature key).")
    if len(run_id) > 200:
        raise invalid("x-comptroller-run-id: at most 200 characters.")
    if len(idempotency_key) > 255:
        raise invalid("Idempotency-Key: at most 255 characters.")
    ttl: int | None = None
    if headers.get("x-comptroller-ttl"):
        try:
            ttl = int(headers["x-comptroller-ttl"])
        except ValueError:
            ttl = 0
        if not 10 <= ttl <= 90_000:
            raise invalid("x-comptroller-ttl: the hold's lifetime in whole seconds, 10 to 90000.")
    metadata: dict[str, Any] = {}
    if headers.get("x-comptroller-metadata"):
        raw = headers["x-comptroller-metadata"]
        try:
            metadata = json.loads(raw)
        except ValueError:
            metadata = None  # type: ignore[assignment]
        if not isinstance(metadata, dict) or len(raw.encode()) > MAX_METADATA_BYTES:
            raise invalid("x-comptroller-metadata: a JSON object of at most 4 KiB.")
    return CallOptions(feature=feature, run_id=run_id, idempotency_key=idempotency_key, ttl_seconds=ttl,
                       metadata=metadata)


def _body(request: HttpRequest) -> bytes:
    """Return the request body, refusing one over ``GATEWAY_MAX_BODY_BYTES`` (413 request_too_large)."""
    limit = settings.GATEWAY_MAX_BODY_BYTES
    too_large = GatewayError(413, "request_too_large", f"The request body is over the gateway's {limit} byte limit.")
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > limit:
        raise too_large
    # request.read(), not request.body: the body limit of the REST API (1 MiB) is not the gateway's.
    data = request.read(limit + 1)
    if len(data) > limit:
        raise too_large
    return data


def _json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except ValueError:
        raise invalid("The body is not valid JSON.") from None
    return services.request_check(body)


# --- the views ----------------------------------------------------------------------------------


@_governed
async def messages(request: HttpRequest) -> HttpResponseBase:
    """POST /anthropic/v1/messages: ask, forward, meter, commit."""
    started = time.perf_counter()
    _require_post_over_https(request)
    secret = _secret(request)
    if not secret:  # as Anthropic does: who is calling before what the call says
        raise GatewayError(401, "authentication_error",
                           "Send a Comptroller service key (cpt_…) as x-api-key or as Authorization: Bearer.")
    options = _options(request)
    raw = _body(request)
    body = _json(raw)
    size = services.request_size(body)
    pooled = isinstance(request, ASGIRequest)
    caller, reservation = await _guarded(_open, secret, options, body, size)
    async with upstream.client(pooled=pooled) as http:
        headers = upstream.request_headers(request.headers, caller.upstream_key)
        if reservation is None:  # the request holds what only Anthropic can size
            counted = await upstream.count_tokens(http, base_url=caller.base_url, headers=headers, body=body)
            _, reservation = await _guarded(_reserve, caller, options, body, size, counted)
        assert reservation is not None
        changes = reservation.body_changes()
        content = json.dumps({**body, **changes}).encode() if changes else raw
        outgoing = http.build_request(
            "POST", upstream.url(caller.base_url, MESSAGES_PATH, request.META.get("QUERY_STRING", "")),
            headers=headers, content=content,
        )
        return await _forward(http, outgoing, reservation, started=started, pooled=pooled)


def _open(secret: str, options: CallOptions, body: dict[str, Any], size: Any) -> tuple[Caller, Reservation | None]:
    """Resolve the caller and, unless count_tokens must size the request first, reserve: one database step."""
    caller = services.caller_resolve(secret=secret, options=options)
    if services.should_count(size):
        return caller, None
    return _reserve(caller, options, body, size, None)


def _reserve(
    caller: Caller, options: CallOptions, body: dict[str, Any], size: Any, counted: int | None
) -> tuple[Caller, Reservation]:
    return caller, services.call_reserve(caller=caller, body=body, size=size, counted=counted, options=options)


async def _guarded(fn: Any, *args: Any) -> tuple[Caller, Reservation | None]:
    """Run a reserving step; if the caller goes away meanwhile, release what it reserved."""
    step = asyncio.ensure_future(db.run(fn, *args))
    try:
        return await asyncio.shield(step)
    except asyncio.CancelledError:
        step.add_done_callback(_release_orphan)
        raise


def _release_orphan(step: asyncio.Future) -> None:
    if step.cancelled() or step.exception() is not None:
        return
    _, reservation = step.result()
    if reservation is not None:
        Settlement(reservation).settle_soon(None, "client_gone")


async def _forward(
    http: httpx.AsyncClient, outgoing: httpx.Request, reservation: Reservation, *, started: float, pooled: bool
) -> HttpResponseBase:
    settlement = Settlement(reservation)
    try:
        response = await http.send(outgoing, stream=True)
    except asyncio.CancelledError:
        # The caller went away while Anthropic was answering: the prompt was sent.
        settlement.settle_soon(MessageMeter(started=started).close(), "client_gone")
        raise
    except httpx.HTTPError as exc:
        sent = not isinstance(exc, upstream.NOT_SENT)
        await settlement.settle(MessageMeter(started=started).close() if sent else None, f"upstream_{type(exc).__name__}")
        timeout = isinstance(exc, httpx.TimeoutException)
        return error_response(
            504 if timeout else 502, "api_error",
            f"Anthropic {'did not answer in time' if timeout else 'could not be reached'} ({type(exc).__name__}).",
            retry=True, headers=reservation.headers(),
        )
    if response.status_code >= 400:
        # An error bills nothing: it passes through unchanged, and the hold is released.
        content = await _raw(response)
        await settlement.settle(None, f"upstream_{response.status_code}")
        return _passthrough(HttpResponse(content, status=response.status_code), response, reservation)
    meter = MessageMeter(status=response.status_code, content_type=response.headers.get("content-type"),
                         content_encoding=response.headers.get("content-encoding"), started=started)
    if not pooled:
        # Under WSGI the loop ends with this view, and the response with it: read it all here.
        chunks = []
        try:
            async for chunk in response.aiter_raw():
                meter.feed(chunk)
                chunks.append(chunk)
        finally:
            await response.aclose()
            await settlement.settle(meter.close(), "complete")
        return _passthrough(HttpResponse(b"".join(chunks), status=response.status_code), response, reservation)
    streamed = StreamingHttpResponse(MeteredBody(response, meter, settlement), status=response.status_code)
    streamed["X-Accel-Buffering"] = "no"  # a proxy must pass SSE events on as they come
    out = _passthrough(streamed, response, reservation)
    if response.headers.get("content-length"):
        # The bytes pass unchanged, so the length holds; the caller has the answer at its last byte.
        out["Content-Length"] = response.headers["content-length"]
    return out


async def _raw(response: httpx.Response) -> bytes:
    """Return the body as it came (still encoded: its Content-Encoding header passes on with it)."""
    try:
        return b"".join([chunk async for chunk in response.aiter_raw()])
    finally:
        await response.aclose()


def _passthrough(out: HttpResponseBase, response: httpx.Response, reservation: Reservation | None) -> HttpResponseBase:
    for name, value in upstream.response_headers(response.headers):
        out[name] = value if name not in out or name.lower() == "content-type" else f"{out[name]}, {value}"
    if "content-type" not in response.headers:
        del out["Content-Type"]
    if reservation is not None:
        for name, value in reservation.headers().items():
            out[name] = value
    return out


class Settlement:
    """Commits (or releases) one reservation exactly once, however the response ends."""

    def __init__(self, reservation: Reservation) -> None:
        self.reservation = reservation
        self._done = False

    def _claim(self) -> bool:
        # Claimed on the event loop's thread or by a finalizer; a plain flag is enough in
        # CPython, where the check-and-set below runs without a switch between them.
        if self._done:
            return False
        self._done = True
        return True

    async def settle(self, metered: Metered | None, outcome: str) -> None:
        if self._claim():
            await asyncio.shield(db.run(services.call_settle, reservation=self.reservation, metered=metered,
                                        outcome=outcome))

    def settle_after(self, metered: Metered | None, outcome: str) -> None:
        """Settle on the loop without holding up the caller: the answer's last bytes go out first."""
        task = asyncio.ensure_future(self.settle(metered, outcome))
        _settling.add(task)
        task.add_done_callback(_settling.discard)

    def settle_soon(self, metered: Metered | None, outcome: str) -> None:
        if self._claim():
            db.submit(services.call_settle, reservation=self.reservation, metered=metered, outcome=outcome)


_settling: set[asyncio.Future] = set()  # settlements under way, kept alive until they finish


class MeteredBody:
    """The upstream body as Django streams it to the caller: metered chunk by chunk, settled at the end.

    Ended, cut off by Anthropic, or abandoned by the caller (the server cancels the
    response, or drops it unread): the meter closes and the settlement runs, so
    tokens generated for a caller who left are still charged.
    """

    def __init__(self, response: httpx.Response, meter: MessageMeter, settlement: Settlement) -> None:
        self.response = response
        self.meter = meter
        self.settlement = settlement
        weakref.finalize(self, _abandoned, response, meter, settlement, asyncio.get_running_loop())

    def __aiter__(self):
        return self._chunks()

    async def _chunks(self):
        outcome = "client_gone"
        try:
            async for chunk in self.response.aiter_raw():
                self.meter.feed(chunk)
                yield chunk
            outcome = "complete"
        except httpx.HTTPError as exc:
            outcome = f"upstream_{type(exc).__name__}"  # the caller sees the stream end early
        finally:
            with suppress(Exception):
                await asyncio.shield(self.response.aclose())
            if outcome == "complete":
                self.settlement.settle_after(self.meter.close(), outcome)
            else:
                await self.settlement.settle(self.meter.close(), outcome)


def _abandoned(response: httpx.Response, meter: MessageMeter, settlement: Settlement,
               loop: asyncio.AbstractEventLoop) -> None:
    """A body the server dropped without reading it (the caller left before it began)."""
    settlement.settle_soon(meter.close(), "client_gone")
    if not loop.is_closed():
        with suppress(RuntimeError):
            loop.call_soon_threadsafe(lambda: loop.create_task(response.aclose()))


@_governed
async def count_tokens(request: HttpRequest) -> HttpResponseBase:
    """POST /anthropic/v1/messages/count_tokens: free and ungoverned, forwarded with the tenant's key."""
    _require_post_over_https(request)
    raw = _body(request)
    caller = await db.run(services.caller_resolve, secret=_secret(request), options=_options(request),
                          need_feature=False)
    async with upstream.client(pooled=isinstance(request, ASGIRequest)) as http:
        headers = upstream.request_headers(request.headers, caller.upstream_key)
        outgoing = http.build_request(
            "POST", upstream.url(caller.base_url, COUNT_TOKENS_PATH, request.META.get("QUERY_STRING", "")),
            headers=headers, content=raw,
        )
        try:
            response = await http.send(outgoing, stream=True)
            content = await _raw(response)
        except httpx.HTTPError as exc:
            return error_response(502, "api_error", f"Anthropic could not be reached ({type(exc).__name__}).",
                                  retry=True)
    out = _passthrough(HttpResponse(content, status=response.status_code), response, None)
    out[DECISION_HEADER] = "ungoverned"
    return out


@csrf_exempt
async def other(request: HttpRequest, rest: str = "") -> HttpResponseBase:
    """Anything else under /anthropic/: Anthropic's 404 shape (Message Batches are not proxied)."""
    return not_found(request.path)
