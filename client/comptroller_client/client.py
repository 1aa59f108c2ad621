"""Comptroller's REST API from Python: ask before a model call, report after it.

``Comptroller`` is the synchronous client and ``AsyncComptroller`` the asyncio
one. Both ask for allowances on the caller's path and deliver everything else
(commits, releases, usage reports) through the same durable spool and
background sender thread, so a report never waits on, or dies with, the
caller's event loop.

Delivery guarantee: a report handed to the sender (``commit_later``,
``release_later``, ``report_later``, and every governed call) is written to
the spool before the call returns, fsynced by the sender before it is sent,
and acknowledged only once Comptroller answered it: at-least-once sending.
Comptroller records each exactly once — a commit per hold, a usage event per
``request_id`` — so a report sent twice (a lost answer, a crash before the
acknowledgement, two processes adopting one file) is recorded once. A report
the server refuses for good is quarantined with its reason, never dropped
silently; a 429 waits for ``Retry-After``; a 400 ``unknown_model`` on a
commit is retried with the hold's model.

Retries: connect errors, 429, 500, 502, 503 and 504 are retried with
exponential backoff and jitter (``Retry-After`` honoured up to
``max_backoff``); a timeout is not (each would cost a whole ``timeout``).

The breaker opens only when Comptroller is unavailable — a connect error, a
timeout, or 502/503/504 after the retries — never on a 4xx or a 500 (one bad
request). While open (``breaker_seconds``) requests fail at once; then one
caller probes while the others still fail at once, so a hung server costs
one timeout per cycle, not one per caller. Unavailable: a reservation
follows the fail mode (the client's ``fail_mode``, else the feature's,
fetched from ``GET /api/v1/features/{key}`` and cached for ``policy_ttl``,
else ``unknown_fail_mode``). Fail closed raises ``ComptrollerUnavailable``;
fail open returns an ``offline`` allowance, whose usage is reported later.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import email.utils
import hashlib
import itertools
import json
import logging
import os
import random
import threading
import time
import urllib.parse
import urllib.request
import uuid
import weakref
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from types import TracebackType
from typing import Any, Union

import httpx

from comptroller_client.errors import (
    ApiError,
    BudgetExceeded,
    ComptrollerError,
    ComptrollerRedirect,
    ComptrollerUnavailable,
    RateLimited,
)
from comptroller_client.metering import usage_dict
from comptroller_client.spool import MEMORY, Entry, Spool
from comptroller_client.types import (
    Allowance,
    CommitResult,
    FeaturePolicy,
    ReleaseResult,
    UsageRecord,
    UsageReport,
    parse_usd,
)
from comptroller_client.wire import StdlibTransport, answer_response

logger = logging.getLogger("comptroller_client")

VERSION = "0.2.0"
DEFAULT_TIMEOUT = 2.0
UNAVAILABLE_STATUSES = frozenset({502, 503, 504})
RETRY_STATUSES = frozenset({429, 500}) | UNAVAILABLE_STATUSES
USAGE_BATCH_LIMIT = 1000  # the contract's events per POST /api/v1/usage
USAGE_BODY_LIMIT = 900_000  # bytes of events per request, under the contract's 1 MiB with room to spare
FAIL_MODES = ("open", "closed")
SERVER_ERROR_ATTEMPTS = 5  # a report answered 500 this many times is quarantined
CLOSE_TIMEOUT = 5.0
RESERVE_OPTIONS = frozenset({
    "cache_read_tokens", "cache_write_5m_tokens", "cache_write_1h_tokens", "service_tier", "run_id",
    "idempotency_key", "ttl_seconds", "metadata", "inference_geo", "speed", "max_web_searches",
})

# Allowance fields a server before the worst-case fields (inference_geo, speed, max_web_searches)
# refuses as unknown: the client asks again without them rather than fail the call.
NEWER_FIELDS = frozenset({"inference_geo", "speed", "max_web_searches"})

CONSTANT_PATHS = frozenset({"/allowances", "/usage"})  # the paths whose URL is kept, built once
# httpx's connection pools (behind a proxy, and AsyncComptroller's) keep alive as many
# connections as they may open: httpcore 1.0.9 closes an idle connection whenever the pool
# holds more connections than it keeps alive, even one it has just handed to a waiting
# request, which then fails (EBADF) or hangs until its timeout (encode/httpcore#1110).
POOL_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=100)

HoldRef = Union[Allowance, str]
# Unique keys without a read of the OS's random source per call (slow on some VMs).
_PROCESS = uuid.uuid4().hex
_serial = itertools.count(1)


def _new_process() -> None:
    global _PROCESS, _serial
    _PROCESS, _serial = uuid.uuid4().hex, itertools.count(1)


if hasattr(os, "register_at_fork"):  # a forked child (a pre-forking server) must not repeat its parent's keys
    os.register_at_fork(after_in_child=_new_process)


class _Unreachable(Exception):
    """Comptroller did not answer this request usefully: unavailable, or a 500 after the retries."""


def _describe(failure: httpx.Response | BaseException) -> str:
    if isinstance(failure, httpx.Response):
        return f"HTTP {failure.status_code}"
    return f"{type(failure).__name__}: {failure}" if str(failure) else type(failure).__name__


def _api_error(response: httpx.Response) -> ApiError:
    try:
        error = response.json()["error"]
        code, message, details = str(error["code"]), str(error["message"]), error.get("details") or {}
    except (ValueError, KeyError, TypeError):
        code, message, details = "http_error", response.text[:200] or response.reason_phrase, {}
    cls = RateLimited if response.status_code == 429 else ApiError
    return cls(response.status_code, code, message, details, retry_after=_retry_after(response))


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        with contextlib.suppress(TypeError, ValueError):
            parsed = email.utils.parsedate_to_datetime(value)
            return max(0.0, (parsed - datetime.now(timezone.utc)).total_seconds())
    return None


def _redirect(response: httpx.Response, base_url: str) -> ComptrollerRedirect:
    location = response.headers.get("location", "")
    target = str(response.request.url.join(location)) if location else ""
    path = response.request.url.path
    suggested = target.split("?")[0]
    if suggested.endswith(path):
        suggested = suggested[: -len(path)]
    if suggested.endswith("/api/v1"):
        suggested = suggested[: -len("/api/v1")]
    return ComptrollerRedirect(
        f"Comptroller at {base_url} answered {response.status_code} {response.reason_phrase} and redirects to "
        f"{target or 'nowhere'}: set the client's URL to {suggested or 'the address it should use'!r} "
        "(a client never follows redirects with an API key).",
        status=response.status_code, location=target, suggested_url=suggested or None,
    )


def _batches(events: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Split usage events into request bodies within the contract's limits (1,000 events, 1 MiB)."""
    batches: list[list[dict[str, Any]]] = [[]]
    size = 0
    for event in events:
        event_size = len(json.dumps(event, separators=(",", ":"), default=str)) + 1
        if batches[-1] and (len(batches[-1]) >= USAGE_BATCH_LIMIT or size + event_size > USAGE_BODY_LIMIT):
            batches.append([])
            size = 0
        batches[-1].append(event)
        size += event_size
    return [b for b in batches if b]


def _proxied(url: str) -> bool:
    """Return whether the environment names a proxy for ``url`` (httpx's client honours it)."""
    parts = urllib.parse.urlsplit(url)
    proxies = urllib.request.getproxies()
    if not (proxies.get(parts.scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(parts.hostname or "")


def _reraise(exc: BaseException) -> Any:
    raise exc


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def default_spool_dir(base_url: str, api_key: str) -> str:
    """Return where a client keeps its spool: ``$COMPTROLLER_SPOOL_DIR`` or the user's state dir.

    Each Comptroller (URL and key) has a directory of its own, so a process
    only ever adopts reports that its own key may deliver.
    """
    root = os.environ.get("COMPTROLLER_SPOOL_DIR") or os.path.join(
        os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state"),
        "comptroller-client",
    )
    digest = hashlib.sha256(f"{base_url}\n{api_key}".encode()).hexdigest()[:16]
    return os.path.join(root, digest)


class _Breaker:
    """Open while Comptroller is unavailable; after ``seconds``, one caller probes, the rest fail fast."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._lock = threading.Lock()
        self._open_until = 0.0
        self._probing = False

    @property
    def is_open(self) -> bool:
        return self._open_until > 0

    def allow(self) -> bool:
        if self._open_until == 0:
            return True
        with self._lock:
            if self._open_until == 0:
                return True
            if time.monotonic() < self._open_until or self._probing:
                return False
            self._probing = True
            return True

    def success(self) -> None:
        if self._open_until or self._probing:
            with self._lock:
                self._open_until, self._probing = 0.0, False

    def failure(self) -> None:
        with self._lock:
            self._probing = False
            if self.seconds > 0:
                self._open_until = time.monotonic() + self.seconds

    def settled(self) -> None:
        """The probe ended with an answer that says nothing of availability (a 4xx, a 500)."""
        with self._lock:
            self._probing = False


_live: weakref.WeakSet[_Base] = weakref.WeakSet()


@atexit.register
def _close_all_at_exit() -> None:
    for client in list(_live):
        with contextlib.suppress(Exception):
            client._shutdown(CLOSE_TIMEOUT)


class _Base:
    """Configuration, request bodies, the failure policy, the spool and the sender."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        fail_mode: str | None = None,
        unknown_fail_mode: str = "closed",
        max_retries: int = 2,
        backoff: float = 0.2,
        max_backoff: float = 5.0,
        policy_ttl: float = 60.0,
        breaker_seconds: float = 5.0,
        spool: Spool | None = None,
        spool_dir: str | None = None,
        spool_size: int = 100_000,
        flush_interval: float = 30.0,
        sync_transport: httpx.BaseTransport | None = None,
    ) -> None:
        base_url = base_url or os.environ.get("COMPTROLLER_URL")
        api_key = api_key or os.environ.get("COMPTROLLER_API_KEY")
        if not base_url or not api_key:
            raise ValueError("Give base_url and api_key, or set COMPTROLLER_URL and COMPTROLLER_API_KEY.")
        for name, value in (("fail_mode", fail_mode), ("unknown_fail_mode", unknown_fail_mode)):
            if value is not None and value not in FAIL_MODES:
                raise ValueError(f"{name} must be 'open', 'closed' or None, not {value!r}")
        root = base_url.rstrip("/")
        if root.endswith("/api/v1"):
            root = root[: -len("/api/v1")]
        self.base_url = root
        self.timeout = timeout
        self.fail_mode = fail_mode
        self.unknown_fail_mode = unknown_fail_mode
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.policy_ttl = policy_ttl
        self.breaker = _Breaker(breaker_seconds)
        self.flush_interval = flush_interval
        if spool is None:
            directory = spool_dir or default_spool_dir(root, api_key)
            try:
                spool = Spool(directory, maxlen=spool_size)
            except OSError as exc:
                logger.warning("comptroller spool directory %s unusable (%s); keeping reports in memory",
                               directory, exc)
                spool = Spool(MEMORY, maxlen=spool_size)
        self.spool = spool
        self._headers = {"Authorization": f"Bearer {api_key}", "User-Agent": f"comptroller-client/{VERSION}"}
        self._policies: dict[str, tuple[float, FeaturePolicy]] = {}
        self._unsupported: set[str] = set()
        # The sender's connection pool; Comptroller's own calls share it.
        self._sync_http = httpx.Client(base_url=f"{self.base_url}/api/v1", headers=self._headers,
                                       timeout=timeout, transport=sync_transport, follow_redirects=False,
                                       limits=POOL_LIMITS)
        # Requests are built here and handed to the transport: the httpx client's per-request work
        # (URL and header merging, cookies, hooks) is a third of an allowance's CPU and buys nothing.
        # Without an injected transport, they go over a plain socket (comptroller_client.wire) as
        # bytes, no httpx object made for a success, unless the environment names a proxy, which
        # the httpx client knows how to reach.
        self._transport: httpx.BaseTransport | None = sync_transport
        self._wire: StdlibTransport | None = None
        if sync_transport is None and not _proxied(root):
            self._transport = self._wire = StdlibTransport(root)
        self._api = f"{root}/api/v1"
        self._urls: dict[str, httpx.URL] = {}
        self._targets: dict[str, str] = {}
        self._json_headers = httpx.Headers(
            {**self._headers, "Accept": "application/json", "Content-Type": "application/json"})
        self._timeouts = httpx.Timeout(timeout).as_dict()
        self._extensions = {"timeout": self._timeouts}
        # The header lines of every request on the wire, as httpx.Request would write them.
        self._head = b"".join(b"%s: %s\r\n" % pair for pair in [
            (b"Host", self._wire.host_header.encode("ascii") if self._wire else b""), *self._json_headers.raw])
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._deliver_lock = threading.Lock()
        self._sender: threading.Thread | None = None
        self._sender_lock = threading.Lock()
        self._closed = False
        self._not_before = 0.0  # the sender waits until then (Retry-After, an open breaker)
        _live.add(self)
        if len(self.spool):
            self._start_sender()  # reports adopted from ended processes go out in the background

    # -- requests -----------------------------------------------------------------------------

    def _delay(self, attempt: int, failure: httpx.Response | BaseException) -> float:
        if isinstance(failure, httpx.Response):
            after = _retry_after(failure)
            if after is not None:
                return min(self.max_backoff, after)
        return min(self.max_backoff, self.backoff * (2**attempt)) * random.uniform(0.5, 1.0)

    def _settle(
        self, attempt: int, response: httpx.Response | None, error: BaseException | None, retries: int
    ) -> Any:
        """Return the decoded answer, raise, or return None to retry."""
        if response is not None:
            status = response.status_code
            if status < 300:
                return self._succeeded(status, response.content)
            if status < 400:
                self.breaker.settled()
                raise _redirect(response, self.base_url)
            if status not in RETRY_STATUSES:
                self.breaker.settled()
                raise _api_error(response)
            if attempt < retries:
                return None
            if status == 429:
                self.breaker.settled()
                raise _api_error(response)
            if status == 500:
                self.breaker.settled()  # one request's failure: the server is there
                raise _Unreachable(f"{self.base_url}: HTTP 500")
            self.breaker.failure()
            raise _Unreachable(f"{self.base_url}: {_describe(response)}")
        assert error is not None
        if attempt < retries and not isinstance(error, httpx.TimeoutException):
            return None
        self.breaker.failure()
        raise _Unreachable(f"{self.base_url}: {_describe(error)}")

    def _succeeded(self, status: int, content: bytes) -> Any:
        """Return a success's decoded answer; the breaker closes, and a held-back sender may go."""
        self.breaker.success()
        if self._not_before:  # Comptroller answers again: the sender may go now
            self._not_before = 0.0
            self._wake.set()
        if not content:
            return {}
        try:
            return json.loads(content)
        except ValueError as exc:
            raise ComptrollerError(f"Comptroller answered {status} with non-JSON") from exc

    def _url(self, path: str) -> httpx.URL:
        url = self._urls.get(path)
        if url is None:
            url = httpx.URL(self._api + path)
            if path in CONSTANT_PATHS:
                self._urls[path] = url
        return url

    def _open_ahead(self) -> Any:
        """Start the next allowance's connection while the caller sizes its request; return a handle."""
        if self._wire is None or self.breaker.is_open:
            return None
        return self._wire.open_ahead()

    def _close_ahead(self, handle: Any) -> None:
        """Close what ``_open_ahead`` opened if no request took it (a sync worker waits on it)."""
        if handle is not None and self._wire is not None:
            self._wire.close_ahead(handle)

    def _target(self, path: str) -> str:
        target = self._targets.get(path)
        if target is None:
            target = self._url(path).raw_path.decode("ascii")
            if path in CONSTANT_PATHS:
                self._targets[path] = target
        return target

    def _build(self, method: str, path: str, content: bytes | None) -> httpx.Request:
        return httpx.Request(method, self._url(path), headers=self._json_headers, content=content,
                             extensions=self._extensions)

    def _request(self, method: str, path: str, content: bytes | None) -> httpx.Response:
        """Send one request through httpx's client or the injected transport; return the answer, read."""
        request = self._build(method, path, content)
        if self._transport is None:
            return self._sync_http.send(request)
        response = self._transport.handle_request(request)
        try:
            response.read()
        finally:
            response.close()
        response.request = request
        return response

    def _send_sync(self, method: str, path: str, body: Any = None, *, force: bool = False) -> Any:
        """Send on the calling thread (``force`` ignores an open breaker: close() and flush())."""
        if not force and not self.breaker.allow():
            raise _Unreachable(f"{self.base_url}: unavailable moments ago")
        content = None if body is None else json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        attempt = 0
        while True:
            response, error = None, None
            try:
                if self._wire is None:
                    response = self._request(method, path, content)
                else:
                    reply = self._wire.exchange(method, self._target(path), self._head, content, self._timeouts)
                    if reply.status < 300 and not any(k.lower() == b"content-encoding" for k, _ in reply.headers):
                        return self._succeeded(reply.status, reply.content)  # no httpx object for a success
                    response = answer_response(reply, self._build(method, path, content))
            except httpx.TransportError as exc:
                error = exc
            answer = self._settle(attempt, response, error, self.max_retries)
            if answer is not None:
                return answer
            time.sleep(self._delay(attempt, response if response is not None else error))  # type: ignore[arg-type]
            attempt += 1

    # -- bodies and answers -------------------------------------------------------------------------

    def _reserve_body(
        self, feature: str, model: str, input_tokens: int, max_tokens: int, **options: Any
    ) -> dict[str, Any]:
        unknown = options.keys() - RESERVE_OPTIONS
        if unknown:
            raise TypeError(f"unknown reservation option(s): {', '.join(sorted(unknown))}")
        body: dict[str, Any] = {
            "feature": feature,
            "model": model,
            "input_tokens": int(input_tokens),
            "max_tokens": int(max_tokens),
            "service_tier": options.get("service_tier") or "standard",
            # The same key on every retry of this reservation: a retry never holds twice.
            "idempotency_key": options.get("idempotency_key") or f"cc_{_PROCESS}{next(_serial)}",
        }
        body.update({k: v for k, v in options.items() if v and k not in body and k not in self._unsupported})
        return body

    def _older_server(self, exc: ApiError, body: dict[str, Any]) -> dict[str, Any] | None:
        """Return the body without the fields an older server refused as unknown, or None."""
        refused = NEWER_FIELDS & set(exc.details) & set(body) if exc.status == 400 else set()
        if not refused:
            return None
        logger.warning("Comptroller at %s does not take %s yet: the hold leaves them out",
                       self.base_url, ", ".join(sorted(refused)))
        self._unsupported |= refused
        return {k: v for k, v in body.items() if k not in refused}

    def _allowance(self, data: dict[str, Any], body: dict[str, Any], raise_on_deny: bool) -> Allowance:
        allowance = Allowance.from_json(data, request=body)
        if not allowance.granted and raise_on_deny:
            raise BudgetExceeded(allowance)
        return allowance

    def _fail_mode_for(self, feature: str) -> str:
        if self.fail_mode is not None:
            return self.fail_mode
        cached = self._policies.get(feature)
        return cached[1].fail_mode if cached else self.unknown_fail_mode

    def _offline(self, body: dict[str, Any], exc: _Unreachable) -> Allowance:
        feature = body["feature"]
        if self._fail_mode_for(feature) != "open":
            raise ComptrollerUnavailable(
                f"Comptroller is unavailable ({exc}) and feature {feature!r} fails closed: "
                f"the call to {body['model']} was not made.",
                feature=feature,
            ) from exc
        logger.warning("Comptroller unavailable (%s); feature %r fails open, calling unverified", exc, feature)
        cached = self._policies.get(feature)
        cap = cached[1].max_tokens_cap if cached else None
        max_tokens = min(body["max_tokens"], cap) if cap else body["max_tokens"]
        return Allowance(
            id=None, granted=True, decision="unverified", reason="comptroller_unreachable",
            model=body["model"], max_tokens=max_tokens, clamped=max_tokens < body["max_tokens"],
            feature=feature, requested_model=body["model"],
            service_tier=body.get("service_tier", "standard"), run_id=body.get("run_id"),
            metadata=body.get("metadata"), offline=True, input_tokens=body["input_tokens"],
        )

    def _policy_fresh(self, feature: str) -> bool:
        cached = self._policies.get(feature)
        return cached is not None and cached[0] > time.monotonic()

    def _store_policy(self, data: dict[str, Any]) -> FeaturePolicy:
        policy = FeaturePolicy.from_json(data)
        self._policies[policy.key] = (time.monotonic() + self.policy_ttl, policy)
        return policy

    @staticmethod
    def _commit_body(
        usage: Any,
        *,
        model: str | None = None,
        request_id: str | None = None,
        stop_reason: str | None = None,
        latency_ms: int | None = None,
        ttft_ms: int | None = None,
        streamed: bool | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"usage": usage_dict(usage)}
        optional = {
            "model": model,
            "request_id": request_id,
            "stop_reason": stop_reason,
            "latency_ms": None if latency_ms is None else int(latency_ms),
            "ttft_ms": None if ttft_ms is None else int(ttft_ms),
            "streamed": streamed,
            "metadata": metadata or None,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        return body

    @staticmethod
    def _offline_event(hold: Allowance, body: dict[str, Any]) -> dict[str, Any]:
        if not hold.granted:
            raise ValueError("A denied allowance has nothing to commit.")
        event = dict(body)
        event.setdefault("model", hold.model)
        event.setdefault("request_id", f"local_{_PROCESS}{next(_serial)}")
        event.setdefault("occurred_at", _now())
        event["feature"] = hold.feature
        if hold.run_id:
            event["run_id"] = hold.run_id
        event["metadata"] = {**(hold.metadata or {}), **(body.get("metadata") or {}), "comptroller_offline": True}
        event["usage"] = {**event["usage"]}
        event["usage"].setdefault("service_tier", hold.service_tier)
        return event

    @staticmethod
    def _events(events: Mapping[str, Any] | Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        items = [events] if isinstance(events, Mapping) else list(events)
        out = []
        stamp = _now()
        for index, item in enumerate(items):
            event = {k: v for k, v in item.items() if v is not None}
            if not event.get("feature") or not event.get("request_id"):
                raise ValueError(f"usage event {index} needs 'feature' and 'request_id'")
            event["usage"] = usage_dict(event.get("usage"))
            event.setdefault("occurred_at", stamp)  # replayed later, it keeps the time it happened
            out.append(event)
        return out

    @staticmethod
    def _records(data: dict[str, Any]) -> list[UsageRecord]:
        return [
            UsageRecord(
                request_id=str(r.get("request_id")),
                status=str(r.get("status")),
                cost_usd=parse_usd(r.get("cost_usd")),
                usage_event_id=r.get("usage_event_id"),
            )
            for r in data.get("results") or ()
        ]

    @staticmethod
    def _hold_id(hold: HoldRef) -> str | None:
        return hold.id if isinstance(hold, Allowance) else hold

    # -- the sender: reports off the caller's path -------------------------------------------------

    def commit_later(self, hold: HoldRef, usage: Any, **details: Any) -> None:
        """Hand the commit to the background sender (durable once this returns; see the module doc)."""
        self.commit_body_later(hold, self._commit_body(usage, **details))

    def commit_body_later(self, hold: HoldRef, body: dict[str, Any]) -> None:
        """``commit_later`` with a ready commit body (``metering.Metered.commit_body``)."""
        if isinstance(hold, Allowance) and hold.offline:
            self._enqueue({"kind": "usage", "event": self._offline_event(hold, body)})
            return
        # The ledger dates a commit when it arrives; keep when it happened for a late delivery.
        body.setdefault("metadata", {})
        body["metadata"] = {**body["metadata"], "occurred_at": _now()}
        self._enqueue({"kind": "commit", "hold_id": self._hold_id(hold), "body": body})

    def release_later(self, hold: HoldRef) -> None:
        """Hand the release to the background sender (nothing to do for an offline allowance)."""
        hold_id = self._hold_id(hold)
        if hold_id is not None:
            self._enqueue({"kind": "release", "hold_id": hold_id})

    def report_later(self, events: Mapping[str, Any] | Iterable[Mapping[str, Any]]) -> int:
        """Hand usage events (``POST /api/v1/usage``) to the background sender; return how many."""
        prepared = self._events(events)
        for event in prepared:
            self.spool.put({"kind": "usage", "event": event})
        self._start_sender()
        return len(prepared)

    def _enqueue(self, entry: Entry) -> None:
        if self._closed:
            logger.error("comptroller: a %s handed over after close() is kept in memory only: %s",
                         entry["kind"], entry)
        self.spool.put(entry)
        self._start_sender()

    def _start_sender(self) -> None:
        self._wake.set()
        if self._sender is not None and self._sender.is_alive():
            return
        with self._sender_lock:
            if self._closed or (self._sender is not None and self._sender.is_alive()):
                return
            self._sender = threading.Thread(target=self._send_loop, name="comptroller-sender", daemon=True)
            self._sender.start()

    def _send_loop(self) -> None:
        while not self._stopping.is_set():
            delay = self._not_before - time.monotonic()
            if not len(self.spool):
                self._wake.wait()
            elif delay > 0:
                self._wake.wait(None if delay == float("inf") else delay)
            self._wake.clear()
            if self._stopping.is_set():
                return
            if not len(self.spool) or time.monotonic() < self._not_before:
                continue
            try:
                self._deliver()
            except Exception:  # the sender must survive anything; the entries stay spooled
                logger.exception("comptroller sender: delivery failed; the reports stay in the spool")
                self._retry_later()

    def _retry_later(self, seconds: float | None = None) -> None:
        """Hold the sender back: ``seconds``, else ``flush_interval`` (0: until a request succeeds)."""
        if seconds is None:
            seconds = self.flush_interval if self.flush_interval > 0 else float("inf")
        self._not_before = time.monotonic() + seconds

    def flush(self, *, timeout: float | None = None) -> int:
        """Deliver the spool now, on this thread, even while the breaker is open; return how many left it."""
        return self._deliver(force=True, timeout=timeout)

    def _deliver(self, *, force: bool = False, timeout: float | None = None) -> int:
        if not self._deliver_lock.acquire(timeout=-1 if timeout is None else timeout):
            return 0
        try:
            before = len(self.spool)
            entries = self.spool.peek()
            if not entries:
                return 0
            self.spool.sync()
            try:
                for entry in entries:
                    if entry["kind"] != "usage":
                        self._deliver_hold_report(entry, force)
                self._deliver_usage([e for e in entries if e["kind"] == "usage"], force)
                self._not_before = 0.0
            except _Unreachable as exc:
                self._retry_later()
                logger.info("Comptroller unavailable (%s); %d reports wait in the spool", exc, len(self.spool))
            except RateLimited as exc:
                self._retry_later(exc.retry_after if exc.retry_after is not None else 1.0)
                logger.info("Comptroller rate-limits reports; retrying in %.1fs", exc.retry_after or 1.0)
            except ApiError as exc:  # 401/403: the key may be fixed; keep everything
                self._retry_later()
                logger.error("Comptroller refuses the spool's reports (%s); they stay in the spool", exc)
            return before - len(self.spool)
        finally:
            self._deliver_lock.release()

    def _send_report(self, path: str, body: Any, force: bool) -> Any:
        """Send one report; a 429 waits for Retry-After (bounded) and tries again, then raises."""
        attempt = 0
        while True:
            try:
                return self._send_sync("POST", path, body, force=force)
            except RateLimited as exc:
                if attempt >= self.max_retries or self._stopping.is_set():
                    raise
                time.sleep(min(self.max_backoff, exc.retry_after if exc.retry_after is not None else 1.0))
                attempt += 1

    def _server_error(self, entry: Entry, exc: _Unreachable) -> None:
        if "HTTP 500" not in str(exc):
            raise exc
        entry["attempts"] = int(entry.get("attempts") or 0) + 1
        if entry["attempts"] >= SERVER_ERROR_ATTEMPTS:
            self.spool.quarantine(entry, f"HTTP 500 on {entry['attempts']} attempts", status=500)

    def _deliver_hold_report(self, entry: Entry, force: bool) -> None:
        path = f"/allowances/{entry['hold_id']}/{entry['kind']}"
        body = entry.get("body") or {}
        try:
            try:
                self._send_report(path, body, force)
            except ApiError as exc:
                if entry["kind"] == "commit" and exc.status == 400 and exc.code == "unknown_model" and "model" in body:
                    # A dated id the server does not price yet: the hold's model prices it.
                    body = {k: v for k, v in body.items() if k != "model"}
                    body["metadata"] = {**(body.get("metadata") or {}), "reported_model": entry["body"]["model"]}
                    entry["body"] = body
                    self._send_report(path, body, force)
                else:
                    raise
        except _Unreachable as exc:
            self._server_error(entry, exc)
            return
        except RateLimited:
            raise
        except ApiError as exc:
            if exc.status in (401, 403):
                raise
            if entry["kind"] == "release" and exc.status in (404, 409):
                pass  # nothing to release, or it was committed: either way done
            else:
                self.spool.quarantine(entry, f"{exc.status} {exc.code}: {exc.message}", status=exc.status)
                return
        self.spool.ack([entry])

    def _deliver_usage(self, entries: list[Entry], force: bool) -> None:
        by_id = {id(e["event"]): e for e in entries}
        for batch in _batches([e["event"] for e in entries]):
            chunk = [by_id[id(event)] for event in batch]
            try:
                self._send_report("/usage", {"events": batch}, force)
            except _Unreachable as exc:
                if "HTTP 500" not in str(exc) or len(chunk) == 1:
                    for entry in chunk[:1]:
                        self._server_error(entry, exc)
                    continue
                self._deliver_one_by_one(chunk, force)
                continue
            except RateLimited:
                raise
            except ApiError as exc:
                if exc.status in (401, 403):
                    raise
                self._deliver_one_by_one(chunk, force)
                continue
            self.spool.ack(chunk)

    def _deliver_one_by_one(self, chunk: list[Entry], force: bool) -> None:
        """One bad event refuses its batch: send each alone, quarantine the bad ones, deliver the rest."""
        for entry in chunk:
            try:
                self._send_report("/usage", {"events": [entry["event"]]}, force)
            except _Unreachable as exc:
                self._server_error(entry, exc)
                continue
            except RateLimited:
                raise
            except ApiError as exc:
                if exc.status in (401, 403):
                    raise
                self.spool.quarantine(entry, f"{exc.status} {exc.code}: {exc.message}", status=exc.status)
                continue
            self.spool.ack([entry])

    def _shutdown(self, timeout: float) -> None:
        """Stop the sender, deliver what waits (ignoring the breaker), close the spool and the pool."""
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        self._wake.set()
        if self._sender is not None and self._sender is not threading.current_thread():
            self._sender.join(timeout)
        if len(self.spool):
            with contextlib.suppress(Exception):
                self._deliver(force=True, timeout=timeout)
        if len(self.spool):
            where = f"kept in {self.spool.directory} for the next process" if self.spool.directory else "LOST"
            logger.log(logging.WARNING if self.spool.directory else logging.ERROR,
                       "comptroller: %d reports undelivered at close, %s", len(self.spool), where)
        self.spool.close()
        self._sync_http.close()
        if self._transport is not None:
            self._transport.close()
        _live.discard(self)


class Comptroller(_Base):
    """The synchronous client. Thread-safe; keep one per process and reuse it.

    ``Comptroller()`` with no arguments reads ``COMPTROLLER_URL`` and
    ``COMPTROLLER_API_KEY``.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        **options: Any,
    ) -> None:
        super().__init__(base_url, api_key, sync_transport=transport, **options)
        self._http = self._sync_http

    def __enter__(self) -> Comptroller:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Deliver what waits in the spool (even while the breaker is open), then close."""
        self._shutdown(timeout)

    def _send(self, method: str, path: str, body: Any = None) -> Any:
        return self._send_sync(method, path, body)

    def feature_policy(self, feature: str, *, refresh: bool = False) -> FeaturePolicy:
        """Return the feature's policy, from the cache unless it is older than ``policy_ttl``."""
        if not refresh and self._policy_fresh(feature):
            return self._policies[feature][1]
        try:
            return self._store_policy(self._send("GET", f"/features/{feature}"))
        except _Unreachable as exc:
            if feature in self._policies:
                return self._policies[feature][1]  # stale beats nothing while Comptroller is down
            raise ComptrollerUnavailable(f"Comptroller is unavailable ({exc})", feature=feature) from exc

    def _prefetch_policy(self, feature: str) -> None:
        # The fail mode must be known before Comptroller goes away, so learn it while it answers.
        if self.fail_mode is None and not self._policy_fresh(feature):
            with contextlib.suppress(ComptrollerError):  # the reservation itself reports what is wrong
                self.feature_policy(feature, refresh=True)

    def reserve(
        self,
        feature: str,
        model: str,
        input_tokens: int,
        max_tokens: int,
        *,
        raise_on_deny: bool = True,
        **options: Any,
    ) -> Allowance:
        """Ask for an allowance; raise ``BudgetExceeded`` when denied (unless ``raise_on_deny=False``).

        ``options``: ``cache_read_tokens``, ``cache_write_5m_tokens``,
        ``cache_write_1h_tokens``, ``service_tier``, ``run_id``,
        ``idempotency_key``, ``ttl_seconds``, ``metadata``, ``inference_geo``,
        ``speed``, ``max_web_searches``.
        """
        body = self._reserve_body(feature, model, input_tokens, max_tokens, **options)
        self._prefetch_policy(feature)
        try:
            try:
                data = self._send("POST", "/allowances", body)
            except ApiError as exc:
                body = self._older_server(exc, body) or _reraise(exc)
                data = self._send("POST", "/allowances", body)
        except _Unreachable as exc:
            return self._offline(body, exc)
        return self._allowance(data, body, raise_on_deny)

    def commit(self, hold: HoldRef, usage: Any, **details: Any) -> CommitResult:
        """Report what the call consumed, and wait for the answer (``commit_later`` does not wait).

        ``details``: ``model``, ``request_id``, ``stop_reason``, ``latency_ms``,
        ``ttft_ms``, ``streamed``, ``metadata`` (merged into the hold's).
        Unavailable or rate-limited, the commit goes to the spool.
        """
        body = self._commit_body(usage, **details)
        if isinstance(hold, Allowance) and hold.offline:
            record = self.report_usage(self._offline_event(hold, body)).results[0]
            return CommitResult(
                id=None, state="spooled" if record.status == "spooled" else "reported",
                cost_usd=record.cost_usd, usage_event_id=record.usage_event_id,
                spooled=record.status == "spooled",
            )
        hold_id = self._hold_id(hold)
        try:
            try:
                data = self._send("POST", f"/allowances/{hold_id}/commit", body)
            except ApiError as exc:
                if exc.status == 400 and exc.code == "unknown_model" and "model" in body:
                    body = {k: v for k, v in body.items() if k != "model"}
                    body["metadata"] = {**(body.get("metadata") or {}), "reported_model": details["model"]}
                    data = self._send("POST", f"/allowances/{hold_id}/commit", body)
                else:
                    raise
        except (_Unreachable, RateLimited):
            self._enqueue({"kind": "commit", "hold_id": hold_id, "body": body})
            return CommitResult(id=hold_id, state="spooled", spooled=True)
        return CommitResult.from_json(data)

    def release(self, hold: HoldRef) -> ReleaseResult:
        """Give the hold back: the call did not happen."""
        hold_id = self._hold_id(hold)
        if hold_id is None:
            return ReleaseResult(id=None, state="released")  # an offline allowance holds nothing
        try:
            data = self._send("POST", f"/allowances/{hold_id}/release", {})
        except (_Unreachable, RateLimited):
            self._enqueue({"kind": "release", "hold_id": hold_id})
            return ReleaseResult(id=hold_id, state="spooled", spooled=True)
        return ReleaseResult(id=data.get("id", hold_id), state=str(data.get("state", "released")))

    def get_allowance(self, hold: HoldRef) -> dict[str, Any]:
        """Return the hold's current state as Comptroller reports it."""
        return self._send("GET", f"/allowances/{self._hold_id(hold)}")

    def report_usage(self, events: Mapping[str, Any] | Iterable[Mapping[str, Any]]) -> UsageReport:
        """Record usage that had no hold (batch results, integrations), and wait for the answer.

        Each event is a commit body plus ``feature`` and ``request_id`` (the
        idempotency key), and optionally ``run_id``, ``occurred_at`` (default:
        now, kept if the event waits in the spool), ``metadata``. Events that
        cannot be delivered now are spooled (status ``spooled``).
        """
        batches = _batches(self._events(events))
        records: list[UsageRecord] = []
        for index, batch in enumerate(batches):
            try:
                data = self._send("POST", "/usage", {"events": batch})
            except (_Unreachable, RateLimited):
                rest = [e for b in batches[index:] for e in b]
                for event in rest:
                    self.spool.put({"kind": "usage", "event": event})
                self._start_sender()
                records.extend(UsageRecord(request_id=e["request_id"], status="spooled") for e in rest)
                break
            records.extend(self._records(data))
        return UsageReport(results=tuple(records))

    def hold(self, feature: str, model: str, input_tokens: int, max_tokens: int, **options: Any) -> HoldContext:
        """Reserve on enter; commit the usage you ``attach`` on exit, or release if there is none."""
        return HoldContext(self, dict(feature=feature, model=model, input_tokens=input_tokens,
                                      max_tokens=max_tokens, **options))


class HoldContext:
    """``with comptroller.hold(...) as h:`` — call the model with ``h.model`` and ``h.max_tokens``."""

    def __init__(self, client: Comptroller, request: dict[str, Any]) -> None:
        self._client = client
        self._request = request
        self._usage: Any = None
        self._details: dict[str, Any] = {}
        self.allowance: Allowance | None = None
        self.result: CommitResult | ReleaseResult | None = None

    @property
    def model(self) -> str:
        assert self.allowance is not None
        return self.allowance.model

    @property
    def max_tokens(self) -> int:
        assert self.allowance is not None
        return self.allowance.max_tokens

    def attach(self, usage: Any, **details: Any) -> None:
        """Attach the call's usage (and ``model``, ``request_id``, ``stop_reason``, ...) to commit on exit."""
        self._usage = usage
        self._details.update(details)

    def attach_message(self, message: Any, **details: Any) -> None:
        """Attach an Anthropic ``Message``: its usage, model, id and stop reason."""
        self.attach(message.usage, model=message.model, request_id=message.id,
                    stop_reason=message.stop_reason, **details)

    def __enter__(self) -> HoldContext:
        self.allowance = self._client.reserve(**self._request)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self.allowance is not None
        # Usage attached means the call happened and was billed, even if the code after it failed.
        if self._usage is not None:
            self.result = self._client.commit(self.allowance, self._usage, **self._details)
        else:
            self.result = self._client.release(self.allowance)


class AsyncComptroller(_Base):
    """The asyncio client: the same methods as ``Comptroller``, awaitable.

    Allowances go over an ``httpx.AsyncClient`` on the caller's loop; reports
    handed to the sender go over the sender thread's own connection, so they
    are delivered even after the loop that made them has ended.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sync_transport: httpx.BaseTransport | None = None,
        **options: Any,
    ) -> None:
        super().__init__(base_url, api_key, sync_transport=sync_transport, **options)
        self._http = httpx.AsyncClient(base_url=f"{self.base_url}/api/v1", headers=self._headers,
                                       timeout=self.timeout, transport=transport, follow_redirects=False,
                                       limits=POOL_LIMITS)

    async def __aenter__(self) -> AsyncComptroller:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    async def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Deliver what waits in the spool (even while the breaker is open), then close."""
        with contextlib.suppress(RuntimeError):  # the pool belongs to a loop that has gone
            await self._http.aclose()
        await asyncio.get_running_loop().run_in_executor(None, self._shutdown, timeout)

    async def _send(self, method: str, path: str, body: Any = None) -> Any:
        if not self.breaker.allow():
            raise _Unreachable(f"{self.base_url}: unavailable moments ago")
        attempt = 0
        while True:
            response, error = None, None
            try:
                response = await self._http.request(method, path, json=body)
            except httpx.TransportError as exc:
                error = exc
            answer = self._settle(attempt, response, error, self.max_retries)
            if answer is not None:
                return answer
            await asyncio.sleep(self._delay(attempt, response if response is not None else error))  # type: ignore[arg-type]
            attempt += 1

    async def feature_policy(self, feature: str, *, refresh: bool = False) -> FeaturePolicy:
        if not refresh and self._policy_fresh(feature):
            return self._policies[feature][1]
        try:
            return self._store_policy(await self._send("GET", f"/features/{feature}"))
        except _Unreachable as exc:
            if feature in self._policies:
                return self._policies[feature][1]
            raise ComptrollerUnavailable(f"Comptroller is unavailable ({exc})", feature=feature) from exc

    async def _prefetch_policy(self, feature: str) -> None:
        if self.fail_mode is None and not self._policy_fresh(feature):
            with contextlib.suppress(ComptrollerError):
                await self.feature_policy(feature, refresh=True)

    async def reserve(
        self,
        feature: str,
        model: str,
        input_tokens: int,
        max_tokens: int,
        *,
        raise_on_deny: bool = True,
        **options: Any,
    ) -> Allowance:
        body = self._reserve_body(feature, model, input_tokens, max_tokens, **options)
        await self._prefetch_policy(feature)
        try:
            try:
                data = await self._send("POST", "/allowances", body)
            except ApiError as exc:
                body = self._older_server(exc, body) or _reraise(exc)
                data = await self._send("POST", "/allowances", body)
        except _Unreachable as exc:
            return self._offline(body, exc)
        return self._allowance(data, body, raise_on_deny)

    async def commit(self, hold: HoldRef, usage: Any, **details: Any) -> CommitResult:
        body = self._commit_body(usage, **details)
        if isinstance(hold, Allowance) and hold.offline:
            record = (await self.report_usage(self._offline_event(hold, body))).results[0]
            return CommitResult(
                id=None, state="spooled" if record.status == "spooled" else "reported",
                cost_usd=record.cost_usd, usage_event_id=record.usage_event_id,
                spooled=record.status == "spooled",
            )
        hold_id = self._hold_id(hold)
        try:
            data = await self._send("POST", f"/allowances/{hold_id}/commit", body)
        except (_Unreachable, RateLimited):
            self._enqueue({"kind": "commit", "hold_id": hold_id, "body": body})
            return CommitResult(id=hold_id, state="spooled", spooled=True)
        return CommitResult.from_json(data)

    async def release(self, hold: HoldRef) -> ReleaseResult:
        hold_id = self._hold_id(hold)
        if hold_id is None:
            return ReleaseResult(id=None, state="released")
        try:
            data = await self._send("POST", f"/allowances/{hold_id}/release", {})
        except (_Unreachable, RateLimited):
            self._enqueue({"kind": "release", "hold_id": hold_id})
            return ReleaseResult(id=hold_id, state="spooled", spooled=True)
        return ReleaseResult(id=data.get("id", hold_id), state=str(data.get("state", "released")))

    async def get_allowance(self, hold: HoldRef) -> dict[str, Any]:
        return await self._send("GET", f"/allowances/{self._hold_id(hold)}")

    async def report_usage(self, events: Mapping[str, Any] | Iterable[Mapping[str, Any]]) -> UsageReport:
        batches = _batches(self._events(events))
        records: list[UsageRecord] = []
        for index, batch in enumerate(batches):
            try:
                data = await self._send("POST", "/usage", {"events": batch})
            except (_Unreachable, RateLimited):
                rest = [e for b in batches[index:] for e in b]
                for event in rest:
                    self.spool.put({"kind": "usage", "event": event})
                self._start_sender()
                records.extend(UsageRecord(request_id=e["request_id"], status="spooled") for e in rest)
                break
            records.extend(self._records(data))
        return UsageReport(results=tuple(records))

    async def flush(self, *, timeout: float | None = None) -> int:  # type: ignore[override]
        """Deliver the spool now (on a worker thread), even while the breaker is open."""
        return await asyncio.get_running_loop().run_in_executor(None, lambda: _Base.flush(self, timeout=timeout))

    def hold(
        self, feature: str, model: str, input_tokens: int, max_tokens: int, **options: Any
    ) -> AsyncHoldContext:
        return AsyncHoldContext(self, dict(feature=feature, model=model, input_tokens=input_tokens,
                                           max_tokens=max_tokens, **options))


class AsyncHoldContext:
    """``async with comptroller.hold(...) as h:`` — the asyncio twin of ``HoldContext``."""

    def __init__(self, client: AsyncComptroller, request: dict[str, Any]) -> None:
        self._client = client
        self._request = request
        self._usage: Any = None
        self._details: dict[str, Any] = {}
        self.allowance: Allowance | None = None
        self.result: CommitResult | ReleaseResult | None = None

    model = HoldContext.model
    max_tokens = HoldContext.max_tokens
    attach = HoldContext.attach
    attach_message = HoldContext.attach_message

    async def __aenter__(self) -> AsyncHoldContext:
        self.allowance = await self._client.reserve(**self._request)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self.allowance is not None
        if self._usage is not None:
            self.result = await self._client.commit(self.allowance, self._usage, **self._details)
        else:
            self.result = await self._client.release(self.allowance)
