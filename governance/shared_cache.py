"""The shared cache (Redis) as an accelerator the API never depends on.

Rate limits, the policy version check and alert marks keep their entries in
Redis so that every process sees them. None of them decides or records money (that rests on
PostgreSQL), so a Redis that is down or stalled must not fail a request. ``FallbackRedisCache``
then answers from a per-process memory cache instead; after a failure it skips Redis for
``RETRY_SECONDS``, so a stalled Redis costs each process one timeout per interval rather than
one per request; it logs a warning at most once a minute while the outage lasts, and
``outage()`` tells ``/healthz`` and the policy cache.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from contextlib import suppress
from typing import Any

from django.core.cache import caches
from django.core.cache.backends.base import DEFAULT_TIMEOUT, MEMCACHE_MAX_KEY_LENGTH, BaseCache
from django.core.cache.backends.locmem import LocMemCache
from django.core.cache.backends.redis import RedisCache, RedisCacheClient
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger(__name__)

RETRY_SECONDS = 5.0
LOG_EVERY_SECONDS = 60.0
# What an unreachable, stalled or failing-over Redis raises; anything else is a bug and propagates.
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, ReadOnlyError)


class _Outage:
    """This process's view of Redis: since when it has been unreachable, if it is."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.since: float | None = None  # wall clock, for people reading /healthz
        self.error = ""
        self._retry_at = 0.0
        self._logged_at: float | None = None

    def skipping(self) -> bool:
        """Return whether to answer locally without trying Redis (a failure was seen very recently)."""
        return self.since is not None and time.monotonic() < self._retry_at

    def failed(self, exc: Exception) -> None:
        now = time.monotonic()
        with self._lock:
            if self.since is None:
                self.since = time.time()
            self.error = f"{type(exc).__name__}: {exc}"[:200]
            self._retry_at = now + RETRY_SECONDS
            log = self._logged_at is None or now - self._logged_at >= LOG_EVERY_SECONDS
            if log:
                self._logged_at = now
        if log:
            logger.warning(
                "Redis unreachable (%s): rate limits and the policy cache are per-process until it is back",
                self.error,
            )

    def recovered(self) -> None:
        if self.since is None:
            return
        with self._lock:
            if self.since is None:
                return
            lasted, self.since, self._logged_at = time.time() - self.since, None, None
        logger.warning("Redis reachable again after %.0f s; the shared cache is in use again", lasted)


_outage = _Outage()

_MEMCACHED_ERROR_CHARS = re.compile(r"[\x00-\x20\x7f]")  # as django.core.cache.backends.base's


class _QuickKeyCheck(BaseCache):
    """A cache whose key check costs little for a key it has nothing to say about.

    Django's warns, for every operation, about a key memcached would refuse, through a
    generator and a lazily compiled regex: a few microseconds, three times an allowance.
    A key that is short enough and free of those characters is passed at once; any other
    gets Django's check, and so its warnings, word for word.
    """

    def validate_key(self, key):
        if len(key) > MEMCACHE_MAX_KEY_LENGTH or _MEMCACHED_ERROR_CHARS.search(key):
            super().validate_key(key)


class LocalCache(_QuickKeyCheck, LocMemCache):
    """Django's per-process memory cache (the cache without Redis), with the quick key check."""


def outage() -> str | None:
    """Return why this process is answering from its own memory instead of Redis, or None."""
    since = _outage.since
    if since is None:
        return None
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since))
    return f"unreachable since {started} ({_outage.error}); rate limits and the policy cache are per-process"


def count_in_window(key: str, ttl: int) -> int:
    """Count one under ``key`` in the default cache, expiring ``ttl`` seconds after its first count.

    Return the count so far.
    """
    cache = caches["default"]
    if isinstance(cache, FallbackRedisCache):
        return cache.incr_with_expiry(key, ttl)
    return _add_or_incr(cache, key, ttl)


def _add_or_incr(cache: BaseCache, key: str, ttl: int) -> int:
    # Incremented first: for every request of a window but its first the key is there, so
    # this is one operation, not an add that fails and then the increment.
    with suppress(ValueError):  # not there (yet, or any more)
        return cache.incr(key)
    if cache.add(key, 1, timeout=ttl):
        return 1
    try:
        return cache.incr(key)  # another thread added it meanwhile
    except ValueError:  # expired between add and incr
        cache.add(key, 1, timeout=ttl)
        return 1


class _KeptClient(RedisCacheClient):
    """Django's Redis cache client, keeping one ``redis.Redis`` per connection pool.

    Django makes a new one for every operation; its ``__init__`` (the response callbacks
    copied, the options sorted out) cost more CPU than the GET it was made for (a cache
    GET took 200-230 us against 65-115 us for redis-py's own, kept client). The pools,
    and so the connections, were always shared; a Redis client is safe to share between
    threads, and its pool reconnects in a forked process.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._clients: dict[int, Any] = {}

    def get_client(self, key=None, *, write=False):
        index = self._get_connection_pool_index(write)
        client = self._clients.get(index)
        if client is None:
            client = self._clients[index] = self._client(connection_pool=self._get_connection_pool(write))
        return client


class FallbackRedisCache(_QuickKeyCheck, RedisCache):
    """Django's Redis cache, answering from a per-process memory cache while Redis is unreachable."""

    def __init__(self, server: str, params: dict[str, Any]) -> None:
        super().__init__(server, params)
        self._class = _KeptClient
        # LocMemCache keeps its data per name and process, so every thread shares this one.
        local_params = {key: value for key, value in params.items() if key != "OPTIONS"}
        self._local = LocalCache(f"redis-fallback:{server}", {**local_params, "OPTIONS": {"MAX_ENTRIES": 10_000}})

    def _either(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if not _outage.skipping():
            try:
                result = getattr(super(), name)(*args, **kwargs)
            except UNREACHABLE as exc:
                _outage.failed(exc)
            else:
                _outage.recovered()
                return result
        return getattr(self._local, name)(*args, **kwargs)

    def add(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        return self._either("add", key, value, timeout, version)

    def get(self, key, default=None, version=None):
        return self._either("get", key, default, version)

    def set(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        return self._either("set", key, value, timeout, version)

    def touch(self, key, timeout=DEFAULT_TIMEOUT, version=None):
        return self._either("touch", key, timeout, version)

    def delete(self, key, version=None):
        return self._either("delete", key, version)

    def get_many(self, keys, version=None):
        return self._either("get_many", keys, version)

    def has_key(self, key, version=None):
        return self._either("has_key", key, version)

    def incr(self, key, delta=1, version=None):
        return self._either("incr", key, delta, version)

    def set_many(self, data, timeout=DEFAULT_TIMEOUT, version=None):
        return self._either("set_many", data, timeout, version)

    def delete_many(self, keys, version=None):
        return self._either("delete_many", keys, version)

    def clear(self):
        return self._either("clear")

    def incr_with_expiry(self, key: str, ttl: int) -> int:
        """INCR and EXPIRE in one pipelined round trip (the cache API's add then incr takes three)."""
        if not _outage.skipping():
            try:
                redis_key = self.make_and_validate_key(key)
                pipe = self._cache.get_client(redis_key, write=True).pipeline(transaction=False)
                pipe.incr(redis_key)
                pipe.expire(redis_key, ttl)
                count = pipe.execute()[0]
            except UNREACHABLE as exc:
                _outage.failed(exc)
            else:
                _outage.recovered()
                return count
        return _add_or_incr(self._local, key, ttl)
