"""The allowance and commit as plain views: the same answers as the DRF views they stand in for."""

from __future__ import annotations

import json
from datetime import UTC
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from budgets.apis import AllowanceInput
from governance.api.plain import Fallback, FastInput, render, render_answer
from tests.test_api_foundation import assert_error
from usage.serializers import CommitInput

ASK = {"feature": "support-bot", "model": "claude-sonnet-4-5", "input_tokens": 100, "max_tokens": 50}
USAGE = {"usage": {"input_tokens": 100, "output_tokens": 20}}

# Values of every kind a client might send for a field: right ones, near misses, wrong types.
ANY_VALUE = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 10**9), st.sampled_from([0, 1, 10, 600, 100_000_000, 100_000_001]),
    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([1.0, 12.0, 1.5]),
    st.text(max_size=5), st.sampled_from(["", " ", " x ", "standard", "batch", "fast", "us", "global", "12", "true",
                                          "x" * 64, "x" * 300, "support-bot", "claude-sonnet-4-5"]),
    st.lists(st.integers(0, 3), max_size=2), st.dictionaries(st.sampled_from(["a", "b"]), st.integers(), max_size=2),
)


def bodies(names: list[str], nested: dict[str, list[str]]):
    fields = {name: ANY_VALUE for name in names}
    for name, inner in nested.items():
        fields[name] = st.one_of(ANY_VALUE, st.dictionaries(st.sampled_from([*inner, "extra"]), ANY_VALUE, max_size=8))
    return st.dictionaries(st.sampled_from([*fields, "unknown"]), ANY_VALUE, max_size=12).flatmap(
        lambda base: st.fixed_dictionaries({k: fields.get(k, ANY_VALUE) for k in base})
    )


ALLOWANCE_FIELDS = list(AllowanceInput._declared_fields)
COMMIT_FIELDS = [n for n in CommitInput._declared_fields if n != "usage"]
USAGE_FIELDS = ["input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens",
                "service_tier", "inference_geo", "speed"]


def same_as_the_serializer(serializer_class, data) -> None:
    serializer = serializer_class(data=data)
    valid = serializer.is_valid()
    try:
        fast = FastInput(serializer_class).validate(data)
    except Fallback:
        return  # the serializer decides: always right
    assert valid, (data, serializer.errors)
    assert fast == serializer.validated_data


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.one_of(bodies(ALLOWANCE_FIELDS, {}), st.just(ASK), st.builds(lambda extra: {**ASK, **extra},
       bodies(ALLOWANCE_FIELDS, {}))))
def test_the_compiled_allowance_check_accepts_only_what_the_serializer_does_and_returns_the_same(data):
    same_as_the_serializer(AllowanceInput, data)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.one_of(bodies(COMMIT_FIELDS, {"usage": USAGE_FIELDS}), st.just(USAGE),
                 st.builds(lambda extra: {**USAGE, **extra}, bodies(COMMIT_FIELDS, {"usage": USAGE_FIELDS}))))
def test_the_compiled_commit_check_accepts_only_what_the_serializer_does_and_returns_the_same(data):
    same_as_the_serializer(CommitInput, data)


def test_the_common_bodies_take_the_compiled_check():
    serializer = AllowanceInput(data=ASK)
    assert serializer.is_valid()
    assert FastInput(AllowanceInput).validate(ASK) == serializer.validated_data
    usage = {"usage": {"input_tokens": 1, "output_tokens": 2, "cache_creation": None, "service_tier": "standard"},
             "request_id": "msg_1", "latency_ms": 900, "streamed": False, "metadata": {"route": "chat"}}
    serializer = CommitInput(data=usage)
    assert serializer.is_valid()
    assert FastInput(CommitInput).validate(usage) == serializer.validated_data


# --- requests ------------------------------------------------------------------------------------


def post(client, path, body, **extra):
    return client.generic("POST", path, body if isinstance(body, str) else json.dumps(body),
                          content_type=extra.pop("content_type", "application/json"), **extra)


def test_a_plain_answer_is_the_drf_answer(api, feature):
    # Given the same allowance asked plainly and in a way only the DRF view takes (an Accept with a q)
    plain = post(api, "/api/v1/allowances", ASK)
    drf = post(api, "/api/v1/allowances", ASK, HTTP_ACCEPT="application/json; q=0.9")
    # Then both answer alike, but for the hold's id and expiry (and the budgets' counters, which moved)
    assert (plain.status_code, drf.status_code) == (201, 201)
    assert plain["Content-Type"] == drf["Content-Type"] == "application/json"
    assert plain["Allow"] == drf["Allow"] == "POST, OPTIONS"
    varying = {"id", "expires_at", "budgets"}
    assert {k: v for k, v in plain.json().items() if k not in varying} == {
        k: v for k, v in drf.json().items() if k not in varying
    }
    committed = [post(api, f"/api/v1/allowances/{r.json()['id']}/commit", USAGE, **extra).json()
                 for r, extra in ((plain, {}), (drf, {"HTTP_ACCEPT": "application/json; q=0.9"}))]
    assert [{k: v for k, v in c.items() if k not in {"id", "usage_event_id", "budgets"}} for c in committed] == [
        {"state": "committed", "model": "claude-sonnet-4-5-20250929", "cost_usd": "0.000600", "priced": True,
         "off_hold": False, "released_usd": "0.000450", "late": False}] * 2


def test_a_missing_or_wrong_key_is_401_with_the_scheme(client, db):
    for header in ({}, {"HTTP_AUTHORIZATION": "Bearer cpt_abc_def"}):
        response = post(client, "/api/v1/allowances", ASK, **header)
        assert_error(response, 401, "unauthenticated")
        assert response["WWW-Authenticate"] == 'Bearer realm="comptroller"'


def test_the_rate_limit_applies_to_the_plain_views(api, settings, feature):
    settings.API_RATE_LIMIT = "2/min"
    from django.core.cache import cache

    cache.clear()
    assert post(api, "/api/v1/allowances", ASK).status_code == 201
    assert post(api, "/api/v1/allowances/hold_0/commit", USAGE).status_code == 404
    response = post(api, "/api/v1/allowances", ASK)
    assert_error(response, 429, "rate_limited")
    assert 1 <= int(response["Retry-After"]) <= 60


@pytest.mark.parametrize("endpoint", ["allowance", "commit"])
def test_bad_requests_to_the_plain_views_get_the_contracts_errors(api, feature, endpoint):
    path = "/api/v1/allowances"
    if endpoint == "commit":
        path = f"/api/v1/allowances/{post(api, path, ASK).json()['id']}/commit"
    assert_error(post(api, path, "{not json"), 400, "invalid_request")
    assert_error(post(api, path, "[1]"), 400, "invalid_request")
    assert_error(post(api, path, ""), 400, "invalid_request")
    assert_error(post(api, path, "key=x", content_type="application/x-www-form-urlencoded"), 415,
                 "unsupported_media_type")
    assert_error(post(api, path, ASK, HTTP_ACCEPT="text/html"), 406, "not_acceptable")
    assert_error(api.get(path), 405, "method_not_allowed")
    assert_error(post(api, "/api/v1/allowances/hold_0/commit", "{not json"), 404, "not_found")


def test_nul_and_lone_surrogates_in_a_plain_body_are_named(api, feature):
    error = assert_error(post(api, "/api/v1/allowances", '{"feature": "support-bot", "model": "x\\u0000"}'),
                         400, "invalid_request")
    assert list(error["details"]) == ["model"]
    hold = post(api, "/api/v1/allowances", ASK).json()["id"]
    error = assert_error(post(api, f"/api/v1/allowances/{hold}/commit",
                              '{"usage": {"input_tokens": 1, "output_tokens": 1}, "metadata": {"k": "\\ud800"}}'),
                         400, "invalid_request")
    assert list(error["details"]) == ["metadata.k"]


def test_an_invalid_plain_body_gets_the_serializers_words(api, feature):
    error = assert_error(post(api, "/api/v1/allowances", {**ASK, "max_tokens": 0, "colour": "red"}), 400,
                         "invalid_request")
    assert error["details"] == {"colour": ["Unknown field."]}
    error = assert_error(post(api, "/api/v1/allowances", {**ASK, "max_tokens": "many"}), 400, "invalid_request")
    assert error["details"] == {"max_tokens": ["A valid integer is required."]}


def test_the_hot_statements_stay_short_enough_for_psycopg_to_keep_them_parsed():
    # psycopg re-parses (about 0.1 ms a call) a statement longer than this or with more parameters
    import re

    from psycopg import _queries

    from budgets import reserve, settle

    for sql in (reserve._statement(), settle._settle_statement(), settle._read_statement()[0]):
        assert len(sql.encode()) <= _queries.MAX_CACHED_STATEMENT_LENGTH, "shorten it: see budgets/settle.py"
        assert len(set(re.findall(r"%\((\w+)\)s", sql))) <= _queries.MAX_CACHED_STATEMENT_PARAMS


# Values of every kind an answer holds (no floats: no answer has one), times in several zones.
ANSWER_VALUES = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.text(),
        st.sampled_from(["\u2028", "a\u2029b", "é", "\x00", "</script>"]),
        st.datetimes(timezones=st.sampled_from([UTC, ZoneInfo("UTC"), ZoneInfo("Europe/London"),
                                                ZoneInfo("America/New_York"), ZoneInfo("Asia/Kolkata")])),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(ANSWER_VALUES)
def test_an_answer_is_rendered_byte_for_byte_as_drf_renders_it(data):
    assert render_answer(data) == render(data)


def test_the_hot_answers_render_as_drf_renders_them(api, feature):
    allowance = post(api, "/api/v1/allowances", ASK)
    commit = post(api, f"/api/v1/allowances/{allowance.json()['id']}/commit", USAGE)
    for response in (allowance, commit):
        assert response.content == render(response.json()) == render(json.loads(response.content))


def _parsed(text: str):
    """What the API's parser makes of a body: the data, or the error it answers."""
    import io

    from rest_framework.exceptions import ParseError

    from governance.api.parsers import JSONParser

    try:
        return JSONParser().parse(io.BytesIO(text.encode("utf-8", "surrogatepass")), "application/json",
                                  {"encoding": "utf-8"})
    except ParseError as exc:
        return ("error", str(exc.detail))


def _loaded(text: str):
    """What DRF's json.loads (strict) makes of it, as the parser reports it."""
    from rest_framework.utils import json as drf_json

    try:
        return drf_json.loads(text)
    except ValueError as exc:
        return ("error", f"JSON parse error - {exc}")


@pytest.mark.parametrize("text", ['{"a": 1}', "\ufeff{}", '{"a": NaN}', '{"a": Infinity}', "[1, 2", '"x"', "{} x",
                                  '{"a": 1.5e3, "b": [true, null], "c": "\\u00e9"}', ""])
def test_the_parser_decodes_as_json_loads_does(text):
    assert _parsed(text) == _loaded(text)


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(), st.floats(allow_nan=False)),
                    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner,
                                                                                        max_size=3)),
                    max_leaves=12))
def test_a_fingerprint_is_the_hash_of_the_sorted_json(data):
    import hashlib

    from budgets.services import AllowanceRequest

    expected = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()
    assert AllowanceRequest.fingerprint_of(data) == expected
