"""Fault injection for tests and benchmarks: a loopback TCP proxy that can cut or stall a real server."""

from __future__ import annotations

import contextlib
import select
import socket
import threading


class TcpProxy:
    """Forward a loopback port to ``target``; ``cut()`` refuses and drops, ``stall()`` goes silent.

    ``stall()`` keeps accepting and keeps every connection open but forwards nothing either
    way, as a hung server or a black-holed network looks from the client; ``restore()`` goes
    back to forwarding (stalled connections resume, cut ones are gone).
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._forwarding = threading.Event()
        self._forwarding.set()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._closed = False
        self._listen()

    # -- faults ---------------------------------------------------------------------------

    def cut(self) -> None:
        """Refuse new connections and drop the open ones, as a stopped server would."""
        self._close_listener()
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            _close(sock)
        self._forwarding.set()

    def stall(self) -> None:
        """Accept connections but answer nothing, on new and open connections alike."""
        if self._listener is None:
            self._listen()
        self._forwarding.clear()

    def restore(self) -> None:
        if self._listener is None:
            self._listen()
        self._forwarding.set()

    def close(self) -> None:
        self._closed = True
        self.cut()

    # -- plumbing -------------------------------------------------------------------------

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            _close(listener)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed
            self._forwarding.wait()
            if self._listener is not listener:
                _close(client)
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _close(client)
                continue
            with self._lock:
                self._sockets |= {client, upstream}
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while True:
                self._forwarding.wait()
                readable, _, _ = select.select(list(peers), [], [], 0.2)
                if not self._forwarding.is_set():
                    continue  # stalled: leave what arrived unread
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            for sock in (a, b):
                _close(sock)
            with self._lock:
                self._sockets -= {a, b}


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


def refused_port() -> int:
    """Return a loopback port nothing listens on (connections to it are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
