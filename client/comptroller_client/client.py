"""Comptroller's REST API from Python: ask before a model call, report after it.

``Comptroller`` is the synchronous client and ``AsyncComptroller`` the asyncio
one; both share every rule below and differ only in how they wait.

Retries: a transport error, 429, 500, 502, 503 or 504 is retried with
exponential backoff and jitter (``Retry-After`` is honoured up to
``max_backoff``). Every request is safe to repeat: a reservation carries an
idempotency key that stays the same across its retries, a commit or release
of the same hold with the same body answers the same, and usage events are
keyed by ``request_id``. A retried request therefore never holds or commits
twice.

Unreachable (transport errors or 5xx after the retries, or within
``breaker_seconds`` of such a failure): a reservation follows the fail mode —
the client's ``fail_mode`` if given, else the feature's (fetched from
``GET /api/v1/features/{key}`` and cached for ``policy_ttl`` seconds; a stale
copy is used while Comptroller is down), else ``unknown_fail_mode``. Fail
closed raises ``ComptrollerUnavailable``; fail open returns an ``offline``
allowance for the requested model. Commits, releases and usage reports that
cannot be delivered go to the bounded spool and are sent when Comptroller
answers again: after the next successful commit or report, every
``flush_interval`` seconds in the background while anything waits, on
``flush()`` and on ``close()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from types import TracebackType
from typing import Any, Union

import httpx

from comptroller_client.errors import (
    ApiError,
    BudgetExceeded,
    ComptrollerError,
    ComptrollerUnavailable,
    RateLimited,
)
from comptroller_client.spool import Spool
from comptroller_client.types import (
    Allowance,
    CommitResult,
    FeaturePolicy,
    ReleaseResult,
    UsageRecord,
    UsageReport,
    parse_usd,
)

logger = logging.getLogger("comptroller_client")

VERSION = "0.1.0"
DEFAULT_TIMEOUT = 2.0
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
USAGE_BATCH_LIMIT = 1000  # the contract's events per POST /api/v1/usage
USAGE_BODY_LIMIT = 900_000  # bytes of events per request, under the contract's 1 MiB with room to spare
FAIL_MODES = ("open", "closed")
# Spooled reports the server refused for good (bad data, a conflicting commit) are dropped;
# auth and rate errors may heal, so those stay in the spool.
PERMANENT_STATUSES = frozenset({400, 404, 409, 413})

HoldRef = Union[Allowance, str]


class _Unreachable(Exception):
    """Retries are exhausted on a transport error or a 5xx, or the breaker is open."""


def usage_dict(usage: Any) -> dict[str, Any]:
    """Return a usage object (an Anthropic ``Usage``, a dict, ...) as a JSON dict without nulls."""
    if usage is None:
        return {}
    if isinstance(usage, Mapping):
        data = dict(usage)
    elif hasattr(usage, "to_dict"):
        data = usage.to_dict()
    elif hasattr(usage, "model_dump"):
        data = usage.model_dump()
    else:
        data = dict(vars(usage))
    return _without_none(data)


def _without_none(data: dict[str, Any]) -> dict[str, Any]:
    return {k: (_without_none(v) if isinstance(v, dict) else v) for k, v in data.items() if v is not None}


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
    return cls(response.status_code, code, message, details)


def _entry_batches(entries: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Group spooled usage entries the way ``_batches`` groups their events."""
    by_id = {id(e["event"]): e for e in entries}
    return [[by_id[id(event)] for event in batch] for batch in _batches([e["event"] for e in entries])]


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


class _Base:
    """Configuration, request bodies, answers and the failure policy shared by both clients."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
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
        spool_size: int = 10_000,
        spool_path: str | None = None,
        auto_flush: bool = True,
        flush_interval: float = 30.0,
    ) -> None:
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
        self.breaker_seconds = breaker_seconds
        self.spool = spool if spool is not None else Spool(spool_size, spool_path)
        self.auto_flush = auto_flush
        self.flush_interval = flush_interval
        self._headers = {"Authorization": f"Bearer {api_key}", "User-Agent": f"comptroller-client/{VERSION}"}
        self._policies: dict[str, tuple[float, FeaturePolicy]] = {}
        self._down_until = 0.0

    # -- transport helpers ------------------------------------------------

    def _breaker_open(self) -> bool:
        return self._down_until > 0 and time.monotonic() < self._down_until

    def _mark_down(self) -> None:
        self._down_until = time.monotonic() + self.breaker_seconds if self.breaker_seconds > 0 else 0.0

    def _delay(self, attempt: int, failure: httpx.Response | BaseException) -> float:
        if isinstance(failure, httpx.Response) and "retry-after" in failure.headers:
            value = failure.headers["retry-after"]
            try:
                seconds = float(value)
            except ValueError:
                parsed = email.utils.parsedate_to_datetime(value)
                seconds = (parsed - datetime.now(timezone.utc)).total_seconds() if parsed else self.backoff
            return max(0.0, min(self.max_backoff, seconds))
        return min(self.max_backoff, self.backoff * (2**attempt)) * random.uniform(0.5, 1.0)

    def _settle(self, attempt: int, response: httpx.Response | None, error: BaseException | None) -> Any:
        """Return the decoded answer, raise a permanent error, or return None to retry."""
        if response is not None and response.status_code < 400:
            self._down_until = 0.0
            if not response.content:
                return {}
            try:
                return response.json()
            except ValueError as exc:
                raise ComptrollerError(f"Comptroller answered {response.status_code} with non-JSON") from exc
        if response is not None and response.status_code not in RETRY_STATUSES:
            raise _api_error(response)
        failure: httpx.Response | BaseException = response if response is not None else error  # type: ignore[assignment]
        if attempt < self.max_retries:
            return None
        if response is not None and response.status_code == 429:
            raise _api_error(response)
        self._mark_down()
        raise _Unreachable(f"{self.base_url}: {_describe(failure)}")

    # -- bodies and answers ----------------------------------------------------

    def _reserve_body(
        self,
        feature: str,
        model: str,
        input_tokens: int,
        max_tokens: int,
        *,
        cache_read_tokens: int = 0,
        cache_write_5m_tokens: int = 0,
        cache_write_1h_tokens: int = 0,
        service_tier: str = "standard",
        run_id: str | None = None,
        idempotency_key: str | None = None,
        ttl_seconds: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "feature": feature,
            "model": model,
            "input_tokens": int(input_tokens),
            "max_tokens": int(max_tokens),
            "service_tier": service_tier,
            # The same key on every retry of this reservation: a retry never holds twice.
            "idempotency_key": idempotency_key or f"cc_{uuid.uuid4().hex}",
        }
        optional = {
            "cache_read_tokens": cache_read_tokens,
            "cache_write_5m_tokens": cache_write_5m_tokens,
            "cache_write_1h_tokens": cache_write_1h_tokens,
            "run_id": run_id,
            "ttl_seconds": ttl_seconds,
            "metadata": metadata,
        }
        body.update({k: v for k, v in optional.items() if v})
        return body

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
        mode = self._fail_mode_for(feature)
        if mode != "open":
            raise ComptrollerUnavailable(
                f"Comptroller is unreachable ({exc}) and feature {feature!r} fails closed: "
                f"the call to {body['model']} was not made.",
                feature=feature,
            ) from exc
        logger.warning("Comptroller unreachable (%s); feature %r fails open, calling unverified", exc, feature)
        cached = self._policies.get(feature)
        cap = cached[1].max_tokens_cap if cached else None
        max_tokens = min(body["max_tokens"], cap) if cap else body["max_tokens"]
        return Allowance(
            id=None,
            granted=True,
            decision="unverified",
            reason="comptroller_unreachable",
            model=body["model"],
            max_tokens=max_tokens,
            clamped=max_tokens < body["max_tokens"],
            feature=feature,
            requested_model=body["model"],
            service_tier=body.get("service_tier", "standard"),
            run_id=body.get("run_id"),
            metadata=body.get("metadata"),
            offline=True,
            input_tokens=body["input_tokens"],
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
        event.setdefault("request_id", f"local_{uuid.uuid4().hex}")
        event["feature"] = hold.feature
        if hold.run_id:
            event["run_id"] = hold.run_id
        metadata = {**(hold.metadata or {}), **(body.get("metadata") or {}), "comptroller_offline": True}
        event["metadata"] = metadata
        event["usage"].setdefault("service_tier", hold.service_tier)
        return event

    @staticmethod
    def _events(events: Mapping[str, Any] | Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        items = [events] if isinstance(events, Mapping) else list(events)
        out = []
        for index, item in enumerate(items):
            event = {k: v for k, v in item.items() if v is not None}
            if not event.get("feature") or not event.get("request_id"):
                raise ValueError(f"usage event {index} needs 'feature' and 'request_id'")
            event["usage"] = usage_dict(event.get("usage"))
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

    def _spool_events(self, events: list[dict[str, Any]]) -> list[UsageRecord]:
        for event in events:
            self._spool({"kind": "usage", "event": event})
        return [UsageRecord(request_id=e["request_id"], status="spooled") for e in events]

    def _spool(self, entry: dict[str, Any]) -> None:
        self.spool.put(entry)
        if self.flush_interval > 0:
            self._start_flusher()

    def _start_flusher(self) -> None:
        """Start retrying the spool in the background until it is empty (see the subclasses)."""

    @staticmethod
    def _hold_id(hold: HoldRef) -> str | None:
        return hold.id if isinstance(hold, Allowance) else hold

    @staticmethod
    def _drop(entry: dict[str, Any], exc: ApiError) -> bool:
        """Return whether a spooled report the server refused should be forgotten."""
        if exc.status in PERMANENT_STATUSES:
            logger.error("Comptroller refused a spooled %s for good (%s); dropping it", entry["kind"], exc)
            return True
        return False


class Comptroller(_Base):
    """The synchronous client. Thread-safe; keep one per process and reuse it."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        fail_mode: str | None = None,
        transport: httpx.BaseTransport | None = None,
        **options: Any,
    ) -> None:
        super().__init__(base_url, api_key, timeout=timeout, fail_mode=fail_mode, **options)
        self._http = httpx.Client(
            base_url=f"{self.base_url}/api/v1", headers=self._headers, timeout=timeout, transport=transport
        )
        self._flush_lock = threading.Lock()
        self._flusher: threading.Thread | None = None
        self._closed = threading.Event()

    def _start_flusher(self) -> None:
        # A daemon thread, started only while something waits in the spool: an idle
        # service still reports its fail-open usage soon after Comptroller is back.
        if self._flusher is None or not self._flusher.is_alive():
            self._flusher = threading.Thread(target=self._flush_until_empty, name="comptroller-spool", daemon=True)
            self._flusher.start()

    def _flush_until_empty(self) -> None:
        while len(self.spool) and not self._closed.wait(self.flush_interval):
            self.flush()

    def __enter__(self) -> Comptroller:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        """Try once more to deliver the spool, then close the connection pool."""
        self._closed.set()
        if len(self.spool):
            self.flush()
        self._http.close()

    def _send(self, method: str, path: str, body: Any = None) -> Any:
        if self._breaker_open():
            raise _Unreachable(f"{self.base_url}: unreachable moments ago")
        attempt = 0
        while True:
            response, error = None, None
            try:
                response = self._http.request(method, path, json=body)
            except httpx.TransportError as exc:
                error = exc
            answer = self._settle(attempt, response, error)
            if answer is not None:
                return answer
            time.sleep(self._delay(attempt, response if response is not None else error))  # type: ignore[arg-type]
            attempt += 1

    def feature_policy(self, feature: str, *, refresh: bool = False) -> FeaturePolicy:
        """Return the feature's policy, from the cache unless it is older than ``policy_ttl``."""
        if not refresh and self._policy_fresh(feature):
            return self._policies[feature][1]
        try:
            return self._store_policy(self._send("GET", f"/features/{feature}"))
        except _Unreachable as exc:
            if feature in self._policies:
                return self._policies[feature][1]  # stale beats nothing while Comptroller is down
            raise ComptrollerUnavailable(f"Comptroller is unreachable ({exc})", feature=feature) from exc

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
        ``idempotency_key``, ``ttl_seconds``, ``metadata``.
        """
        body = self._reserve_body(feature, model, input_tokens, max_tokens, **options)
        self._prefetch_policy(feature)
        try:
            data = self._send("POST", "/allowances", body)
        except _Unreachable as exc:
            return self._offline(body, exc)
        return self._allowance(data, body, raise_on_deny)

    def commit(self, hold: HoldRef, usage: Any, **details: Any) -> CommitResult:
        """Report what the call consumed: ``usage`` as the Messages API returned it.

        ``details``: ``model``, ``request_id``, ``stop_reason``, ``latency_ms``,
        ``ttft_ms``, ``streamed``, ``metadata`` (merged into the hold's).
        """
        body = self._commit_body(usage, **details)
        if isinstance(hold, Allowance) and hold.offline:
            record = self.report_usage(self._offline_event(hold, body)).results[0]
            return CommitResult(
                id=None,
                state="spooled" if record.status == "spooled" else "reported",
                cost_usd=record.cost_usd,
                usage_event_id=record.usage_event_id,
                spooled=record.status == "spooled",
            )
        hold_id = self._hold_id(hold)
        try:
            data = self._send("POST", f"/allowances/{hold_id}/commit", body)
        except _Unreachable:
            self._spool({"kind": "commit", "hold_id": hold_id, "body": body})
            return CommitResult(id=hold_id, state="spooled", spooled=True)
        self._after_success()
        return CommitResult.from_json(data)

    def release(self, hold: HoldRef) -> ReleaseResult:
        """Give the hold back: the call did not happen."""
        hold_id = self._hold_id(hold)
        if hold_id is None:
            return ReleaseResult(id=None, state="released")  # an offline allowance holds nothing
        try:
            data = self._send("POST", f"/allowances/{hold_id}/release", {})
        except _Unreachable:
            self._spool({"kind": "release", "hold_id": hold_id})
            return ReleaseResult(id=hold_id, state="spooled", spooled=True)
        self._after_success()
        return ReleaseResult(id=data.get("id", hold_id), state=str(data.get("state", "released")))

    def get_allowance(self, hold: HoldRef) -> dict[str, Any]:
        """Return the hold's current state as Comptroller reports it."""
        return self._send("GET", f"/allowances/{self._hold_id(hold)}")

    def report_usage(self, events: Mapping[str, Any] | Iterable[Mapping[str, Any]]) -> UsageReport:
        """Record usage that had no hold (batch results, integrations); spooled if unreachable.

        Each event is a commit body plus ``feature`` and ``request_id`` (the
        idempotency key), and optionally ``run_id``, ``occurred_at``, ``metadata``.
        """
        batches = _batches(self._events(events))
        records: list[UsageRecord] = []
        for index, batch in enumerate(batches):
            try:
                data = self._send("POST", "/usage", {"events": batch})
            except _Unreachable:
                records.extend(self._spool_events([e for b in batches[index:] for e in b]))
                break
            records.extend(self._records(data))
        else:
            self._after_success()
        return UsageReport(results=tuple(records))

    def hold(self, feature: str, model: str, input_tokens: int, max_tokens: int, **options: Any) -> HoldContext:
        """Reserve on enter; commit the usage you ``attach`` on exit, or release if there is none."""
        return HoldContext(self, dict(feature=feature, model=model, input_tokens=input_tokens,
                                      max_tokens=max_tokens, **options))

    def _after_success(self) -> None:
        if self.auto_flush and len(self.spool):
            self.flush()

    def flush(self) -> int:
        """Deliver the spool; return how many reports left it. Stops at the first unreachable."""
        if not self._flush_lock.acquire(blocking=False):
            return 0  # another thread is delivering it
        done: list[dict[str, Any]] = []
        try:
            entries = self.spool.peek()
            usage = [e for e in entries if e["kind"] == "usage"]
            for chunk in _entry_batches(usage):
                try:
                    self._send("POST", "/usage", {"events": [e["event"] for e in chunk]})
                    done.extend(chunk)
                except ApiError as exc:
                    if exc.status not in (400, 413):
                        raise
                    for entry in chunk:  # one bad event refuses the batch: find it, keep the rest
                        try:
                            self._send("POST", "/usage", {"events": [entry["event"]]})
                            done.append(entry)
                        except ApiError as one:
                            if self._drop(entry, one):
                                done.append(entry)
            for entry in (e for e in entries if e["kind"] != "usage"):
                body = entry.get("body", {})
                try:
                    self._send("POST", f"/allowances/{entry['hold_id']}/{entry['kind']}", body)
                    done.append(entry)
                except ApiError as exc:
                    if self._drop(entry, exc):
                        done.append(entry)
        except (_Unreachable, ApiError) as exc:
            logger.info("Comptroller spool not delivered yet (%s); %d waiting", exc, len(self.spool) - len(done))
        finally:
            self.spool.remove(done)
            self._flush_lock.release()
        return len(done)


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
    """The asyncio client: the same methods as ``Comptroller``, awaitable."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        fail_mode: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        **options: Any,
    ) -> None:
        super().__init__(base_url, api_key, timeout=timeout, fail_mode=fail_mode, **options)
        self._http = httpx.AsyncClient(
            base_url=f"{self.base_url}/api/v1", headers=self._headers, timeout=timeout, transport=transport
        )
        self._flushing = False
        self._flusher: asyncio.Task[None] | None = None

    def _start_flusher(self) -> None:
        if self._flusher is None or self._flusher.done():
            # Without a running loop the next success or close() delivers the spool.
            with contextlib.suppress(RuntimeError):
                self._flusher = asyncio.get_running_loop().create_task(self._flush_until_empty())

    async def _flush_until_empty(self) -> None:
        while len(self.spool):
            await asyncio.sleep(self.flush_interval)
            await self.flush()

    async def __aenter__(self) -> AsyncComptroller:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
        if len(self.spool):
            await self.flush()
        await self._http.aclose()

    async def _send(self, method: str, path: str, body: Any = None) -> Any:
        if self._breaker_open():
            raise _Unreachable(f"{self.base_url}: unreachable moments ago")
        attempt = 0
        while True:
            response, error = None, None
            try:
                response = await self._http.request(method, path, json=body)
            except httpx.TransportError as exc:
                error = exc
            answer = self._settle(attempt, response, error)
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
            raise ComptrollerUnavailable(f"Comptroller is unreachable ({exc})", feature=feature) from exc

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
            data = await self._send("POST", "/allowances", body)
        except _Unreachable as exc:
            return self._offline(body, exc)
        return self._allowance(data, body, raise_on_deny)

    async def commit(self, hold: HoldRef, usage: Any, **details: Any) -> CommitResult:
        body = self._commit_body(usage, **details)
        if isinstance(hold, Allowance) and hold.offline:
            record = (await self.report_usage(self._offline_event(hold, body))).results[0]
            return CommitResult(
                id=None,
                state="spooled" if record.status == "spooled" else "reported",
                cost_usd=record.cost_usd,
                usage_event_id=record.usage_event_id,
                spooled=record.status == "spooled",
            )
        hold_id = self._hold_id(hold)
        try:
            data = await self._send("POST", f"/allowances/{hold_id}/commit", body)
        except _Unreachable:
            self._spool({"kind": "commit", "hold_id": hold_id, "body": body})
            return CommitResult(id=hold_id, state="spooled", spooled=True)
        await self._after_success()
        return CommitResult.from_json(data)

    async def release(self, hold: HoldRef) -> ReleaseResult:
        hold_id = self._hold_id(hold)
        if hold_id is None:
            return ReleaseResult(id=None, state="released")
        try:
            data = await self._send("POST", f"/allowances/{hold_id}/release", {})
        except _Unreachable:
            self._spool({"kind": "release", "hold_id": hold_id})
            return ReleaseResult(id=hold_id, state="spooled", spooled=True)
        await self._after_success()
        return ReleaseResult(id=data.get("id", hold_id), state=str(data.get("state", "released")))

    async def get_allowance(self, hold: HoldRef) -> dict[str, Any]:
        return await self._send("GET", f"/allowances/{self._hold_id(hold)}")

    async def report_usage(
        self, events: Mapping[str, Any] | Iterable[Mapping[str, Any]]
    ) -> UsageReport:
        batches = _batches(self._events(events))
        records: list[UsageRecord] = []
        for index, batch in enumerate(batches):
            try:
                data = await self._send("POST", "/usage", {"events": batch})
            except _Unreachable:
                records.extend(self._spool_events([e for b in batches[index:] for e in b]))
                break
            records.extend(self._records(data))
        else:
            await self._after_success()
        return UsageReport(results=tuple(records))

    def hold(
        self, feature: str, model: str, input_tokens: int, max_tokens: int, **options: Any
    ) -> AsyncHoldContext:
        return AsyncHoldContext(self, dict(feature=feature, model=model, input_tokens=input_tokens,
                                           max_tokens=max_tokens, **options))

    async def _after_success(self) -> None:
        if self.auto_flush and len(self.spool):
            await self.flush()

    async def flush(self) -> int:
        if self._flushing:
            return 0
        self._flushing = True
        done: list[dict[str, Any]] = []
        try:
            entries = self.spool.peek()
            usage = [e for e in entries if e["kind"] == "usage"]
            for chunk in _entry_batches(usage):
                try:
                    await self._send("POST", "/usage", {"events": [e["event"] for e in chunk]})
                    done.extend(chunk)
                except ApiError as exc:
                    if exc.status not in (400, 413):
                        raise
                    for entry in chunk:
                        try:
                            await self._send("POST", "/usage", {"events": [entry["event"]]})
                            done.append(entry)
                        except ApiError as one:
                            if self._drop(entry, one):
                                done.append(entry)
            for entry in (e for e in entries if e["kind"] != "usage"):
                try:
                    await self._send("POST", f"/allowances/{entry['hold_id']}/{entry['kind']}", entry.get("body", {}))
                    done.append(entry)
                except ApiError as exc:
                    if self._drop(entry, exc):
                        done.append(entry)
        except (_Unreachable, ApiError) as exc:
            logger.info("Comptroller spool not delivered yet (%s); %d waiting", exc, len(self.spool) - len(done))
        finally:
            self.spool.remove(done)
            self._flushing = False
        return len(done)


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
