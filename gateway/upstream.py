"""The upstream Messages API: pooled HTTP connections, the headers that cross, count_tokens.

Under ASGI every request of a worker runs on one event loop, and one ``httpx.AsyncClient``
per loop keeps its connections to Anthropic alive between calls (``GATEWAY_MAX_CONNECTIONS``,
all of them kept alive). Under WSGI (Django runs an async view in a fresh loop per
request) a client lives for one request: a loop's connections cannot outlive it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
from django.conf import settings

logger = logging.getLogger(__name__)

# Headers that never cross the gateway in either direction (RFC 9110 hop-by-hop, and lengths,
# which the server sets for the bytes it actually sends).
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host", "content-length",
})
# Request headers that are the caller's credentials or ours, never Anthropic's.
PRIVATE_REQUEST = frozenset({"authorization", "x-api-key", "cookie", "idempotency-key", "accept-encoding"})
ENCODINGS = frozenset({"gzip", "deflate", "identity"})  # what the meter can read
COUNT_TOKENS_FIELDS = ("model", "messages", "system", "tools", "tool_choice", "thinking", "mcp_servers")
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)

_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = weakref.WeakKeyDictionary()


def _new_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=httpx.Timeout(
            connect=settings.GATEWAY_CONNECT_TIMEOUT,
            read=settings.GATEWAY_READ_TIMEOUT,
            write=settings.GATEWAY_WRITE_TIMEOUT,
            pool=settings.GATEWAY_POOL_TIMEOUT,
        ),
        limits=httpx.Limits(
            max_connections=settings.GATEWAY_MAX_CONNECTIONS,
            # As many kept alive as it may open: httpcore 1.0.9 closes an idle connection whenever
            # the pool holds more than it keeps alive, even one just handed to a waiting call,
            # which then fails or hangs until its read timeout (encode/httpcore#1110).
            max_keepalive_connections=settings.GATEWAY_MAX_CONNECTIONS,
            keepalive_expiry=settings.GATEWAY_KEEPALIVE_EXPIRY,
        ),
        trust_env=False,  # the operator's settings say where Anthropic is, not a proxy variable
    )


@asynccontextmanager
async def client(*, pooled: bool) -> AsyncIterator[httpx.AsyncClient]:
    """Yield the loop's pooled client (``pooled``), or a client for this request alone."""
    if not pooled:
        async with _new_client() as transient:
            yield transient
        return
    loop = asyncio.get_running_loop()
    shared = _clients.get(loop)
    if shared is None or shared.is_closed:
        shared = _clients[loop] = _new_client()
    yield shared


def url(base_url: str, path: str, query: str) -> str:
    return base_url.rstrip("/") + path + (f"?{query}" if query else "")


def request_headers(headers: Mapping[str, str], upstream_key: str) -> dict[str, str]:
    """Return the caller's headers as Anthropic gets them: ours and its credentials replaced."""
    out = {
        name: value for name, value in headers.items()
        if (low := name.lower()) not in HOP_BY_HOP and low not in PRIVATE_REQUEST
        and not low.startswith("x-comptroller-")
    }
    out["x-api-key"] = upstream_key
    accepted = [e.strip().split(";")[0].lower() for e in headers.get("accept-encoding", "").split(",")]
    out["accept-encoding"] = ", ".join(e for e in accepted if e in ENCODINGS) or "identity"
    if not any(name.lower() == "anthropic-version" for name in out):
        out["anthropic-version"] = "2023-06-01"
    return out


def response_headers(headers: httpx.Headers) -> list[tuple[str, str]]:
    return [(name, value) for name, value in headers.multi_items() if name.lower() not in HOP_BY_HOP]


def count_body(body: Mapping[str, Any]) -> bytes:
    return json.dumps({k: body[k] for k in COUNT_TOKENS_FIELDS if k in body}).encode()


async def count_tokens(
    http: httpx.AsyncClient, *, base_url: str, headers: dict[str, str], body: Mapping[str, Any]
) -> int | None:
    """Return Anthropic's count of the request's input tokens, or None (the caller holds a ceiling)."""
    try:
        response = await http.post(url(base_url, "/v1/messages/count_tokens", ""), headers=headers,
                                   content=count_body(body))
        if response.status_code == 200:
            return int(response.json()["input_tokens"])
        logger.warning("count_tokens answered %s; holding at the input ceiling", response.status_code)
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        logger.warning("count_tokens failed; holding at the input ceiling", exc_info=True)
    return None
