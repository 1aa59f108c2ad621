"""The gateway through the official TypeScript SDK (``@anthropic-ai/sdk``, pinned in tests/gateway_js/).

Each test runs one scenario of ``tests/gateway_js/scenarios.mjs`` with node against the
live ASGI server and the upstream stub, then checks the ledger. ``make test`` installs the
SDK (``npm ci``, from npm's cache when it has it); without node or the SDK these skip,
except in CI, where they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from budgets.models import Budget, Hold, HoldState
from tests.gateway_support import (
    asgi_url,  # noqa: F401  (fixtures)
    shop,  # noqa: F401
    upstream,  # noqa: F401
    wait_for,
)
from usage.models import NANO, UsageEvent

pytestmark = pytest.mark.django_db(transaction=True)

JS_DIR = Path(__file__).parent / "gateway_js"


def _node_ready() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    if not (JS_DIR / "node_modules" / "@anthropic-ai" / "sdk").is_dir():
        return "the TypeScript SDK is not installed (npm ci --prefix tests/gateway_js)"
    return None


@pytest.fixture
def node(asgi_url, shop):
    problem = _node_ready()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)

    def run(scenario: str, **extra: str) -> dict:
        env = {**os.environ, "GATEWAY_URL": asgi_url, "GATEWAY_KEY": shop.secret, **extra}
        done = subprocess.run(["node", "scenarios.mjs", scenario], cwd=JS_DIR, env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    return run


def test_create(node, shop, upstream):
    result = node("create")

    event = wait_for(lambda: UsageEvent.objects.filter(request_id=result["id"]).first())
    assert result["text"].startswith("Budgets are a promise") and result["decision"] == "granted"
    assert result["hold"] == f"hold_{Hold.objects.get().pk.hex}"
    assert (event.input_tokens, event.output_tokens) == (result["usage"]["input_tokens"],
                                                         result["usage"]["output_tokens"])


def test_streaming(node, shop, upstream):
    result = node("stream")

    assert result["text"] == result["finalText"] and result["text"].startswith("Budgets are a promise")
    event = wait_for(lambda: UsageEvent.objects.filter(request_id=result["id"]).first())
    assert event.streamed is True and event.output_tokens == result["usage"]["output_tokens"]


def test_tool_use(node, shop, upstream):
    result = node("tools")

    assert (result["stop"], result["tool"], result["input"]) == ("tool_use", "get_weather", {"city": "Paris"})
    assert wait_for(lambda: UsageEvent.objects.filter(request_id__in=result["ids"]).count() == 2)


def test_a_denial_is_raised_without_retries_and_nothing_is_forwarded(node, shop, upstream):
    Budget.objects.filter(pk=shop.budget.pk).update(limit_nano=NANO // 1000)
    result = node("denied", MAX_RETRIES="2")  # the SDK's default retries must not fire

    assert result["raised"] and result["name"] == "PermissionDeniedError" and result["status"] == 403
    assert result["type"] == "budget_exceeded" and "Support monthly" in result["message"]
    assert result["decision"] == "denied"
    assert upstream.message_calls == [] and not Hold.objects.exists()


def test_an_upstream_500_is_raised_and_the_hold_released(node, shop, upstream):
    result = node("upstream_error")

    assert result["name"] == "InternalServerError" and result["status"] == 500
    assert Hold.objects.get().state == HoldState.RELEASED and not UsageEvent.objects.exists()


def test_a_client_that_aborts_mid_stream_is_charged(node, shop, upstream):
    upstream.event_delay = 0.05

    result = node("disconnect")

    assert result["deltas"] == 3
    hold = wait_for(lambda: Hold.objects.filter(state=HoldState.COMMITTED).first())
    assert hold is not None, "the hold was not settled after the caller left"
    event = hold.usage_event
    assert event.metadata["usage_estimated"] == "output" and 3 <= event.output_tokens < 30
