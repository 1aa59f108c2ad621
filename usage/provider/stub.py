"""A stand-in for Anthropic's Usage and Cost Admin API, speaking the documented shapes.

Tests and the benchmark serve it with pytest-httpserver (``StubReports.serve``);
it paginates by ``limit``, insists the other parameters stay identical from page
to page, checks the headers, and can be scripted to fail first (429, 500, 401 …).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

USAGE_PATH = "/v1/organizations/usage_report/messages"
COST_PATH = "/v1/organizations/cost_report"
WIDTHS = {"1h": timedelta(hours=1), "1d": timedelta(days=1)}


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value).astimezone(UTC)


def _stamp(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Canned:
    """A scripted answer served instead of the report (once)."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class StubReports:
    """The two reports' data, by bucket start, and a log of what was asked."""

    api_key: str = "sk-ant-admin01-stub-key-0000"
    usage: dict[datetime, list[dict[str, Any]]] = field(default_factory=dict)
    cost: dict[datetime, list[dict[str, Any]]] = field(default_factory=dict)
    # Serve at most this many buckets a page regardless of `limit` (to force pagination).
    page_size: int | None = None
    script: list[Canned] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)

    def handle(self, path: str, args: Mapping[str, list[str]], headers: Mapping[str, str]
               ) -> tuple[int, dict[str, str], Any]:
        """Answer one request: (status, headers, JSON body)."""
        self.requests.append({"path": path, "args": {k: list(v) for k, v in args.items()}})
        if self.script:
            canned = self.script.pop(0)
            return canned.status, canned.headers, canned.body
        if headers.get("x-api-key") != self.api_key:
            return 401, {}, {"type": "error", "error": {"type": "authentication_error",
                                                        "message": "invalid x-api-key"}}
        if headers.get("anthropic-version") != "2023-06-01":
            return 400, {}, _error("anthropic-version header is required")
        if path == USAGE_PATH:
            return self._report(args, self.usage, default_width="1m")
        if path == COST_PATH:
            return self._report(args, self.cost, default_width="1d")
        return 404, {}, _error("not found")

    def _report(self, args: Mapping[str, list[str]], data: dict[datetime, list[dict[str, Any]]],
                default_width: str) -> tuple[int, dict[str, str], Any]:
        try:
            start = _parse(args["starting_at"][0])
            end = _parse(args["ending_at"][0]) if "ending_at" in args else start + timedelta(days=7)
            width = WIDTHS[(args.get("bucket_width") or [default_width])[0]]
            limit = int((args.get("limit") or ["7"])[0])
        except (KeyError, ValueError):
            return 400, {}, _error("invalid parameters")
        fixed = sorted((k, tuple(v)) for k, v in args.items() if k != "page")
        fingerprint = hashlib.sha256(repr(fixed).encode()).hexdigest()[:12]
        offset = 0
        if "page" in args:
            token = args["page"][0]
            prefix, _, rest = token.partition("_")
            got_offset, _, got_fingerprint = rest.partition("_")
            if prefix != "page" or got_fingerprint != fingerprint:
                # The real API ties a page token to the query that produced it.
                return 400, {}, _error("page token does not match the query parameters")
            offset = int(got_offset)
        starts = []
        at = start
        while at < end:
            starts.append(at)
            at += width
        size = min(limit, self.page_size or limit)
        page = starts[offset : offset + size]
        body = {
            "data": [
                {"starting_at": _stamp(s), "ending_at": _stamp(s + width), "results": list(data.get(s, []))}
                for s in page
            ],
            "has_more": offset + size < len(starts),
            "next_page": f"page_{offset + size}_{fingerprint}" if offset + size < len(starts) else None,
        }
        return 200, {}, body

    def serve(self, httpserver) -> str:
        """Serve this stub on a pytest-httpserver; return its base URL."""
        from werkzeug.wrappers import Response

        def handler(request):
            status, headers, body = self.handle(
                request.path, request.args.to_dict(flat=False), {k.lower(): v for k, v in request.headers.items()}
            )
            text = body if isinstance(body, str) else json.dumps(body)
            return Response(text, status=status, headers=headers, content_type="application/json")

        httpserver.expect_request(USAGE_PATH).respond_with_handler(handler)
        httpserver.expect_request(COST_PATH).respond_with_handler(handler)
        return httpserver.url_for("/").rstrip("/")


def _error(message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": "invalid_request_error", "message": message}}


def usage_row(
    *,
    model: str | None = "claude-sonnet-4-5-20250929",
    uncached_input_tokens: int = 0,
    output_tokens: int = 0,
    cache_write_5m: int = 0,
    cache_write_1h: int = 0,
    cache_read: int = 0,
    web_search_requests: int = 0,
    workspace_id: str | None = None,
    api_key_id: str | None = None,
    service_tier: str | None = "standard",
    context_window: str | None = "0-200k",
    inference_geo: str | None = "global",
) -> dict[str, Any]:
    """Return one usage report result in the documented shape."""
    return {
        "uncached_input_tokens": uncached_input_tokens,
        "cache_creation": {"ephemeral_5m_input_tokens": cache_write_5m, "ephemeral_1h_input_tokens": cache_write_1h},
        "cache_read_input_tokens": cache_read,
        "output_tokens": output_tokens,
        "server_tool_use": {"web_search_requests": web_search_requests},
        "model": model,
        "workspace_id": workspace_id,
        "api_key_id": api_key_id,
        "service_tier": service_tier,
        "context_window": context_window,
        "inference_geo": inference_geo,
    }


def cost_row(
    *,
    amount: str,
    description: str | None = "Claude Sonnet 4.5 Usage - Input Tokens",
    model: str | None = "claude-sonnet-4-5-20250929",
    workspace_id: str | None = None,
    cost_type: str | None = "tokens",
    service_tier: str | None = "standard",
    context_window: str | None = "0-200k",
    token_type: str | None = "uncached_input_tokens",
) -> dict[str, Any]:
    """Return one cost report result (grouped by workspace and description)."""
    return {
        "currency": "USD",
        "amount": amount,
        "workspace_id": workspace_id,
        "description": description,
        "cost_type": cost_type,
        "model": model,
        "service_tier": service_tier,
        "context_window": context_window,
        "token_type": token_type,
    }
