"""Per-key request rate limit: a fixed-window counter in the cache (one INCR a request)."""

from __future__ import annotations

import time

from django.conf import settings
from django.core.cache import cache
from rest_framework.throttling import BaseThrottle

PERIODS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600, "d": 86400, "day": 86400}


def parse_rate(rate: str) -> tuple[int, int]:
    count, _, period = rate.partition("/")
    return int(count), PERIODS[period.strip().lower()]


class ApiKeyRateThrottle(BaseThrottle):
    """Allow API_RATE_LIMIT requests per key per window; answer 429 with Retry-After past it."""

    def allow_request(self, request, view) -> bool:
        key = request.auth
        if key is None:
            return True
        limit, period = parse_rate(settings.API_RATE_LIMIT)
        now = time.time()
        window = int(now // period)
        cache_key = f"rl:{key.pk.hex}:{period}:{window}"
        if cache.add(cache_key, 1, timeout=period + 1):
            count = 1
        else:
            try:
                count = cache.incr(cache_key)
            except ValueError:  # expired between add and incr
                cache.add(cache_key, 1, timeout=period + 1)
                count = 1
        self._wait = (window + 1) * period - now
        return count <= limit

    def wait(self) -> float:
        return self._wait
