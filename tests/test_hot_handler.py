"""The hot endpoints answer past the middleware chain exactly as they answer through it (governance/hot_handler.py).

The same requests go through the production handler (``governance.wsgi.application``'s
class) and through Django's own WSGIHandler, as a WSGI server calls them; status, headers
and body shape must match, for grants, denials, refusals and errors alike, and what the
chain acts on itself (a foreign host, plain HTTP where HTTPS is required, a body over the
limit) must still be answered by the chain.
"""

from __future__ import annotations

import json

import httpx
import pytest
from django.conf import settings
from django.core.handlers.wsgi import WSGIHandler
from django.utils.module_loading import import_string

from governance.hot_handler import HOT_PREFIX, KNOWN_MIDDLEWARE, HotPathHandler, hot_routes
from tests.factories import BudgetFactory

pytestmark = pytest.mark.django_db(transaction=True)

ASK = {"feature": "support-bot", "model": "claude-sonnet-4-5", "input_tokens": 100, "max_tokens": 50}
USAGE = {"usage": {"input_tokens": 100, "output_tokens": 20}}
IGNORED = {"date", "content-length"}  # the ids in a body differ between the two answers, so its length may


class Seen:
    """Which view answered: the hot handler records whether the chain ran."""

    def __init__(self) -> None:
        self.chain = 0


@pytest.fixture
def handlers(monkeypatch):
    hot, django = HotPathHandler(), WSGIHandler()
    seen = Seen()
    chain = hot.__class__.__mro__[1].get_response

    def counted(self, request):
        seen.chain += 1
        return chain(self, request)

    monkeypatch.setattr(WSGIHandler, "get_response", counted)
    return hot, django, seen


def clients(handlers, secret: str, **kwargs):
    hot, django, _ = handlers
    headers = {"Authorization": f"Bearer {secret}", **kwargs.pop("headers", {})}
    return [
        httpx.Client(transport=httpx.WSGITransport(app=app), base_url=kwargs.get("base_url", "http://testserver"),
                     headers=headers)
        for app in (hot, django)
    ]


def shape(value):
    """The body with every leaf replaced by its type: two answers for two holds have the same shape."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value]
    return type(value).__name__


def same(a: httpx.Response, b: httpx.Response) -> None:
    assert a.status_code == b.status_code, (a.text, b.text)
    assert {k: v for k, v in a.headers.items() if k not in IGNORED} == {
        k: v for k, v in b.headers.items() if k not in IGNORED
    }
    if a.headers["content-type"].startswith("application/json"):
        assert shape(a.json()) == shape(b.json())
        if a.status_code >= 400:
            assert a.json() == b.json()
    assert ("content-length" in a.headers) == ("content-length" in b.headers)
    assert int(a.headers.get("content-length", len(a.content))) == len(a.content)


def post(client: httpx.Client, path: str, body, **kwargs) -> httpx.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
    return client.post(path, content=data, headers=headers, **kwargs)


def test_every_middleware_is_accounted_for():
    """A middleware added to settings.MIDDLEWARE must be placed in governance/hot_handler.py first."""
    assert set(settings.MIDDLEWARE) <= KNOWN_MIDDLEWARE, set(settings.MIDDLEWARE) - KNOWN_MIDDLEWARE
    classes = {path: import_string(path) for path in settings.MIDDLEWARE}
    # The chain's other hooks, which the hot path does not run: CSRF's process_view passes an
    # exempt view (every hot view is); no middleware here changes a template response.
    assert {p for p, c in classes.items() if hasattr(c, "process_view")} == {"django.middleware.csrf.CsrfViewMiddleware"}
    assert not [p for p, c in classes.items() if hasattr(c, "process_template_response")]


def test_every_hot_view_is_under_the_hot_prefix():
    from django.urls import get_resolver

    def walk(patterns, prefix=""):
        for p in patterns:
            if hasattr(p, "url_patterns"):
                yield from walk(p.url_patterns, prefix + str(p.pattern))
            else:
                yield "/" + prefix + str(p.pattern), p.callback

    hot = [route for route, callback in walk(get_resolver().url_patterns) if getattr(callback, "hot", False)]
    assert hot == ["/api/v1/allowances", "/api/v1/allowances/<str:hold_id>/commit"]
    assert all(route.startswith(HOT_PREFIX) for route in hot)


@pytest.mark.parametrize("path", [
    "/api/v1/allowances", "/api/v1/allowances/hold_0123/commit", "/api/v1/allowances/x.y~z/commit",
    "/api/v1/allowances/", "/api/v1/allowances/a/b/commit", "/api/v1/allowances//commit",
    "/api/v1/allowances/hold_1/commit/", "/api/v1/allowances/hold_1/release", "/api/v1/allowancesx",
    "/api/v1/allowances/hold_1", "/api/v1/allowances\n",
])
def test_the_bare_routes_match_what_the_resolver_resolves(path):
    """The bare path matches the raw path by the hot views' own patterns: the same view and arguments."""
    from django.urls import Resolver404, resolve

    found = [(view, m.groupdict()) for regex, view in hot_routes() if (m := regex.fullmatch(path))]
    try:
        match = resolve(path)
    except Resolver404:
        match = None
    if match is None or not getattr(match.func, "hot", False):
        assert found == []
    else:
        assert found == [(match.func, match.kwargs)]


def test_a_plain_request_takes_the_bare_path_and_others_the_resolver(handlers, service_key, tenant, feature, monkeypatch):
    from django.core.signals import request_started
    from django.db import reset_queries

    request_started.disconnect(reset_queries)  # as CaptureQueriesContext does: it comes back last
    request_started.connect(reset_queries)
    handlers = (HotPathHandler(), *handlers[1:])
    resolved = []
    match = HotPathHandler._hot_match
    monkeypatch.setattr(HotPathHandler, "_hot_match", lambda self, request: resolved.append(request.path) or match(self, request))
    hot, django = clients(handlers, service_key[1])
    same(post(hot, "/api/v1/allowances", ASK), post(django, "/api/v1/allowances", ASK))
    assert resolved == []  # matched by the bare path's own routes
    html = {"Accept": "text/html"}
    same(post(hot, "/api/v1/allowances", ASK, headers=html), post(django, "/api/v1/allowances", ASK, headers=html))
    assert resolved == ["/api/v1/allowances"]  # not plain: Django's __call__, then the resolver


def test_the_bare_path_stands_aside_for_another_request_receiver(handlers, service_key, tenant, feature):
    """With a receiver of its own on request_started, every request goes the way Django sends signals."""
    from django.core.signals import request_started

    calls = []

    def receiver(**kwargs):
        calls.append(kwargs["environ"]["PATH_INFO"])

    request_started.connect(receiver)
    try:
        hot, django = clients(handlers, service_key[1])
        same(post(hot, "/api/v1/allowances", ASK), post(django, "/api/v1/allowances", ASK))
    finally:
        request_started.disconnect(receiver)
    assert calls == ["/api/v1/allowances", "/api/v1/allowances"]


def test_a_grant_and_its_commit_answer_alike_past_the_chain(handlers, service_key, tenant, feature):
    BudgetFactory(tenant=tenant, scope="tenant", period="month", limit_nano=10**15)
    hot, django = clients(handlers, service_key[1])
    seen = handlers[2]
    answers = [post(c, "/api/v1/allowances", ASK) for c in (hot, django)]
    assert seen.chain == 1  # Django's handler only: the hot one went past the chain
    same(*answers)
    assert answers[0].status_code == 201
    commits = [post(c, f"/api/v1/allowances/{a.json()['id']}/commit", USAGE) for c, a in zip((hot, django), answers, strict=True)]
    same(*commits)
    assert commits[0].json()["state"] == "committed"
    assert seen.chain == 2


def test_answers_after_the_first_get_the_chains_headers_in_its_order(handlers, service_key, tenant, feature, settings):
    BudgetFactory(tenant=tenant, scope="tenant", period="month", limit_nano=10**15)
    hot, django = clients(handlers, service_key[1])

    def headers(response: httpx.Response) -> list[tuple[str, str]]:
        assert int(response.headers["content-length"]) == len(response.content)
        return [(k, "n" if k == "content-length" else v) for k, v in response.headers.multi_items() if k != "date"]

    # The hot path runs the response hooks on the first answer of a kind, and gives the next ones what they added.
    for frame_options in ("DENY", "DENY", "SAMEORIGIN", "SAMEORIGIN"):
        settings.X_FRAME_OPTIONS = frame_options
        answers = [post(c, "/api/v1/allowances", ASK) for c in (hot, django)]
        assert headers(answers[0]) == headers(answers[1])
        assert answers[0].headers["x-frame-options"] == frame_options
        commits = [post(c, f"/api/v1/allowances/{a.json()['id']}/commit", USAGE)
                   for c, a in zip((hot, django), answers, strict=True)]
        assert headers(commits[0]) == headers(commits[1])
        assert commits[0].status_code == 200


@pytest.mark.parametrize(
    "path, body, headers",
    [
        ("/api/v1/allowances", {**ASK, "model": "claude-unknown-9"}, {}),  # 400 unknown_model
        ("/api/v1/allowances", {**ASK, "input_tokens": -1}, {}),  # 400 from the serializer
        ("/api/v1/allowances", {**ASK, "surplus": 1}, {}),  # 400 unknown field
        ("/api/v1/allowances", b"{not json", {}),  # 400 parse error
        ("/api/v1/allowances", {**ASK, "feature": "nope"}, {}),  # 400 unknown_feature
        ("/api/v1/allowances", ASK, {"Authorization": "Bearer cpt_wrong"}),  # 401
        ("/api/v1/allowances", ASK, {"Accept": "text/html"}),  # the DRF view's content negotiation
        ("/api/v1/allowances/hold_00000000000000000000000000000000/commit", USAGE, {}),  # 404
        ("/api/v1/allowances/not-an-id/commit", USAGE, {}),  # 404
        ("/api/v1/allowances/hold_00000000000000000000000000000000/commit", {"usage": "x"}, {}),  # 400
    ],
)
def test_refusals_and_errors_answer_alike(handlers, service_key, tenant, feature, path, body, headers):
    hot, django = clients(handlers, service_key[1])
    same(post(hot, path, body, headers=headers), post(django, path, body, headers=headers))


def test_a_denial_answers_alike(handlers, service_key, tenant, feature):
    BudgetFactory(tenant=tenant, scope="tenant", period="month", limit_nano=1, enforcement="block")
    hot, django = clients(handlers, service_key[1])
    answers = [post(c, "/api/v1/allowances", ASK) for c in (hot, django)]
    same(*answers)
    assert answers[0].json()["granted"] is False


def test_what_the_chain_acts_on_still_goes_through_it(handlers, service_key, tenant, feature, settings):
    settings.API_REQUIRE_HTTPS = True
    hot, django = clients(handlers, service_key[1])
    seen = handlers[2]
    answers = [post(c, "/api/v1/allowances", ASK) for c in (hot, django)]
    same(*answers)
    assert answers[0].status_code == 403 and answers[0].json()["error"]["code"] == "https_required"
    assert seen.chain == 2  # both through the chain

    # Over HTTPS (behind the proxy's header) the hot path answers, with HSTS as the chain adds it.
    settings.SECURE_HSTS_SECONDS = 3600
    secure = {"X-Forwarded-Proto": "https"}
    answers = [post(c, "/api/v1/allowances", ASK, headers=secure) for c in (hot, django)]
    same(*answers)
    assert answers[0].status_code == 201 and "strict-transport-security" in answers[0].headers
    assert seen.chain == 3

    foreign = {"Host": "evil.example", **secure}
    answers = [post(c, "/api/v1/allowances", ASK, headers=foreign) for c in (hot, django)]
    same(*answers)
    assert answers[0].status_code == 400
    assert seen.chain == 5

    big = json.dumps({**ASK, "metadata": {"x": "y" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1)}})
    answers = [post(c, "/api/v1/allowances", big, headers=secure) for c in (hot, django)]
    same(*answers)
    assert answers[0].status_code == 413
    assert seen.chain == 7


def test_other_endpoints_go_through_the_chain(handlers, service_key, tenant, feature):
    hot, django = clients(handlers, service_key[1])
    seen = handlers[2]
    answers = [c.get("/api/v1/features") for c in (hot, django)]
    same(*answers)
    assert seen.chain == 2
