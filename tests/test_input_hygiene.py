"""Input hygiene for the whole API: text nothing downstream can keep is a 400 naming where, never a 500."""

from __future__ import annotations

import json

import pytest

from tests.test_api_foundation import assert_error
from tests.test_usage_api import event
from usage.models import UsageEvent


def post_json(client, url: str, body) -> object:
    # json.dumps escapes non-ASCII (ensure_ascii), so a lone surrogate goes out as "\ud800",
    # exactly as a careless client would send it.
    return client.generic("POST", url, json.dumps(body), content_type="application/json")


@pytest.mark.parametrize(
    "over,where",
    [
        ({"metadata": {"note": "\ud800"}}, "metadata.note"),
        ({"metadata": {"deep": [{"x": "ok"}, {"x": "a\udfffb"}]}}, "metadata.deep[1].x"),
        ({"metadata": {"\ud800": 1}}, 'metadata["\\ud800"]'),
        ({"metadata": {"note": "nul \u0000 here"}}, "metadata.note"),
        ({"usage": {"input_tokens": 1, "output_tokens": 1, "service_tier": "\udc00"}}, "usage.service_tier"),
        ({"run_id": "\ud83d"}, "run_id"),
        ({"feature\u0000": "x"}, '["feature\\u0000"]'),
    ],
)
def test_a_lone_surrogate_or_nul_anywhere_is_a_400_naming_where(api, feature, over, where):
    response = post_json(api, "/api/v1/usage", event(**over))
    error = assert_error(response, 400, "invalid_request")
    assert list(error["details"]) == [where]
    assert where in error["message"]
    assert not UsageEvent.objects.exists()


def test_one_bad_event_in_a_full_batch_names_its_index(api, feature):
    events = [event(f"req_{i}") for i in range(1000)]
    events[737]["metadata"] = {"note": "\ud800"}
    error = assert_error(post_json(api, "/api/v1/usage", {"events": events}), 400, "invalid_request")
    assert error["details"] == {"events[737].metadata.note": ["Must not contain a lone UTF-16 surrogate (\\ud800)."]}
    assert not UsageEvent.objects.exists()


def test_every_endpoint_gets_the_check(api, admin_api, feature):
    """The check lives in the parser, so endpoints whose serializers never heard of it have it too."""
    assert_error(post_json(admin_api, "/api/v1/features", {"key": "x", "name": "a\ud800"}), 400, "invalid_request")
    allowance = {"feature": "support-bot", "model": "claude-sonnet-4-5", "input_tokens": 10, "max_tokens": 10}
    error = assert_error(post_json(api, "/api/v1/allowances", {**allowance, "idempotency_key": "\x00"}),
                         400, "invalid_request")
    assert list(error["details"]) == ["idempotency_key"]
    error = assert_error(post_json(admin_api, "/api/v1/budgets", [{"name": "\udbff"}]), 400, "invalid_request")
    assert list(error["details"]) == ["[0].name"]


def test_surrogate_pairs_and_escaped_backslashes_are_ordinary_text(api, feature):
    body = event(metadata={"emoji": "\U0001f600", "literal": "\\u0000 and \\ud800"})
    assert '"\\ud83d\\ude00"' in json.dumps(body)  # sent as a pair of escapes
    response = post_json(api, "/api/v1/usage", body)
    assert response.status_code == 201, response.content
    assert UsageEvent.objects.get().metadata == {"emoji": "\U0001f600", "literal": "\\u0000 and \\ud800"}


def test_bad_bytes_and_charsets_are_400(api, feature):
    assert_error(api.generic("POST", "/api/v1/usage", b'{"feature": "\xed\xa0\x80"}',
                             content_type="application/json"), 400, "invalid_request")
    assert_error(api.generic("POST", "/api/v1/usage", b"{}", content_type="application/json; charset=nope"),
                 400, "invalid_request")


@pytest.mark.parametrize(
    "url",
    ["/api/v1/features/%ED%A0%80", "/api/v1/budgets?feature=%ED%A0%80", "/api/v1/usage/summary?feature=%ED%A0%80"],
)
def test_percent_encoded_surrogates_in_the_url_never_reach_a_query(api, feature, url):
    # Django re-percent-encodes (path) or replaces (query) bytes that are not UTF-8, so such
    # a URL arrives as ordinary text and gets an ordinary answer.
    response = api.get(url)
    assert response.status_code in (400, 404), response.content
    assert response["Content-Type"].startswith("application/json")


def test_nul_in_repeated_query_parameters_is_found(admin_api, feature):
    error = assert_error(admin_api.get("/api/v1/budgets?feature=support-bot&feature=%00"), 400, "invalid_request")
    assert list(error["details"]) == ["feature"]


# --- dates ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "when",
    ["9999-12-31T23:59:59Z", "2099-01-01T00:00:00Z", "2022-12-31T23:59:59Z", "0001-01-01T00:00:00+05:00",
     "9999-12-31T23:59:59-05:00", "1970-01-01T00:00:00Z"],
)
def test_occurred_at_out_of_bounds_is_a_400_naming_it(api, feature, when):
    error = assert_error(api.post("/api/v1/usage", event(occurred_at=when), format="json"), 400, "invalid_request")
    assert error["details"]["index"] == 0
    assert list(error["details"]["errors"]) == ["occurred_at"]
    assert not UsageEvent.objects.exists()


def test_occurred_at_may_run_up_to_five_minutes_ahead(api, feature):
    from datetime import timedelta

    from django.utils import timezone

    now = timezone.now()
    ahead = api.post("/api/v1/usage", event("ahead", occurred_at=(now + timedelta(minutes=4)).isoformat()),
                     format="json")
    assert ahead.status_code == 201, ahead.content
    error = assert_error(
        api.post("/api/v1/usage", event("too-far", occurred_at=(now + timedelta(minutes=6)).isoformat()),
                 format="json"),
        400, "invalid_request",
    )
    assert "5 minutes ahead" in error["details"]["errors"]["occurred_at"][0]
    oldest = api.post("/api/v1/usage", event("oldest", occurred_at="2023-01-01T00:00:00Z"), format="json")
    assert oldest.status_code == 201, oldest.content


def test_every_date_parameter_in_the_api_has_bounds(admin_api, feature):
    """Walk the OpenAPI schema, so a date parameter added later is covered without a new test."""
    schema = admin_api.get("/api/schema/", {"format": "json"}).json()
    checked = []
    for path, operations in schema["paths"].items():
        if "{" in path or "get" not in operations:
            continue
        params = [p for p in operations["get"].get("parameters", []) if p["in"] == "query"]
        dates = [p["name"] for p in params if p["schema"].get("format") == "date"]
        for name in dates:
            for bad in ("0001-01-01", "2022-12-31", "2100-01-01", "9999-12-31"):
                query = {other: "2026-11-01" for other in dates} | {name: bad}
                error = assert_error(admin_api.get(path, query), 400, "invalid_request")
                assert list(error["details"]) == [name], (path, query)
            checked.append(f"{path}?{name}")
    assert len(checked) >= 6, checked  # summary, levers and reconciliation: start and end each
