"""Per-key request rate limit: a fixed-window counter, one round trip a request on Redis.

While Redis is unreachable the counters are per process (see governance.shared_cache), so a
key gets up to the limit from each process: looser, but requests keep being answered.
"""

from __future__ import annotations

import time

from django.conf import settings
from rest_framework.throttling import BaseThrottle

from governance.shared_cache import count_in_window

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
        count = count_in_window(f"rl:{key.pk.hex}:{period}:{window}", period + 1)
        self._wait = (window + 1) * period - now
        return count <= limit

    def wait(self) -> float:
        return self._wait
