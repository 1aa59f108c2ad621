"""What the gateway tests share: an upstream Messages API stub, a live ASGI server, a tenant set up for it.

The upstream is ``client_stubs.MessagesStub`` (it answers like api.anthropic.com, JSON and
SSE) that also records each request's headers and answers a request with ``tools`` by
calling the first tool. The ASGI server is uvicorn in a thread on a port the OS chose,
serving ``governance.asgi`` against the test database; Django's ``live_server`` (WSGI,
threaded) serves the same view through ``async_to_sync``.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from budgets.models import Budget
from governance.audit import Actor
from governance.models import KeyRole
from governance.services import api_key_create
from tests.client_stubs import Call, MessagesStub
from tests.factories import FeatureFactory, TenantFactory
from usage.models import NANO
from usage.provider.models import ProviderConnection

UPSTREAM_KEY = "sk-ant-api03-tenant-key-0123456789"
ASK = {"role": "user", "content": "How should I think about a monthly budget for my support bot?"}
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@dataclass
class UpstreamStub(MessagesStub):
    """The Messages API stub, keeping each request's headers and query, and calling tools."""

    headers: list[dict[str, str]] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)

    def handle(self, request: Request) -> Response:
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        self.queries.append(request.query_string.decode())
        body = request.get_json(silent=True) or {}
        if request.path == "/v1/messages" and body.get("tools") and not body.get("stream"):
            self.calls.append(Call(request.path, body))
            return self.json(self.tool_use(body))
        return super().handle(request)

    def tool_use(self, body: dict[str, Any]) -> dict[str, Any]:
        tool = body["tools"][0]
        return {
            "id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant",
            "model": self.dated.get(body["model"], body["model"]),
            "content": [{"type": "text", "text": "Let me look that up."},
                        {"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:20]}", "name": tool["name"],
                         "input": {"city": "Paris"}}],
            "stop_reason": "tool_use", "stop_sequence": None, "usage": self.usage(body, 12),
        }

    @property
    def message_calls(self) -> list[Any]:
        return [c for c in self.calls if c.path == "/v1/messages"]


@pytest.fixture
def upstream(settings):
    server = HTTPServer(threaded=True)
    server.start()
    stub = UpstreamStub(server).install()
    settings.ANTHROPIC_API_BASE_URL = stub.base_url
    yield stub
    server.clear()
    server.stop()


@pytest.fixture
def shop(transactional_db):
    """A tenant with a support-bot feature under a $10 monthly block budget, a service key and an upstream key."""
    tenant = TenantFactory(slug="shop")
    support = FeatureFactory(tenant=tenant, key="support-bot", default_model="claude-sonnet-4-5",
                             max_tokens_cap=4096)
    budget = Budget.objects.create(tenant=tenant, name="Support monthly", scope="feature", feature=support,
                                   period="month", limit_nano=10 * NANO, enforcement="block")
    _, secret = api_key_create(tenant=tenant, actor=Actor.system(), name="svc", role=KeyRole.SERVICE)
    ProviderConnection.objects.create(tenant=tenant, inference_api_key=UPSTREAM_KEY)
    return SimpleNamespace(tenant=tenant, support=support, budget=budget, secret=secret)


class AsgiServer:
    """uvicorn serving governance.asgi in a thread, on a port the OS chose."""

    def __init__(self, **config: Any) -> None:
        import uvicorn

        from governance.asgi import application

        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        config = uvicorn.Config(application, lifespan="off", log_level="warning", access_log=False,
                                backlog=512, **{"timeout_graceful_shutdown": 2, **config})
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> AsgiServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.socket.close()


@pytest.fixture
def asgi_url(transactional_db):
    server = AsgiServer().start()
    yield server.url
    server.stop()


def wait_for(condition, timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll until ``condition()`` is truthy (a commit that happens after the response ends)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def error_of(response: Any) -> dict[str, Any]:
    return json.loads(response.content if hasattr(response, "content") else response)["error"]
