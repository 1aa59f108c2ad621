"""docs/api.md is the contract: every operation, field, enum value and error code the code has is in it.

Each test reads what the code can answer (the OpenAPI schema, the error-code registry, the
codes raised in the source, live answers of the endpoints whose bodies the schema leaves
open) and fails naming what docs/api.md (or docs/gateway.md, for the gateway's errors)
does not mention. Mentioned means written in code style (`name`) or inside a code block.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from django.core.management import call_command
from django.http import HttpResponse
from rest_framework import exceptions

from governance.api.errors import ERROR_CODES, ApiError, exception_handler
from tests.factories import BudgetFactory

ROOT = Path(__file__).resolve().parent.parent
API_MD = (ROOT / "docs" / "api.md").read_text()
GATEWAY_MD = (ROOT / "docs" / "gateway.md").read_text()
# The modules whose errors are the REST API's (the gateway answers in Anthropic's shape).
API_SOURCES = ["governance", "budgets", "usage"]
NOT_API = ("migrations", "governance/web/", "management/commands")


def code_spans(markdown: str) -> list[str]:
    """Return the text of every code span and code block of ``markdown``."""
    blocks = re.findall(r"```[^\n]*\n(.*?)```", markdown, re.S)
    prose = re.sub(r"```.*?```", "", markdown, flags=re.S)
    return re.findall(r"`([^`]+)`", prose) + blocks


def mentioned_names(markdown: str) -> set[str]:
    return {name for span in code_spans(markdown) for name in re.findall(r"[A-Za-z_][\w]*", span)}


API_NAMES = mentioned_names(API_MD)


def undocumented(names, documented: set[str] = API_NAMES) -> list[str]:
    return sorted({n for n in names if n.rsplit(".", 1)[-1] not in documented})


@pytest.fixture(scope="module")
def schema(tmp_path_factory, django_db_blocker):
    path = tmp_path_factory.mktemp("contract") / "schema.yaml"
    with django_db_blocker.unblock():
        call_command("spectacular", "--file", str(path))
    return yaml.safe_load(path.read_text())


def operations(schema):
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            yield method.upper(), path, operation


def shape(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "{}", path)


def documented_operations(markdown: str) -> set[tuple[str, str]]:
    """Return every (METHOD, path) written as `GET/POST /path…` in the document."""
    found = set()
    for span in code_spans(markdown):
        for methods, path in re.findall(r"\b((?:GET|POST|PUT|PATCH|DELETE)(?:/(?:GET|POST|PUT|PATCH|DELETE))*) "
                                        r"(/[\w\-/{}.]*)", span):
            for method in methods.split("/"):
                found.add((method, shape(path)))
    return found


# --- operations ---------------------------------------------------------------------------------


def test_every_operation_in_the_schema_is_documented(schema):
    documented = documented_operations(API_MD)
    missing = [f"{m} {p}" for m, p, _ in operations(schema) if (m, shape(p)) not in documented]
    assert not missing, f"docs/api.md does not describe {missing}"


def test_every_documented_operation_exists(schema):
    served = {(m, shape(p)) for m, p, _ in operations(schema)}
    served |= {("POST", "/anthropic/v1/messages"), ("POST", "/anthropic/v1/messages/count_tokens")}
    stale = sorted(op for op in documented_operations(API_MD) if op not in served)
    assert not stale, f"docs/api.md describes operations the API does not have: {stale}"


def test_the_gateway_routes_are_named_in_the_reference():
    from django.urls import get_resolver
    from django.urls.resolvers import RoutePattern

    gateway = next(p for p in get_resolver().url_patterns if getattr(p, "namespace", None) == "gateway")
    # The routes it serves (the catch-all regex answers Anthropic's 404 for everything else).
    routes = {f"/{p.pattern}" for p in gateway.url_patterns if isinstance(p.pattern, RoutePattern)}
    assert routes == {"/anthropic/v1/messages", "/anthropic/v1/messages/count_tokens"}
    documented = documented_operations(API_MD)
    assert {("POST", r) for r in routes} <= documented
    assert "gateway.md" in API_MD


# --- fields and values --------------------------------------------------------------------------

# GET /api/v1/levers: each lever's own figures are documented by the schema component the
# reference names (`LeverBoardOutput`); the board, its features and the levers are named in it.
BY_REFERENCE = {("GET", "/api/v1/levers"): ("LeverBoardOutput", re.compile(r"^features\.levers\.\w+\.."))}


def properties(schema: dict, node: dict, seen: tuple = ()) -> dict[str, dict]:
    """Return every property under a schema node, nested ones as dotted paths."""
    components = schema["components"]["schemas"]
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        return {} if name in seen else properties(schema, components[name], (*seen, name))
    found: dict[str, dict] = {}
    for name, child in node.get("properties", {}).items():
        found[name] = child
        found.update({f"{name}.{k}": v for k, v in properties(schema, child, seen).items()})
    for key in ("allOf", "oneOf", "anyOf"):
        for child in node.get(key, []):
            found.update(properties(schema, child, seen))
    if "items" in node:
        found.update(properties(schema, node["items"], seen))
    return found


def enum_values(schema: dict, node: dict) -> set[str]:
    components = schema["components"]["schemas"]
    if "$ref" in node:
        node = components[node["$ref"].rsplit("/", 1)[-1]]
    values = {str(v) for v in node.get("enum", []) if v not in (None, "")}
    for child in node.get("allOf", []) + node.get("oneOf", []) + node.get("anyOf", []):
        values |= enum_values(schema, child)
    if "items" in node:
        values |= enum_values(schema, node["items"])
    return values


def test_every_request_field_parameter_and_value_is_documented(schema):
    gaps = {}
    for method, path, operation in operations(schema):
        fields: dict[str, dict] = {}
        body = operation.get("requestBody", {}).get("content", {}).get("application/json")
        if body:
            fields.update(properties(schema, body["schema"]))
        for parameter in operation.get("parameters", []):
            if parameter["in"] == "query":
                fields[parameter["name"]] = parameter["schema"]
        missing = undocumented(fields)
        values = set().union(*(enum_values(schema, f) for f in fields.values())) if fields else set()
        missing += sorted(f"value {v}" for v in values if f"`{v}`" not in API_MD)
        if missing:
            gaps[f"{method} {path}"] = missing
    assert not gaps, f"docs/api.md does not mention these request fields or values: {gaps}"


def test_every_response_field_in_the_schema_is_documented(schema):
    gaps = {}
    for method, path, operation in operations(schema):
        component, exempt = BY_REFERENCE.get((method, path), (None, None))
        if component:
            assert f"`{component}`" in API_MD, f"docs/api.md should point {method} {path} to `{component}`"
        for status, response in operation["responses"].items():
            content = response.get("content", {}).get("application/json")
            if not status.startswith("2") or not content:
                continue
            names = [n for n in properties(schema, content["schema"]) if not (exempt and exempt.match(n))]
            if missing := undocumented(names):
                gaps[f"{method} {path} {status}"] = missing
    assert not gaps, f"docs/api.md does not mention these response fields: {gaps}"


def keys_of(body: Any, prefix: str = "") -> set[str]:
    """Return every key in a JSON answer, as dotted paths; free-form objects are not walked."""
    found: set[str] = set()
    if isinstance(body, list):
        for item in body:
            found |= keys_of(item, prefix)
    elif isinstance(body, dict):
        for key, value in body.items():
            found.add(prefix + key)
            if key not in ("metadata", "details"):
                found |= keys_of(value, f"{prefix}{key}.")
    return found


def section(heading: str) -> str:
    """Return the text of the reference's section whose heading starts with ``heading``."""
    start = API_MD.index(f"\n### {heading}")
    end = API_MD.find("\n### ", start + 1)
    return API_MD[start:end if end != -1 else None]


ALLOWANCE = {"feature": "support-bot", "model": "claude-sonnet-4-5", "input_tokens": 1000, "max_tokens": 500}
USAGE = {"input_tokens": 1000, "output_tokens": 200}
# Each answer's fields must be in its own section; a budget status object's fields are
# described once, in the allowance's section, and every answer that carries one refers there.
SECTIONS = {
    "allowance granted": "`POST /api/v1/allowances`",
    "allowance denied": "`POST /api/v1/allowances`",
    "allowance replayed": "`POST /api/v1/allowances`",
    "hold": "`GET /api/v1/allowances/{id}`",
    "commit": "`POST /api/v1/allowances/{id}/commit`",
    "release": "`POST /api/v1/allowances/{id}/release`",
    "usage": "`POST /api/v1/usage`",
    "whoami": "`GET /api/v1/whoami`",
    "feature": "`GET /api/v1/features/{key}`",
    "budgets": "`GET /api/v1/budgets",
    "summary": "`GET /api/v1/usage/summary",
}


def test_every_field_of_the_answers_the_schema_leaves_open_is_documented_where_it_belongs(api, tenant, feature):
    # Given a feature with a budget, and a run through every operation whose body is a bare object
    BudgetFactory(tenant=tenant, scope="feature", feature=feature, name="Support", limit_nano=1_000_000_000)
    answers = {}
    granted = api.post("/api/v1/allowances", {**ALLOWANCE, "idempotency_key": "k1"}, format="json")
    hold = granted.json()["id"]
    answers["allowance granted"] = granted
    answers["allowance denied"] = api.post("/api/v1/allowances", {**ALLOWANCE, "max_tokens": 900_000}, format="json")
    answers["hold"] = api.get(f"/api/v1/allowances/{hold}")
    answers["commit"] = api.post(f"/api/v1/allowances/{hold}/commit", {"usage": USAGE, "request_id": "msg_1"},
                                 format="json")
    answers["allowance replayed"] = api.post("/api/v1/allowances", {**ALLOWANCE, "idempotency_key": "k1"},
                                             format="json")
    second = api.post("/api/v1/allowances", {**ALLOWANCE, "max_tokens": 10}, format="json").json()["id"]
    answers["release"] = api.post(f"/api/v1/allowances/{second}/release")
    answers["usage"] = api.post("/api/v1/usage", {"feature": "support-bot", "model": "claude-sonnet-4-5",
                                                  "request_id": "msg_2", "usage": USAGE}, format="json")
    answers["whoami"] = api.get("/api/v1/whoami")
    answers["feature"] = api.get("/api/v1/features/support-bot")
    answers["budgets"] = api.get("/api/v1/budgets")
    answers["summary"] = api.get("/api/v1/usage/summary", {"group_by": "feature,model,day,service_tier,family"})

    # Then every key of every answer is in the reference, in the answer's own section
    assert answers["allowance denied"].json()["decision"] == "denied"
    assert answers["allowance replayed"].json()["reason"] == "hold_committed"
    status_object = set(answers["allowance granted"].json()["budgets"][0])
    status_names = mentioned_names(section(SECTIONS["allowance granted"]))
    gaps = {}
    for name, response in answers.items():
        assert response.status_code < 300, (name, response.content)
        here = mentioned_names(section(SECTIONS[name]))
        missing = [
            key for key in keys_of(response.json())
            if key.rsplit(".", 1)[-1] not in here
            and not (key.rsplit(".", 1)[-1] in status_object and key.rsplit(".", 1)[-1] in status_names)
        ]
        if missing:
            gaps[f"{name} ({SECTIONS[name]})"] = sorted(missing)
    assert not gaps, f"docs/api.md does not mention these answer fields in their sections: {gaps}"


def test_every_allowance_reason_is_documented():
    from budgets.apis import denial_reason
    from budgets.models import HoldState

    def decision(state, decision="granted", windows=(), binding=frozenset()):
        granted = decision != "denied" and state == HoldState.HELD
        return SimpleNamespace(granted=granted, state=state, decision=decision, windows=list(windows),
                               binding_ids=set(binding))

    full = SimpleNamespace(id=1, budget=SimpleNamespace(limit_nano=10, limit_tokens=None), spent_nano=10,
                           reserved_nano=0, spent_tokens=0, reserved_tokens=0)
    reasons = {denial_reason(decision(state)) for state in HoldState.values}  # a replay answers the hold's state
    reasons.add(denial_reason(decision(HoldState.DENIED, "denied")))
    reasons.add(denial_reason(decision(HoldState.DENIED, "denied", [full], {1})))
    reasons.discard(None)
    assert {"budget_exhausted", "exceeds_remaining", "hold_committed"} <= reasons
    assert not [r for r in reasons if f"`{r}`" not in API_MD], sorted(reasons)


def test_every_alert_kind_and_hold_state_is_documented():
    from budgets.models import HoldState
    from governance.notify.models import AlertKind

    values = set(AlertKind.values) | set(HoldState.values)
    assert not [v for v in values if f"`{v}`" not in API_MD], sorted(values)


# --- error codes --------------------------------------------------------------------------------


def status_table(markdown: str) -> dict[str, int]:
    """Return code -> status from the reference's error table (| status | `code`, … | when |)."""
    table = {}
    for status, codes in re.findall(r"^\| (\d{3}) \| ([^|]+) \|", markdown, re.M):
        for code in re.findall(r"`(\w+)`", codes):
            table[code] = int(status)
    return table


def test_every_error_code_is_in_the_reference_with_its_status():
    table = status_table(API_MD)
    assert table == ERROR_CODES, (
        f"docs/api.md's error table and governance/api/errors.py ERROR_CODES differ: "
        f"missing {sorted(set(ERROR_CODES) - set(table))}, extra {sorted(set(table) - set(ERROR_CODES))}, "
        f"status {sorted(c for c in table if c in ERROR_CODES and table[c] != ERROR_CODES[c])}"
    )


def python_files(roots: list[str]):
    for root in roots:
        for path in sorted((ROOT / root).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if not any(part in relative for part in NOT_API):
                yield relative, ast.parse(path.read_text(), relative)


def _code_takers(trees) -> dict[str, int | None]:
    """Return the functions and classes that take an error ``code``: name -> its positional index (None: keyword)."""
    takers: dict[str, int | None] = {}
    classes: dict[str, list[str]] = {}
    for _, tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                classes[node.name] = [getattr(b, "id", getattr(b, "attr", "")) for b in node.bases]
                init = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
                if init is not None:
                    takers.update(_taker(node.name, init, skip_self=True))
            elif isinstance(node, ast.FunctionDef):
                takers.update(_taker(node.name, node, skip_self=False))
    changed = True
    while changed:  # subclasses of an error class take its code too (NotFound, Conflict, Forbidden)
        changed = False
        for name, bases in classes.items():
            inherited = next((takers[b] for b in bases if b in takers), "none")
            if name not in takers and inherited != "none":
                takers[name] = inherited
                changed = True
    return takers


def _taker(name: str, func: ast.FunctionDef, *, skip_self: bool) -> dict[str, int | None]:
    positional = [a.arg for a in func.args.posonlyargs + func.args.args][1 if skip_self else 0:]
    if "code" in positional:
        return {name: positional.index("code")}
    if "code" in [a.arg for a in func.args.kwonlyargs]:
        return {name: None}
    return {}


def raised_codes(roots: list[str]) -> dict[str, set[str]]:
    """Return every literal error code passed to a function or class that takes one: code -> where."""
    trees = list(python_files(roots))
    takers = _code_takers(trees)
    found: dict[str, set[str]] = {}
    for relative, tree in trees:
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", getattr(node.func, "attr", None))
            if name not in takers:
                continue
            index = takers[name]
            values = [k.value for k in node.keywords if k.arg == "code"]
            if index is not None and len(node.args) > index:
                values.append(node.args[index])
            for value in values:
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    found.setdefault(value.value, set()).add(f"{relative}:{node.lineno}")
    return found


def test_every_error_code_the_source_raises_is_registered():
    found = raised_codes(API_SOURCES)
    # The scan sees the codes it must: one from each way of raising them.
    assert {"unknown_feature", "model_not_allowed", "https_required", "too_large", "conflict"} <= set(found)
    unregistered = {code: sorted(where) for code, where in found.items() if code not in ERROR_CODES}
    assert not unregistered, f"error codes raised but not in ERROR_CODES (and so not in docs/api.md): {unregistered}"


def test_the_allowance_errors_answer_their_registered_status():
    from budgets.apis import ERROR_STATUS

    allowance_codes = {
        code for code, where in raised_codes(["budgets"]).items() if any("budgets/services.py" in w for w in where)
    }
    assert {"unknown_model", "feature_inactive", "unavailable", "not_found"} <= allowance_codes
    wrong = {c: ERROR_STATUS.get(c, 400) for c in allowance_codes if ERROR_STATUS.get(c, 400) != ERROR_CODES[c]}
    assert not wrong, wrong


def drf_exceptions() -> list[type[exceptions.APIException]]:
    return [
        cls for cls in vars(exceptions).values()
        if isinstance(cls, type) and issubclass(cls, exceptions.APIException)
    ]


@pytest.mark.parametrize("cls", drf_exceptions(), ids=lambda cls: cls.__name__)
def test_every_drf_exception_answers_a_registered_code(cls):
    exc = cls(wait=3) if cls is exceptions.Throttled else (
        cls("GET") if cls is exceptions.MethodNotAllowed else
        cls("text/plain") if cls is exceptions.UnsupportedMediaType else cls()
    )
    answer = exception_handler(exc, {})
    code = answer.data["error"]["code"]
    assert code in ERROR_CODES
    assert ERROR_CODES[code] == answer.status_code, (cls.__name__, code, answer.status_code)


def test_an_unforeseen_api_exception_still_answers_a_registered_code():
    class Teapot(exceptions.APIException):
        status_code = 418

    class Overloaded(exceptions.APIException):
        status_code = 502

    assert exception_handler(Teapot(), {}).data["error"]["code"] == "invalid_request"
    assert exception_handler(Overloaded(), {}).data["error"]["code"] == "internal_error"
    assert exception_handler(ApiError("x", code="conflict", status_code=409), {}).status_code == 409


def test_every_503_says_when_to_retry():
    from django.db import OperationalError

    contention = exception_handler(ApiError("Retry shortly.", code="unavailable", status_code=503), {})
    database = exception_handler(OperationalError("gone"), {})
    assert contention["Retry-After"] == "1" and database["Retry-After"] == "5"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 406, 409, 410, 413, 415, 429, 500, 502, 503])
def test_a_non_json_error_under_the_api_becomes_a_registered_code(rf, status):
    from governance.middleware import ApiErrorMiddleware

    middleware = ApiErrorMiddleware(lambda request: HttpResponse("<h1>oops</h1>", status=status))
    response = middleware(rf.get("/api/v1/whoami"))
    assert response["Content-Type"] == "application/json"
    import json

    code = json.loads(response.content)["error"]["code"]
    assert code in ERROR_CODES and response.status_code == status


# --- the gateway's errors -----------------------------------------------------------------------


def _statuses(node: ast.expr) -> list[int]:
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return [node.value]
    if isinstance(node, ast.IfExp):
        return _statuses(node.body) + _statuses(node.orelse)
    return []


def gateway_errors() -> set[tuple[int, str]]:
    """Return every (status, error.type) the gateway answers itself, from its source."""
    found = set()
    for _, tree in python_files(["gateway"]):
        for node in ast.walk(tree):
            name = getattr(getattr(node, "func", None), "id", None)
            if isinstance(node, ast.Call) and name in ("GatewayError", "error_response") and len(node.args) >= 2:
                kind = node.args[1]
                if isinstance(kind, ast.Constant) and isinstance(kind.value, str):
                    found |= {(status, kind.value) for status in _statuses(node.args[0])}
    return found


def test_every_error_the_gateway_makes_is_in_its_table():
    rows = re.findall(r"^\| ([\d, ]+) \| `(\w+)` \|", GATEWAY_MD, re.M)
    documented = {(int(s), kind) for statuses, kind in rows for s in statuses.split(",")}
    errors = gateway_errors()
    assert {(403, "budget_exceeded"), (404, "not_found_error"), (504, "api_error")} <= errors
    missing = sorted(errors - documented)
    assert not missing, f"docs/gateway.md's error table does not list {missing}"
