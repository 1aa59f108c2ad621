"""Per-key request rate limit: a fixed-window counter, one round trip a request on Redis."""

from __future__ import annotations

import functools
import time

from django.conf import settings
from django.core.cache import cache
from rest_framework.throttling import BaseThrottle

PERIODS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600, "d": 86400, "day": 86400}


def parse_rate(rate: str) -> tuple[int, int]:
    count, _, period = rate.partition("/")
    return int(count), PERIODS[period.strip().lower()]


@functools.cache
def _redis(url: str):
    import redis

    return redis.Redis.from_url(url)


def window_count(key: str, ttl: int) -> int:
    """Count one request under ``key`` and return the count so far.

    On Redis, INCR and EXPIRE go in one pipelined round trip (Django's cache API would
    take three: add, then exists + incr); elsewhere, the cache's add and incr.
    """
    if settings.REDIS_URL:
        pipe = _redis(settings.REDIS_URL).pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, ttl)
        return pipe.execute()[0]
    if cache.add(key, 1, timeout=ttl):
        return 1
    try:
        return cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.add(key, 1, timeout=ttl)
        return 1


class ApiKeyRateThrottle(BaseThrottle):
    """Allow API_RATE_LIMIT requests per key per window; answer 429 with Retry-After past it."""

    def allow_request(self, request, view) -> bool:
        key = request.auth
        if key is None:
            return True
        limit, period = parse_rate(settings.API_RATE_LIMIT)
        now = time.time()
        window = int(now // period)
        count = window_count(f"comptroller:rl:{key.pk.hex}:{period}:{window}", period + 1)
        self._wait = (window + 1) * period - now
        return count <= limit

    def wait(self) -> float:
        return self._wait
