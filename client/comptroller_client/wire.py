"""Comptroller's requests over a plain socket: HTTP/1.1 to one origin, with an httpx transport's face.

The allowance is on every governed call's path. httpx's default transport
(httpcore and h11) costs about three times the CPU of ``http.client`` for
the same small request, and ``http.client`` itself spends most of its own
time parsing the answer's headers with the ``email`` package and on the
objects around the exchange. ``StdlibTransport.exchange`` writes the
request in one ``sendall`` and reads the answer in as few ``recv`` calls as
it arrives in (one, for an allowance): it returns the status, the headers
and the body, and the client builds httpx objects only for an answer that
is not a success. ``StdlibTransport`` is also an ``httpx.BaseTransport``
(``handle_request``) for anything that sends an ``httpx.Request``.

What it speaks is what Comptroller (or a proxy in front of it) answers:
``Content-Length``, ``Transfer-Encoding: chunked`` or a body to the close;
interim 1xx answers are skipped. Connections are kept for reuse, a few per
client: against a server that keeps them alive a request costs no
connect; one that answers ``Connection: close`` (gunicorn's sync workers)
is closed and the next request connects anew. A kept connection that the
server has closed meanwhile is found before it is used (it reads as
ready), and a reused connection that fails before any answer arrived is
tried once more on a new one: every request the client sends is
idempotent on the server.

Errors are httpx's: ``ConnectError``/``ConnectTimeout`` when nothing was
sent, ``ReadTimeout``/``WriteTimeout``, ``ReadError``/``WriteError`` and
``RemoteProtocolError`` after, so the client's retry and breaker rules see
what they would from httpx.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import ssl
import threading
import weakref
from collections.abc import Mapping
from typing import NamedTuple
from urllib.parse import urlsplit

import httpx

MAX_IDLE = 4  # connections kept per client: the sender and a few calling threads
MAX_HEAD = 64 * 1024  # an answer's status line and headers, at most
RECV = 64 * 1024

_transports: weakref.WeakSet[StdlibTransport] = weakref.WeakSet()


def _forget_connections() -> None:
    # A forked child (a pre-forking server) must not talk on its parent's kept connections.
    for transport in list(_transports):
        transport._idle = []
        transport._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_connections)


class ProtocolError(Exception):
    """The answer is not HTTP/1.1 as this module reads it."""


class Disconnected(ConnectionResetError):
    """The server closed the connection before any byte of an answer."""


# What a kept connection that the server closed raises when it is used.
_CLOSED = (Disconnected, ConnectionResetError, BrokenPipeError)


class Answer(NamedTuple):
    """One answer, read whole: the status, its reason phrase, the raw headers and the decoded body."""

    status: int
    reason: str
    headers: list[tuple[bytes, bytes]]
    content: bytes


class _Connection:
    __slots__ = ("pending", "sock", "timeout")

    def __init__(self, sock: socket.socket, timeout: float | None, *, pending: bool = False) -> None:
        self.sock = sock
        self.timeout = timeout
        self.pending = pending  # opened ahead (non-blocking): the connect may still be under way

    def settimeout(self, timeout: float | None) -> None:
        if timeout != self.timeout:  # each change is a system call
            self.sock.settimeout(timeout)
            self.timeout = timeout

    def close(self) -> None:
        self.sock.close()


class StdlibTransport(httpx.BaseTransport):
    """HTTP/1.1 to the origin of ``base_url`` over a socket (``https`` with httpx's TLS defaults)."""

    def __init__(self, base_url: str) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._https = url.scheme == "https"
        self._host = url.hostname
        self._port = url.port or (443 if self._https else 80)
        # The Host header httpx would send for this origin (no default port, IPv6 in brackets).
        self.host_header = httpx.URL(base_url).netloc.decode("ascii")
        self._context: ssl.SSLContext | None = httpx.create_ssl_context() if self._https else None
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()
        _transports.add(self)

    # -- connections ------------------------------------------------------------------------------

    def _kept(self) -> _Connection | None:
        """Return a kept connection that is still open, or None."""
        with self._lock:
            while self._idle:
                connection = self._idle.pop()
                # An idle connection has nothing to read: readable means closed (or broken) by the server.
                if select.select([connection.sock], [], [], 0)[0]:
                    connection.close()
                    continue
                return connection
        return None

    def _connect(self, timeout: float | None) -> _Connection:
        sock = socket.create_connection((self._host, self._port), timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._context is not None:
                sock = self._context.wrap_socket(sock, server_hostname=self._host)
        except BaseException:
            sock.close()
            raise
        return _Connection(sock, timeout)

    def open_ahead(self) -> _Connection | None:
        """Start a connection for the next request, without waiting for it; return it, or None.

        The server accepts it while the caller still builds its request (against
        gunicorn's sync workers, which connect anew for each request, that is
        about a third of a millisecond of the round trip). Nothing is opened when
        a kept connection waits already. ``close_ahead`` closes it if no request
        took it: a sync worker that accepted it waits on it.
        """
        if self._idle or self._https:
            return None
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                self._host, self._port, type=socket.SOCK_STREAM)[0]
            sock = socket.socket(family, kind, proto)
        except OSError:
            return None  # the request itself will say what is wrong
        sock.setblocking(False)
        if sock.connect_ex(address) not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            sock.close()
            return None
        connection = _Connection(sock, 0.0, pending=True)
        self._keep(connection)
        return connection

    def close_ahead(self, connection: _Connection | None) -> None:
        """Close a connection ``open_ahead`` opened, unless a request has taken it."""
        if connection is None:
            return
        with self._lock:
            if connection not in self._idle:
                return
            self._idle.remove(connection)
        connection.close()

    @staticmethod
    def _finish(connection: _Connection, timeout: float | None) -> None:
        """Wait for a connection opened ahead to be established (or raise as a connect would)."""
        if not select.select([], [connection.sock], [], timeout)[1]:
            raise socket.timeout("timed out")
        error = connection.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            raise OSError(error, os.strerror(error))
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection.pending = False

    def _keep(self, connection: _Connection) -> None:
        with self._lock:
            if len(self._idle) < MAX_IDLE:
                self._idle.append(connection)
                return
        connection.close()

    # -- one exchange -----------------------------------------------------------------------------

    def exchange(
        self,
        method: str,
        target: str,
        headers: bytes,
        body: bytes | None,
        timeouts: Mapping[str, float | None],
        request: httpx.Request | None = None,
    ) -> Answer:
        """Send one request and return its answer, read whole.

        ``headers`` are the request's header lines (``Name: value\\r\\n`` each,
        ``Host`` among them); ``Content-Length`` is added for a body.
        ``request`` is only what an httpx exception carries.
        """
        head = f"{method} {target} HTTP/1.1\r\n".encode("ascii") + headers
        if body is not None:
            head += b"Content-Length: %d\r\n" % len(body)
        message = head + b"\r\n" + body if body else head + b"\r\n"
        for attempt in (0, 1):
            connection = self._kept()
            reused = connection is not None
            phase = "connect"
            try:
                if connection is None:
                    connection = self._connect(timeouts.get("connect"))
                elif connection.pending:
                    reused = False  # opened ahead, never used: a failure is the connect's
                    self._finish(connection, timeouts.get("connect"))
                phase = "write"
                connection.settimeout(timeouts.get("write"))
                connection.sock.sendall(message)
                phase = "read"
                connection.settimeout(timeouts.get("read"))
                answer, keep = _read_answer(connection.sock, method)
            except BaseException as exc:
                if connection is not None:
                    connection.close()
                if reused and not attempt and phase in ("write", "read") and isinstance(exc, _CLOSED):
                    continue  # the server closed the kept connection as it was used: nothing was processed
                raise _as_httpx(exc, phase, request) from exc
            if keep:
                self._keep(connection)
            else:
                connection.close()
            return answer
        raise AssertionError("unreachable")  # pragma: no cover

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read() or None
        headers = b"".join(
            b"%s: %s\r\n" % (name, value) for name, value in request.headers.raw if name.lower() != b"content-length"
        )
        answer = self.exchange(request.method, request.url.raw_path.decode("ascii"), headers, body,
                               request.extensions.get("timeout") or {}, request)
        return answer_response(answer, request)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


def answer_response(answer: Answer, request: httpx.Request) -> httpx.Response:
    """Return ``answer`` as the httpx response to ``request``."""
    # The body is decoded already: its Content-Length and Transfer-Encoding no longer describe it.
    headers = [(k, v) for k, v in answer.headers if k.lower() not in (b"transfer-encoding", b"content-length")]
    headers.append((b"Content-Length", b"%d" % len(answer.content)))
    response = httpx.Response(answer.status, headers=headers, content=answer.content, request=request,
                              extensions={"reason_phrase": answer.reason.encode("latin-1")})
    response.read()  # decoded as its Content-Encoding says
    return response


def _read_answer(sock: socket.socket, method: str) -> tuple[Answer, bool]:
    """Read one answer off ``sock``; return it and whether the connection may carry another."""
    buffer = b""
    while True:
        end = buffer.find(b"\r\n\r\n")
        while end < 0:
            if len(buffer) > MAX_HEAD:
                raise ProtocolError("the answer's headers are too long")
            chunk = sock.recv(RECV)
            if not chunk:
                if buffer:
                    raise ProtocolError("the server closed the connection in the answer's headers")
                raise Disconnected("the server closed the connection without an answer")
            buffer += chunk
            end = buffer.find(b"\r\n\r\n", max(0, len(buffer) - len(chunk) - 3))
        lines = buffer[:end].split(b"\r\n")
        buffer = buffer[end + 4:]
        version, status, reason = _status_line(lines[0])
        if 100 <= status < 200 and status != 101:
            continue  # an interim answer (100 Continue, 103 Early Hints): the final one follows
        break
    headers: list[tuple[bytes, bytes]] = []
    length: int | None = None
    chunked = False
    connection = b""
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name[-1:] in (b" ", b"\t"):
            raise ProtocolError(f"malformed header line {line[:80]!r}")
        value = value.strip(b" \t")
        headers.append((name, value))
        lowered = name.lower()
        if lowered == b"content-length":
            try:
                value_length = int(value)
            except ValueError:
                raise ProtocolError(f"bad Content-Length {value[:40]!r}") from None
            if value_length < 0 or (length is not None and value_length != length):
                raise ProtocolError(f"bad Content-Length {value[:40]!r}")
            length = value_length
        elif lowered == b"transfer-encoding":
            chunked = value.lower().rsplit(b",", 1)[-1].strip() == b"chunked"
        elif lowered == b"connection":
            connection += b"," + value.lower()
    tokens = {token.strip() for token in connection.split(b",")}
    keep = b"close" not in tokens and (version == b"HTTP/1.1" or b"keep-alive" in tokens)
    if method == "HEAD" or status in (204, 304):
        content = b""
    elif chunked:
        content, buffer = _read_chunked(sock, buffer)
    elif length is not None:
        while len(buffer) < length:
            chunk = sock.recv(max(RECV, length - len(buffer)))
            if not chunk:
                raise ProtocolError(f"the server closed the connection {len(buffer)} bytes into a {length}-byte body")
            buffer += chunk
        content, buffer = buffer[:length], buffer[length:]
    else:  # no length: the body runs to the close
        parts = [buffer]
        while chunk := sock.recv(RECV):
            parts.append(chunk)
        content, buffer, keep = b"".join(parts), b"", False
    if buffer:
        keep = False  # bytes past the answer: the connection is not in a state to reuse
    return Answer(status, reason, headers, content), keep


def _status_line(line: bytes) -> tuple[bytes, int, str]:
    version, _, rest = line.partition(b" ")
    code, _, reason = rest.partition(b" ")
    if not version.startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise ProtocolError(f"not an HTTP/1.x status line: {line[:80]!r}")
    return version, int(code), reason.decode("latin-1").strip()


def _read_chunked(sock: socket.socket, buffer: bytes) -> tuple[bytes, bytes]:
    """Read a chunked body that starts in ``buffer``; return it and what follows it."""
    parts: list[bytes] = []

    def fill(needed: int) -> None:
        nonlocal buffer
        while len(buffer) < needed:
            chunk = sock.recv(RECV)
            if not chunk:
                raise ProtocolError("the server closed the connection in a chunked body")
            buffer += chunk

    def line() -> bytes:
        nonlocal buffer
        end = buffer.find(b"\r\n")
        while end < 0:
            if len(buffer) > MAX_HEAD:
                raise ProtocolError("a chunk's size line is too long")
            fill(len(buffer) + 1)
            end = buffer.find(b"\r\n")
        text, buffer = buffer[:end], buffer[end + 2:]
        return text

    while True:
        size_line = line().split(b";", 1)[0].strip()
        try:
            size = int(size_line, 16)
        except ValueError:
            raise ProtocolError(f"bad chunk size {size_line[:40]!r}") from None
        if size == 0:
            while line():  # trailers, up to the blank line
                pass
            return b"".join(parts), buffer
        fill(size + 2)
        if buffer[size:size + 2] != b"\r\n":
            raise ProtocolError("a chunk does not end where its size says")
        parts.append(buffer[:size])
        buffer = buffer[size + 2:]


def _as_httpx(exc: BaseException, phase: str, request: httpx.Request | None) -> BaseException:
    """Return the httpx exception for what the socket raised in ``phase`` (or ``exc`` itself)."""
    if isinstance(exc, (socket.timeout, TimeoutError)):
        timeout = {"connect": httpx.ConnectTimeout, "write": httpx.WriteTimeout}.get(phase, httpx.ReadTimeout)
        return timeout(_describe(exc), request=request)
    if isinstance(exc, (ProtocolError, Disconnected)):
        return httpx.RemoteProtocolError(_describe(exc), request=request)
    if isinstance(exc, OSError):
        error = {"connect": httpx.ConnectError, "write": httpx.WriteError}.get(phase, httpx.ReadError)
        return error(_describe(exc), request=request)
    return exc


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
