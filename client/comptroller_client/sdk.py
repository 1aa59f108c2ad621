"""``governed(anthropic_client, comptroller, feature=...)``: the same SDK client, governed at its HTTP layer.

The result is a real ``anthropic.Anthropic`` (or ``AsyncAnthropic``) — of a
subclass that only changes which exception an SDK error becomes — whose
httpx client sends through the governing transport
(``comptroller_client.transport``). Every copy of it (``with_options``,
``copy``, even ``copy(http_client=...)``) stays governed.

A refusal reaches the caller as the SDK's own error path, raised at once
(never retried by the SDK): ``BudgetExceeded`` (a 429, also an
``anthropic.RateLimitError``), ``ComptrollerUnavailable`` (a 503, also an
``anthropic.InternalServerError``), or the Comptroller error that refused
the allowance. Each is also an ``anthropic.APIStatusError``.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any, TypeVar

import anthropic

from comptroller_client.client import AsyncComptroller, Comptroller, _Base
from comptroller_client.errors import ComptrollerError
from comptroller_client.transport import (
    ERROR_EXTENSION,
    FEATURE_HEADER,
    METADATA_HEADER,
    RUN_ID_HEADER,
    TTL_HEADER,
    Governor,
    transport_class,
)

ClientT = TypeVar("ClientT", anthropic.Anthropic, anthropic.AsyncAnthropic)

_default: Comptroller | None = None
_default_lock = threading.Lock()


def default_comptroller() -> Comptroller:
    """Return this process's ``Comptroller()``, configured from the environment on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Comptroller()
        return _default


def governed(
    client: ClientT,
    comptroller: Comptroller | AsyncComptroller | None = None,
    *,
    feature: str,
    count_tokens: bool | str = "auto",
    input_ceiling: int | None = None,
    ttl_seconds: int | None = None,
    run_id: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> ClientT:
    """Return a governed copy of an Anthropic client (the original is left as it was).

    ``count_tokens``: ``"auto"`` asks Anthropic's free count_tokens endpoint
    only when the request holds what the local estimate cannot size (a
    document or image by URL or file id, a PDF, ...); ``True`` always;
    ``False`` never (such requests are held at ``input_ceiling``, default
    200,000 tokens). ``ttl_seconds`` fixes the hold's lifetime (default:
    long enough for ``max_tokens`` at 20 tokens/s). ``run_id`` and
    ``metadata`` go with every allowance. A sync client needs a
    ``Comptroller``; an async one takes either (a ``Comptroller``'s
    allowance is asked on a worker thread). Without ``comptroller``, one is
    made from ``COMPTROLLER_URL`` and ``COMPTROLLER_API_KEY``.
    """
    is_async = isinstance(client, anthropic.AsyncAnthropic)
    if not is_async and not isinstance(client, anthropic.Anthropic):
        raise TypeError(f"governed() takes anthropic.Anthropic or AsyncAnthropic, not {type(client).__name__}")
    if comptroller is None:
        comptroller = default_comptroller()
    if not is_async and not isinstance(comptroller, Comptroller):
        raise TypeError("A sync anthropic.Anthropic needs a Comptroller (not an AsyncComptroller).")
    if count_tokens not in (True, False, "auto"):
        raise ValueError("count_tokens must be True, False or 'auto'")
    governor = Governor(comptroller=comptroller, feature=feature, count_tokens=count_tokens,
                        input_ceiling=input_ceiling, ttl_seconds=ttl_seconds, run_id=run_id, metadata=metadata)
    base = type(client)
    while "_comptroller_governor" in base.__dict__:  # governing a governed client anew
        base = base.__mro__[1]
    governed_class = _governed_class(base, governor)
    copy = client.copy(http_client=_governing_http(client._client, governor, is_async))
    copy.__class__ = governed_class
    return copy


def _governing_http(http_client: Any, governor: Governor, is_async: bool) -> Any:
    """Return an httpx client that sends through ``http_client`` (the SDK's own) under ``governor``."""
    existing = getattr(http_client, "_comptroller_governor", None)
    if existing is governor:
        return http_client
    if existing is not None:
        http_client = http_client._comptroller_inner  # re-governed: govern the original, not twice
    module = sys.modules[type(http_client).__module__.split(".")[0]]
    if not hasattr(module, "BaseTransport"):  # an SDK subclass of the client: find httpx(2) by its bases
        root = next(c for c in type(http_client).__mro__ if c.__module__.split(".")[0] in ("httpx", "httpx2"))
        module = sys.modules[root.__module__.split(".")[0]]
    transport = transport_class(module, is_async)(http_client, governor)
    client_class = module.AsyncClient if is_async else module.Client
    outer = client_class(transport=transport, timeout=http_client.timeout, trust_env=False)
    outer._comptroller_governor = governor
    outer._comptroller_inner = http_client
    return outer


def _governed_class(base: type, governor: Governor) -> type:
    """Return a subclass of the SDK client class that turns Comptroller's refusals into exceptions."""

    class Governed(base):
        __slots__ = ()  # the same layout as the SDK class, so governed() can give its copy this class
        _comptroller_governor = governor

        def __init__(self, *args: Any, http_client: Any = None, **kwargs: Any) -> None:
            # copy() and with_options() construct anew: keep (or put back) the governing transport.
            is_async = isinstance(self, anthropic.AsyncAnthropic)
            if http_client is None:
                http_client = anthropic.DefaultAsyncHttpxClient() if is_async else anthropic.DefaultHttpxClient()
            super().__init__(*args, http_client=_governing_http(http_client, governor, is_async), **kwargs)

        @property
        def comptroller(self) -> _Base:
            """The Comptroller this client asks."""
            return governor.comptroller

        @property
        def feature(self) -> str:
            """The feature its calls are charged to (unless a call says otherwise)."""
            return governor.feature

        def _make_status_error(self, err_msg: str, *, body: object, response: Any) -> Any:
            error = response.extensions.get(ERROR_EXTENSION)
            if isinstance(error, ComptrollerError):
                return sdk_error(error, response=response, body=body)
            return super()._make_status_error(err_msg, body=body, response=response)

    Governed.__name__ = Governed.__qualname__ = f"Governed{base.__name__}"
    Governed.__module__ = base.__module__
    return Governed


_error_classes: dict[tuple[type, type], type] = {}


def sdk_error(error: ComptrollerError, *, response: Any, body: object) -> Exception:
    """Return ``error`` as an exception that is also the SDK's ``APIStatusError`` for ``response``."""
    kind = type(error)
    status_class = {429: anthropic.RateLimitError, 503: anthropic.InternalServerError}.get(
        response.status_code, anthropic.APIStatusError
    )
    key = (kind, status_class)
    if key not in _error_classes:
        _error_classes[key] = type(kind.__name__, (kind, status_class), {"__module__": kind.__module__})
    combined: Any = _error_classes[key]
    exc = combined.__new__(combined)
    anthropic.APIStatusError.__init__(exc, str(error), response=response, body=body)
    exc.__dict__.update(error.__dict__)
    Exception.__init__(exc, str(error))
    return exc


def call_headers(
    *,
    feature: str | None = None,
    run_id: str | None = None,
    ttl_seconds: int | None = None,
    metadata: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Return per-call options as headers: ``create(..., extra_headers=call_headers(run_id="r-1"))``.

    The governing transport reads and removes them; Anthropic never sees them.
    """
    headers = {}
    if feature:
        headers[FEATURE_HEADER] = feature
    if run_id:
        headers[RUN_ID_HEADER] = run_id
    if ttl_seconds:
        headers[TTL_HEADER] = str(int(ttl_seconds))
    if metadata:
        headers[METADATA_HEADER] = json.dumps(metadata, separators=(",", ":"))
    return headers
