"""What a block of code asks of PostgreSQL, counted on the wire (libpq's trace of the connection).

Django's ``CaptureQueriesContext`` sees only statements run through Django's cursors; the
hot paths run theirs on a psycopg cursor of their own (``budgets.reserve.hot_cursor``), and
a transaction's BEGIN and COMMIT are no statements to it. The wire sees all of them: every
request the server answers ends with one ReadyForQuery, whoever sent it.
"""

from __future__ import annotations

import re
import tempfile
from typing import IO, Any

from psycopg import pq

_READY = re.compile(r"B\t\d+\tReadyForQuery\b")
# What the client sends that names its statement: a simple query's text, a prepared one's name
# and text when it is prepared, or the name it is run by.
_SENT = re.compile(r'F\t\d+\t(Query|Parse|Bind)\t (.*)')


class RoundTrips:
    """Count the round trips to PostgreSQL made on a psycopg connection inside the block.

    ``count`` is the number of requests the server answered; ``sent`` what the client sent
    that names a statement, for a failing assertion to show.
    """

    def __init__(self, pgconn: Any) -> None:
        self.pgconn = pgconn
        self.count = 0
        self.sent: list[str] = []
        self._file: IO[str] | None = None

    def __enter__(self) -> RoundTrips:
        self._file = tempfile.TemporaryFile("w+")  # libpq writes to it until __exit__
        self.pgconn.trace(self._file.fileno())
        self.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._file is not None
        self.pgconn.untrace()
        self._file.seek(0)
        for line in self._file:
            if _READY.match(line):
                self.count += 1
            elif found := _SENT.match(line):
                self.sent.append(f"{found.group(1)} {found.group(2)[:200]}")
        self._file.close()


def round_trips() -> RoundTrips:
    """Return a RoundTrips of this thread's Django connection (opened if it was not)."""
    from django.db import connection

    connection.ensure_connection()
    return RoundTrips(connection.connection.pgconn)
