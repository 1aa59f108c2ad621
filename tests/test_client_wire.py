"""How the client's requests travel: kept connections, `Connection: close`, stale connections, proxies, transports."""

from __future__ import annotations

import gzip
import json
import os
import socket
import threading
from dataclasses import dataclass, field

import httpx
import pytest
from comptroller_client import ApiError, Comptroller, ComptrollerUnavailable
from pytest_httpserver import HTTPServer

from tests.client_stubs import FakeComptroller

GRANT = {"id": "hold_1", "granted": True, "decision": "granted", "reason": None, "model": "claude-sonnet-4-5",
         "max_tokens": 256, "clamped": False, "reserved_usd": "0.004000", "reserved_tokens": 356,
         "expires_at": "2026-12-02T12:10:00Z", "budgets": []}
POLICY = {"key": "support-bot", "name": "Support", "fail_mode": "closed", "max_tokens_cap": None}


@dataclass
class WireServer:
    """Comptroller's allowance on a bare socket, to control each connection.

    ``keep_alive``: answer HTTP/1.1 keep-alive, else ``Connection: close`` (gunicorn's sync workers).
    ``drop_second``: on each connection, close without answering when the second request arrives
    (as a server that timed the idle connection out just as it was used).
    """

    keep_alive: bool = True
    drop_second: bool = False
    connections: int = 0
    requests: list[tuple[str, str, dict]] = field(default_factory=list)
    _sockets: list[socket.socket] = field(default_factory=list)

    def start(self) -> WireServer:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        self.listener.close()
        for sock in self._sockets:
            sock.close()

    def close_idle(self) -> None:
        """Close every connection from this side, as a server does when its keep-alive timeout passes."""
        for sock in self._sockets:
            sock.shutdown(socket.SHUT_RDWR)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            self._sockets.append(sock)
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        reader = sock.makefile("rb")
        served = 0
        try:
            while True:
                request_line = reader.readline()
                if not request_line:
                    return
                headers = {}
                while (line := reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode().partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = reader.read(int(headers.get("content-length") or 0))
                method, path, _ = request_line.decode().split(" ", 2)
                self.requests.append((method, path, json.loads(body) if body else {}))
                served += 1
                if self.drop_second and served == 2:
                    return
                answer = json.dumps(POLICY if method == "GET" else GRANT).encode()
                status = "200 OK" if method == "GET" else "201 Created"
                connection = "keep-alive" if self.keep_alive else "close"
                sock.sendall(f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nConnection: {connection}\r\n"
                             f"Content-Length: {len(answer)}\r\n\r\n".encode() + answer)
                if not self.keep_alive:
                    return
        except OSError:
            return
        finally:
            reader.close()
            sock.close()


@pytest.fixture
def wire():
    servers: list[WireServer] = []

    def start(**options) -> WireServer:
        servers.append(WireServer(**options).start())
        return servers[-1]

    yield start
    for server in servers:
        server.stop()



def reserve(client: Comptroller):
    return client.reserve("support-bot", "claude-sonnet-4-5", 100, 256, idempotency_key="wire-test")


def test_a_server_that_keeps_connections_alive_is_asked_on_one_connection(wire, make):
    server = wire(keep_alive=True)
    client = make(server.url)

    allowances = [reserve(client) for _ in range(3)]

    assert all(a.granted for a in allowances)
    assert [(m, p) for m, p, _ in server.requests] == [("GET", "/api/v1/features/support-bot")] + [
        ("POST", "/api/v1/allowances")] * 3
    assert server.connections == 1


def test_a_server_that_closes_each_connection_is_asked_on_a_new_one_each_time(wire, make):
    server = wire(keep_alive=False)
    client = make(server.url)

    allowances = [reserve(client) for _ in range(3)]

    assert all(a.granted for a in allowances)
    assert server.connections == 4  # the policy and three allowances


def test_a_kept_connection_the_server_closed_is_not_used(wire, make):
    server = wire(keep_alive=True)
    client = make(server.url)
    reserve(client)

    server.close_idle()
    allowance = reserve(client)

    assert allowance.granted
    assert server.connections == 2
    assert len([r for r in server.requests if r[0] == "POST"]) == 2


def test_a_kept_connection_closed_as_it_is_used_is_tried_once_more_on_a_new_one(wire, make):
    server = wire(keep_alive=True, drop_second=True)
    client = make(server.url, max_retries=0)  # the resend is the connection's, not a retry of the client's
    client.feature_policy("support-bot")

    allowance = reserve(client)

    assert allowance.granted
    assert server.connections == 2
    sent = [body for method, _, body in server.requests if method == "POST"]
    assert len(sent) == 2 and sent[0] == sent[1]  # the same idempotency key: held once on the server


def test_a_forked_child_asks_on_a_connection_of_its_own(wire, make):
    server = wire(keep_alive=True)
    client = make(server.url)
    reserve(client)

    pid = os.fork()
    if pid == 0:  # the child: a pre-forking server's worker
        code = 1
        try:
            code = 0 if reserve(client).granted else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    allowance = reserve(client)

    assert os.waitstatus_to_exitcode(status) == 0 and allowance.granted
    assert server.connections == 2  # the parent kept its own; the child did not write on it


def test_a_server_that_is_not_there_is_unavailable(make):
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        url = f"http://127.0.0.1:{placeholder.getsockname()[1]}"
    client = make(url, max_retries=1)

    with pytest.raises(ComptrollerUnavailable, match="ConnectError"):
        reserve(client)


def test_a_server_that_does_not_answer_in_time_is_a_timeout_and_not_retried(make):
    with socket.create_server(("127.0.0.1", 0)) as silent:
        client = make(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.2, fail_mode="closed")

        with pytest.raises(ComptrollerUnavailable, match="ReadTimeout"):
            reserve(client)


def test_an_injected_transport_carries_every_request(make):
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json=GRANT)

    client = make("https://comptroller.example", transport=httpx.MockTransport(answer), fail_mode="closed")

    allowance = reserve(client)

    assert allowance.granted and allowance.id == "hold_1"
    (request,) = seen
    assert str(request.url) == "https://comptroller.example/api/v1/allowances"
    assert request.headers["authorization"] == "Bearer cpt_test_secret"
    assert json.loads(request.content)["idempotency_key"] == "wire-test"


def test_a_proxy_named_in_the_environment_is_used(httpserver: HTTPServer, make, monkeypatch):
    # The fake answers as the proxy would, after forwarding to a host this machine cannot resolve.
    fake = FakeComptroller(httpserver, policies={"support-bot": POLICY}).install()
    monkeypatch.setenv("HTTP_PROXY", fake.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    client = make("http://comptroller.invalid")

    allowance = reserve(client)

    assert allowance.granted
    assert fake.count("POST", "/api/v1/allowances") == 1


def scripted(answer: bytes):
    """Return a server's URL that answers every request with ``answer``, then closes the connection."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            with sock:
                received = b""
                while b"\r\n\r\n" not in received:
                    received += sock.recv(65536)
                head, _, body = received.partition(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")) or 0)
                while len(body) < length:
                    body += sock.recv(65536)
                sock.sendall(answer)

    threading.Thread(target=serve, daemon=True).start()
    return listener, f"http://127.0.0.1:{listener.getsockname()[1]}"


GRANT_BYTES = json.dumps(GRANT).encode()
CHUNKED = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(part), part) for part in (GRANT_BYTES[:7], GRANT_BYTES[7:]))


@pytest.mark.parametrize("answer", [
    pytest.param(b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                 + CHUNKED + b"0\r\nX-Trailer: 1\r\n\r\n", id="chunked, with a trailer"),
    pytest.param(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: %d\r\n"
                 b"Connection: close\r\n\r\n%s" % (len(GRANT_BYTES), GRANT_BYTES), id="after 100 Continue"),
    pytest.param(b"HTTP/1.0 201 Created\r\nContent-Type: application/json\r\n\r\n" + GRANT_BYTES,
                 id="no length: to the close"),
    pytest.param(b"HTTP/1.1 201 Created\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\nConnection: close"
                 b"\r\n\r\n%s" % (len(gzip.compress(GRANT_BYTES)), gzip.compress(GRANT_BYTES)), id="gzip"),
])
def test_an_answer_in_any_framing_http_allows_is_read(answer, make):
    listener, url = scripted(answer)
    with listener:
        client = make(url, fail_mode="closed")

        allowance = reserve(client)

    assert allowance.granted and allowance.id == "hold_1"


@pytest.mark.parametrize("answer", [
    pytest.param(b"SSH-2.0-OpenSSH_9.6\r\n\r\n", id="not HTTP"),
    pytest.param(b"HTTP/1.1 201 Created\r\nContent-Length: 500\r\n\r\n{}", id="a body cut short"),
])
def test_an_answer_that_is_not_http_is_a_protocol_error(answer, make):
    listener, url = scripted(answer)
    with listener:
        client = make(url, fail_mode="closed", max_retries=0)

        with pytest.raises(ComptrollerUnavailable, match="RemoteProtocolError"):
            reserve(client)


def test_an_error_answer_keeps_its_status_code_and_message(make):
    body = json.dumps({"error": {"code": "invalid_request", "message": "max_tokens: too big"}}).encode()
    listener, url = scripted(b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
    with listener:
        client = make(url, fail_mode="closed")

        with pytest.raises(ApiError) as raised:
            reserve(client)

    assert (raised.value.status, raised.value.code, raised.value.message) == (400, "invalid_request",
                                                                               "max_tokens: too big")


def test_a_connection_opened_ahead_carries_the_next_allowance(wire, make):
    server = wire(keep_alive=False)
    client = make(server.url, fail_mode="closed")

    ahead = client._open_ahead()
    allowance = reserve(client)
    client._close_ahead(ahead)

    assert ahead is not None and allowance.granted
    assert server.connections == 1 and len(server.requests) == 1


def test_a_connection_opened_ahead_and_not_used_is_closed(wire, make):
    server = wire(keep_alive=False)
    client = make(server.url, fail_mode="closed")

    client._close_ahead(client._open_ahead())
    allowance = reserve(client)

    assert allowance.granted
    assert server.connections == 2 and len(server.requests) == 1  # the first closed without a request


def test_a_connection_opened_ahead_to_a_server_that_is_not_there_is_a_connect_error(make):
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        url = f"http://127.0.0.1:{placeholder.getsockname()[1]}"
    client = make(url, fail_mode="closed", max_retries=0)

    client._open_ahead()
    with pytest.raises(ComptrollerUnavailable, match="ConnectError"):
        reserve(client)
