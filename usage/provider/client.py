"""The one module that talks to Anthropic's Usage and Cost Admin API.

Timeouts on every request, backoff on 429 (honouring ``retry-after``), 5xx and
network errors, and a ``ProviderError`` whose ``permanent`` flag says whether
retrying later can help (401/403/other 4xx cannot: a person must fix the key or
the configuration).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

logger = logging.getLogger(__name__)

# httpx's own element type: lists are invariant, so a list[tuple[str, str]] would not be accepted.
QueryPairs = list[tuple[str, str | int | float | bool | None]]

ANTHROPIC_VERSION = "2023-06-01"
USER_AGENT = "Comptroller/0.1 (provider-sync; +https://github.com/comptroller)"
USAGE_PATH = "/v1/organizations/usage_report/messages"
COST_PATH = "/v1/organizations/cost_report"
USAGE_GROUP_BY = ("model", "workspace_id", "api_key_id", "service_tier", "context_window", "inference_geo")
COST_GROUP_BY = ("workspace_id", "description")
# A runaway pagination (a server that always says has_more) must end somewhere.
MAX_PAGES = 10_000


class ProviderError(Exception):
    """A failed call to the provider; ``permanent`` errors need a person, not a retry."""

    def __init__(self, message: str, *, permanent: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.status = status

    @property
    def auth_failed(self) -> bool:
        return self.status in (401, 403)


def rfc3339(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class AdminApiClient:
    """A client for the two reports; iterate a report's buckets across every page."""

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str,
        timeout: float = 30.0,
        max_attempts: int = 5,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={
                "x-api-key": api_key,
                "anthropic-version": ANTHROPIC_VERSION,
                "user-agent": USER_AGENT,
                "accept": "application/json",
            },
            timeout=httpx.Timeout(timeout, connect=10.0),
            transport=transport,
            follow_redirects=False,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AdminApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reports ----------------------------------------------------------------------

    def usage_buckets(
        self,
        *,
        starting_at: datetime,
        ending_at: datetime,
        workspace_ids: list[str] | None = None,
        limit: int = 168,
    ) -> Iterator[dict[str, Any]]:
        """Yield the 1-hour buckets of the messages usage report, grouped by every dimension we keep."""
        params: QueryPairs = [
            ("starting_at", rfc3339(starting_at)),
            ("ending_at", rfc3339(ending_at)),
            ("bucket_width", "1h"),
            ("limit", str(limit)),
        ]
        params += [("group_by[]", name) for name in USAGE_GROUP_BY]
        params += [("workspace_ids[]", w) for w in workspace_ids or []]
        yield from self._buckets(USAGE_PATH, params)

    def cost_buckets(
        self,
        *,
        starting_at: datetime,
        ending_at: datetime,
        limit: int = 31,
    ) -> Iterator[dict[str, Any]]:
        """Yield the 1-day buckets of the cost report, grouped by workspace and description.

        The cost report documents no workspace filter, so none is sent (an unknown
        parameter could be refused); callers filter by the grouped ``workspace_id``.
        """
        params: QueryPairs = [
            ("starting_at", rfc3339(starting_at)),
            ("ending_at", rfc3339(ending_at)),
            ("bucket_width", "1d"),
            ("limit", str(limit)),
        ]
        params += [("group_by[]", name) for name in COST_GROUP_BY]
        yield from self._buckets(COST_PATH, params)

    # --- pagination and transport -----------------------------------------------------

    def _buckets(self, path: str, params: QueryPairs) -> Iterator[dict[str, Any]]:
        # Every parameter stays identical from page to page; only `page` is added.
        page: str | None = None
        for _ in range(MAX_PAGES):
            body = self._get(path, [*params, ("page", page)] if page else params)
            data = body.get("data")
            if not isinstance(data, list):
                raise ProviderError(f"Malformed response from {path}: 'data' is not a list.", permanent=False)
            for bucket in data:
                if not isinstance(bucket, dict) or not isinstance(bucket.get("results"), list):
                    raise ProviderError(
                        f"Malformed response from {path}: a bucket has no 'results' list.", permanent=False
                    )
                yield bucket
            if not body.get("has_more"):
                return
            page = body.get("next_page")
            if not isinstance(page, str) or not page:
                raise ProviderError(
                    f"Malformed response from {path}: has_more without next_page.", permanent=False
                )
        raise ProviderError(f"{path} returned more than {MAX_PAGES} pages.", permanent=False)

    def _get(self, path: str, params: QueryPairs) -> dict[str, Any]:
        last: ProviderError | None = None
        for attempt in range(1, self._max_attempts + 1):
            try:
                response = self._http.get(path, params=params)
            except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
                raise ProviderError(f"The API base URL is not usable ({exc}).", permanent=True) from exc
            except httpx.TimeoutException:
                last = ProviderError(f"Timed out calling {path}.", permanent=False)
                delay = self._backoff(attempt)
            except httpx.TransportError as exc:
                last = ProviderError(f"Could not reach the provider ({type(exc).__name__}).", permanent=False)
                delay = self._backoff(attempt)
            else:
                status = response.status_code
                if status == 200:
                    return self._json(path, response)
                message = self._error_message(path, response)
                if status == 429 or status >= 500:
                    last = ProviderError(message, permanent=False, status=status)
                    wait = self._retry_after(response)
                    if wait is not None and wait > self._backoff_max:
                        # Never sooner than asked; a long wait is the next beat run's to make.
                        raise ProviderError(f"{message} (retry after {wait:.0f}s)", permanent=False, status=status)
                    delay = wait if wait is not None else self._backoff(attempt)
                else:
                    # 401/403: a bad or revoked key; other 4xx: our request or the configuration.
                    raise ProviderError(message, permanent=True, status=status)
            if attempt < self._max_attempts:
                logger.info("provider %s: %s; retrying in %.1fs", path, last, delay)
                self._sleep(delay)
        assert last is not None
        raise last

    def _backoff(self, attempt: int) -> float:
        return min(self._backoff_base * 2 ** (attempt - 1), self._backoff_max)

    def _retry_after(self, response: httpx.Response) -> float | None:
        value = response.headers.get("retry-after")
        if not value:
            return None
        try:
            seconds = float(value)
        except ValueError:
            try:
                seconds = (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
            except (TypeError, ValueError):
                return None
        return max(seconds, 0.0)

    @staticmethod
    def _json(path: str, response: httpx.Response) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError as exc:
            raise ProviderError(f"Malformed response from {path}: not JSON.", permanent=False) from exc
        if not isinstance(body, dict):
            raise ProviderError(f"Malformed response from {path}: not a JSON object.", permanent=False)
        return body

    @staticmethod
    def _error_message(path: str, response: httpx.Response) -> str:
        # The provider's own message helps ("invalid x-api-key"); it never echoes the key back.
        detail = ""
        try:
            body = response.json()
            if isinstance(body, dict) and isinstance(body.get("error"), dict):
                detail = str(body["error"].get("message", ""))[:300]
        except ValueError:
            pass
        text = f"{path} answered HTTP {response.status_code}"
        return f"{text}: {detail}" if detail else text + "."
