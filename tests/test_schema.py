"""The OpenAPI description: grouped by tags, allowance flow first, every error documented."""

from __future__ import annotations

import re

import pytest
import yaml
from django.core.management import call_command

from governance.api.schema import TAGS

ERROR_REF = "#/components/schemas/Error"


@pytest.fixture(scope="module")
def schema(tmp_path_factory, django_db_blocker):
    path = tmp_path_factory.mktemp("schema") / "schema.yaml"
    with django_db_blocker.unblock():
        # --fail-on-warn: a view whose bodies drf-spectacular cannot work out fails here.
        call_command("spectacular", "--fail-on-warn", "--validate", "--file", str(path))
    return yaml.safe_load(path.read_text())


def operations(schema):
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            yield method.upper(), path, operation


def test_tags_in_order_with_the_allowance_flow_first(schema):
    assert [tag["name"] for tag in schema["tags"]] == ["allowances", "usage", "reads", "management"]
    assert [tag["name"] for tag in TAGS] == [tag["name"] for tag in schema["tags"]]
    listed = [(method, path) for method, path, _ in operations(schema)]
    assert listed[:5] == [
        ("POST", "/api/v1/allowances"),
        ("POST", "/api/v1/allowances/{hold_id}/commit"),
        ("POST", "/api/v1/allowances/{hold_id}/release"),
        ("GET", "/api/v1/allowances/{hold_id}"),
        ("POST", "/api/v1/usage"),
    ]
    tags = {(method, path): op["tags"] for method, path, op in operations(schema)}
    assert tags[("GET", "/api/v1/features/{key}")] == ["reads"]
    assert tags[("PATCH", "/api/v1/features/{key}")] == ["management"]
    assert tags[("GET", "/api/v1/levers")] == ["reads"]
    assert all(len(t) == 1 and t[0] in {"allowances", "usage", "reads", "management"} for t in tags.values())


def test_every_operation_documents_the_errors_it_can_answer(schema):
    for method, path, operation in operations(schema):
        responses = operation["responses"]
        expected = {"401", "403", "406", "429", "503"}
        if method in {"POST", "PUT", "PATCH"}:
            expected |= {"400", "413"}
        if "{" in path:
            expected |= {"400", "404"}
        assert expected <= set(responses), (method, path, sorted(responses))
        for status in expected:
            assert responses[status]["content"]["application/json"]["schema"] == {"$ref": ERROR_REF}
        assert "Retry-After" in responses["429"]["headers"]
        assert "Retry-After" in responses["503"]["headers"]
    allowance = schema["paths"]["/api/v1/allowances"]["post"]["responses"]
    assert {"200", "201", "409", "415"} <= set(allowance)
    error = schema["components"]["schemas"]["ErrorObject"]
    assert set(error["required"]) == {"code", "message", "details"}


def test_description_points_inside_the_repository(schema):
    assert "docs/api.md" in schema["info"]["description"]
    assert "CONTRACT" not in schema["info"]["description"]


def test_the_api_reference_covers_every_path(schema):
    from pathlib import Path

    reference = (Path(__file__).resolve().parent.parent / "docs" / "api.md").read_text()
    documented = {re.sub(r"\{[^}]+\}", "{}", p) for p in re.findall(r"/api/v1/[\w\-/{}]+", reference)}
    missing = [p for p in schema["paths"] if re.sub(r"\{[^}]+\}", "{}", p) not in documented]
    assert not missing, f"docs/api.md does not describe {missing}"
