"""200 calls race through the gateway against a block budget that fits 37: exactly 37 reach Anthropic.

On PostgreSQL (the row locks are what is tested). Each call's usage is exactly its hold
(the stub answers the estimated input and ``max_tokens`` of output), so committed spend
never frees room a hold did not: the 38th call can never fit, however the commits and the
allowances interleave.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from comptroller_client.estimate import size_request

from budgets.models import Budget, Hold, HoldState
from tests.conftest import run_async
from tests.gateway_support import (
    ASK,
    asgi_url,  # noqa: F401  (fixtures)
    shop,  # noqa: F401
    upstream,  # noqa: F401
    wait_for,
)
from usage.models import UsageEvent
from usage.services import event_tokens

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

CALLS, FITS, MAX_TOKENS = 200, 37, 20


def test_racing_calls_through_the_gateway_never_overspend(shop, upstream, asgi_url):
    body = {"model": "claude-sonnet-4-5", "max_tokens": MAX_TOKENS, "messages": [ASK]}
    per_call = size_request(body).input_tokens + MAX_TOKENS
    upstream.input_tokens = size_request(body).input_tokens  # the call uses exactly what it held
    upstream.reply = " ".join(["word"] * (MAX_TOKENS + 5))
    limit = FITS * per_call + per_call // 2
    Budget.objects.filter(pk=shop.budget.pk).update(limit_nano=None, limit_tokens=limit)
    headers = {"x-api-key": shop.secret, "x-comptroller-feature": "support-bot"}

    async def race() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=CALLS, max_keepalive_connections=CALLS)  # httpcore#1110
        async with httpx.AsyncClient(base_url=asgi_url, timeout=60, limits=limits) as http:
            return await asyncio.gather(*(http.post("/anthropic/v1/messages", json=body, headers=headers)
                                          for _ in range(CALLS)))

    responses = run_async(race)

    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * FITS + [403] * (CALLS - FITS)
    assert all(r.json()["error"]["type"] == "budget_exceeded" for r in responses if r.status_code == 403)
    assert len(upstream.message_calls) == FITS
    assert wait_for(lambda: Hold.objects.filter(state=HoldState.COMMITTED).count() == FITS)  # settled after the answers
    spent = sum(event_tokens(e) for e in UsageEvent.objects.all())
    window = shop.budget.windows.get()
    assert spent == window.spent_tokens == FITS * per_call <= limit
    assert window.reserved_tokens == 0
