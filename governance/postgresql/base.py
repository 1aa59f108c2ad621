"""Django's PostgreSQL backend, with a deadline on every wait for the server's answer.

``statement_timeout`` (DB_STATEMENT_TIMEOUT) makes a working server give up on a slow
statement, and ``connect_timeout`` bounds a new connection; neither helps once a connection
is open and the server, or the network in between, stops answering: psycopg would wait
forever, and so would the request. Here every wait on an open connection ends
``DEADLINE_GRACE_SECONDS`` after the statement timeout with an OperationalError (the API
answers 503 with Retry-After) and the connection closed, so the next request opens a fresh
one, bounded by ``connect_timeout``.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
from django.conf import settings
from django.db.backends.postgresql import base
from psycopg import waiting

# Past the statement timeout, the server would have answered with an error by now.
DEADLINE_GRACE_SECONDS = 2.0
_TICK_SECONDS = 0.1  # psycopg's own interval; each tick checks the deadline


class DeadlineConnection(psycopg.Connection):
    """A psycopg connection whose waits for the server end at a deadline."""

    deadline_seconds: float | None = None

    def wait(self, gen, interval: float | None = _TICK_SECONDS):
        if not self.deadline_seconds:
            return super().wait(gen, interval)
        # psycopg's C wait function keeps its idle ticks to itself; its Python poll() one hands
        # each tick to the generator, where the deadline is checked. (Unlike the default wait,
        # this one does not cancel the query on Ctrl-C: a web process has no terminal.)
        return waiting.wait_poll(self._until_deadline(gen), self.pgconn.socket, interval=interval or _TICK_SECONDS)

    def _until_deadline(self, gen):
        assert self.deadline_seconds
        deadline = time.monotonic() + self.deadline_seconds
        try:
            state = next(gen)
            while True:
                ready = yield state
                if not ready and time.monotonic() > deadline:
                    # Mid-exchange, the protocol cannot be resumed: drop the connection.
                    self.pgconn.finish()
                    raise psycopg.OperationalError(
                        f"no answer from the database server within {self.deadline_seconds:g} s"
                    )
                state = gen.send(ready)
        except StopIteration as stop:
            return stop.value


def _deadline_seconds() -> float | None:
    timeout = float(getattr(settings, "DB_STATEMENT_TIMEOUT", 0) or 0)
    return timeout + DEADLINE_GRACE_SECONDS if timeout > 0 else None


class _Psycopg:
    """The psycopg module as Django's backend uses it, connecting with DeadlineConnection."""

    def __getattr__(self, name: str) -> Any:
        return getattr(psycopg, name)

    @staticmethod
    def connect(*args: Any, **kwargs: Any) -> DeadlineConnection:
        connection = DeadlineConnection.connect(*args, **kwargs)
        connection.deadline_seconds = _deadline_seconds()
        return connection


class DatabaseWrapper(base.DatabaseWrapper):
    Database = _Psycopg()  # type: ignore[assignment]  # a stand-in for the module
