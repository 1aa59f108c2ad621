"""Comptroller's requests over the standard library's ``http.client``: an httpx transport for one origin.

The allowance is on every governed call's path, and httpx's default
transport (httpcore and h11) costs about three times the CPU of
``http.client`` for the same small request. ``StdlibTransport`` is an
``httpx.BaseTransport``, so the client sends the same ``httpx.Request`` to
it as to a transport a caller injects (``transport=``, tests, proxies), and
reads the same ``httpx.Response`` back.

Connections are kept for reuse, a few per client: against a server that
keeps them alive a request costs no connect; one that answers
``Connection: close`` (gunicorn's sync workers) has ``http.client`` close
it, and the next request connects anew on the same object. A kept
connection that the server has closed meanwhile is found before it is used
(it reads as ready), and a reused connection that fails before any answer
arrived is tried once more on a new one: every request the client sends is
idempotent on the server.

Errors are httpx's: ``ConnectError``/``ConnectTimeout`` when nothing was
sent, ``ReadTimeout``/``WriteTimeout``, ``ReadError``/``WriteError`` and
``RemoteProtocolError`` after, so the client's retry and breaker rules see
what they would from httpx.
"""

from __future__ import annotations

import http.client
import os
import select
import socket
import ssl
import threading
import weakref
from urllib.parse import urlsplit

import httpx

MAX_IDLE = 4  # connections kept per client: the sender and a few calling threads

_transports: weakref.WeakSet[StdlibTransport] = weakref.WeakSet()


def _forget_connections() -> None:
    # A forked child (a pre-forking server) must not talk on its parent's kept connections.
    for transport in list(_transports):
        transport._idle = []
        transport._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_connections)


# What a kept connection that the server closed raises when it is used.
_CLOSED = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class StdlibTransport(httpx.BaseTransport):
    """HTTP/1.1 to the origin of ``base_url`` over ``http.client`` (``https`` with httpx's TLS defaults)."""

    def __init__(self, base_url: str) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._https = url.scheme == "https"
        self._host = url.hostname
        self._port = url.port or (443 if self._https else 80)
        self._context: ssl.SSLContext | None = httpx.create_ssl_context() if self._https else None
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        _transports.add(self)

    def _connection(self, timeout: float | None) -> tuple[http.client.HTTPConnection, bool]:
        """Return a connection and whether it was kept from an earlier request."""
        with self._lock:
            while self._idle:
                connection = self._idle.pop()
                sock = connection.sock
                if sock is None:  # closed after a `Connection: close` answer: it connects on use
                    connection.timeout = timeout
                    return connection, False
                # An idle connection has nothing to read: readable means closed (or broken) by the server.
                if select.select([sock], [], [], 0)[0]:
                    connection.close()
                    continue
                sock.settimeout(timeout)
                return connection, True
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=timeout, context=self._context), False
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout), False

    def _keep(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < MAX_IDLE:
                self._idle.append(connection)
                return
        connection.close()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout") or {}
        body = request.read() or None
        target = request.url.raw_path.decode("ascii")
        for attempt in (0, 1):
            connection, reused = self._connection(timeouts.get("connect"))
            phase = "connect"
            try:
                if connection.sock is None:
                    connection.connect()
                sock: socket.socket = connection.sock
                phase = "write"
                sock.settimeout(timeouts.get("write"))
                connection.putrequest(request.method, target, skip_host=True, skip_accept_encoding=True)
                for name, value in request.headers.raw:
                    connection.putheader(name, value)
                connection.endheaders(body)
                phase = "read"
                sock.settimeout(timeouts.get("read"))
                answer = connection.getresponse()
                phase = "body"
                content = answer.read()
            except BaseException as exc:
                connection.close()
                if reused and not attempt and phase in ("write", "read") and isinstance(exc, _CLOSED):
                    continue  # the server closed the kept connection as it was used: nothing was processed
                raise _as_httpx(exc, phase, request) from exc
            self._keep(connection)
            return httpx.Response(answer.status, headers=answer.getheaders(), content=content)
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


def _as_httpx(exc: BaseException, phase: str, request: httpx.Request) -> BaseException:
    """Return the httpx exception for what the socket or ``http.client`` raised in ``phase``."""
    if isinstance(exc, (socket.timeout, TimeoutError)):
        timeout = {"connect": httpx.ConnectTimeout, "write": httpx.WriteTimeout}.get(phase, httpx.ReadTimeout)
        return timeout(_describe(exc), request=request)
    if isinstance(exc, http.client.HTTPException):
        return httpx.RemoteProtocolError(_describe(exc), request=request)
    if isinstance(exc, OSError):
        error = {"connect": httpx.ConnectError, "write": httpx.WriteError}.get(phase, httpx.ReadError)
        return error(_describe(exc), request=request)
    return exc


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
