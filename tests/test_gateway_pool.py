"""The gateway's connection pool to Anthropic."""

from __future__ import annotations

from gateway import upstream
from tests.conftest import run_async


def test_the_upstream_pool_keeps_alive_as_many_connections_as_it_opens(settings):
    """httpcore 1.0.9 closes an idle connection whenever its pool holds more than it keeps
    alive, even one just handed to a waiting call, which then fails or hangs until its read
    timeout (encode/httpcore#1110)."""
    settings.GATEWAY_MAX_CONNECTIONS = 120
    client = upstream._new_client()
    try:
        pool = client._transport._pool
        assert pool._max_connections == 120
        assert pool._max_keepalive_connections == 120
    finally:
        run_async(client.aclose)
