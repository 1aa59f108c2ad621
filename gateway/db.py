"""Run the gateway's synchronous steps (the ORM, the budget services) off the event loop.

A pool of ``GATEWAY_DB_THREADS`` threads, each keeping its own database connection
between requests (``CONN_MAX_AGE``, checked before each step as Django does before each
request). A request waits for a thread only while it touches the database, never while
it waits on Anthropic or streams.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections, connections

T = TypeVar("T")

_executor: ThreadPoolExecutor | None = None
_lock = threading.Lock()


def executor() -> ThreadPoolExecutor:
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(settings.GATEWAY_DB_THREADS, thread_name_prefix="gateway-db")
        return _executor


def _step(fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
    close_old_connections()  # drop a connection past CONN_MAX_AGE or broken since the last step
    return fn(*args, **kwargs)


async def run(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run ``fn(*args, **kwargs)`` in a database thread and return its result."""
    return await sync_to_async(_step, thread_sensitive=False, executor=executor())(fn, args, kwargs)


def submit(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
    """Run ``fn`` in a database thread without waiting (from any thread, even with no event loop)."""
    return executor().submit(_step, fn, args, kwargs)


def shutdown() -> None:
    """Close every database thread's connection and stop the threads (tests; a process that ends)."""
    global _executor
    with _lock:
        pool, _executor = _executor, None
    if pool is None:
        return
    # One task per thread: each waits at the barrier until all are running, so every thread
    # of the pool takes exactly one and closes its own connections.
    barrier = threading.Barrier(settings.GATEWAY_DB_THREADS)

    def close_mine() -> None:
        try:
            barrier.wait(timeout=10)
        finally:
            connections.close_all()

    for _ in range(settings.GATEWAY_DB_THREADS):
        pool.submit(close_mine)
    pool.shutdown(wait=True)
