"""The OpenAPI description: tags from the path, and every error an operation can answer.

Views declare their success bodies (``extend_schema``); the errors come from the layers
every /api/v1 view shares (authentication, the rate limit, the JSON parser, the error
middleware), so they are added here, once, for every operation they apply to. The
reference they follow is docs/api.md.
"""

from __future__ import annotations

import re
from typing import Any

from drf_spectacular.openapi import AutoSchema
from rest_framework import serializers

# The order of the tags is the order of the documentation: the allowance flow first.
TAGS: list[dict[str, str]] = [
    {
        "name": "allowances",
        "description": "Ask before a model call (a hold priced at its worst case), then commit "
        "what it used or release it. Service keys.",
    },
    {"name": "usage", "description": "Report usage that had no hold (batch results). Service keys."},
    {
        "name": "reads",
        "description": "Features' policies, budgets' status, spend, the lever board and the "
        "reconciliation. Service and admin keys.",
    },
    {
        "name": "management",
        "description": "Features, budgets, keys, alert channels, alerts and the provider "
        "connection. Admin keys.",
    },
]
TAG_ORDER = {tag["name"]: index for index, tag in enumerate(TAGS)}

# (methods, path pattern, tag); the first match wins, anything else is management.
TAG_RULES: list[tuple[set[str], re.Pattern[str], str]] = [
    ({"GET", "POST"}, re.compile(r"^/api/v1/allowances(/|$)"), "allowances"),
    ({"POST"}, re.compile(r"^/api/v1/usage$"), "usage"),
    # Every read a service key may make (docs/api.md, Reads).
    (
        {"GET"},
        re.compile(r"^/api/v1/(whoami|features(/\{[^}]+\})?|budgets(/\{[^}]+\})?|usage/summary|levers|reconciliation)$"),
        "reads",
    ),
]

# Within a tag, the flow's order rather than the alphabet's.
FLOW = [
    "/api/v1/allowances",
    "/api/v1/allowances/{hold_id}/commit",
    "/api/v1/allowances/{hold_id}/release",
    "/api/v1/allowances/{hold_id}",
    "/api/v1/usage",
    "/api/v1/whoami",
    "/api/v1/features/{key}",
]
METHOD_ORDER = {"GET": 0, "POST": 1, "PUT": 2, "PATCH": 3, "DELETE": 4}

# Operations that can answer 409 (docs/api.md, Errors), and 404s that do not come from a
# path parameter (a singleton that may not exist yet).
CONFLICTS: set[tuple[str, str]] = {
    ("POST", "/api/v1/allowances"),
    ("POST", "/api/v1/allowances/{hold_id}/commit"),
    ("POST", "/api/v1/allowances/{hold_id}/release"),
    ("POST", "/api/v1/usage"),
    ("POST", "/api/v1/features"),
    ("PATCH", "/api/v1/features/{key}"),
    ("DELETE", "/api/v1/features/{key}"),
}
# The provider connection is a singleton: every verb but the PUT that creates it is a 404
# while the tenant has none.
NOT_FOUND_WITHOUT_PATH_PARAMETER = re.compile(r"^/api/v1/provider-connection(/|$)")

RETRY_AFTER = {
    "Retry-After": {
        "schema": {"type": "integer"},
        "description": "Seconds to wait before retrying.",
    }
}
ERRORS: dict[int, str] = {
    400: "`invalid_request`: malformed JSON, wrong types, out-of-range or unknown values "
    "(`details` names the fields); `unknown_feature`, `unknown_model`, `model_not_allowed`, "
    "`feature_inactive` where a feature or model is named.",
    401: "`unauthenticated`: a missing, malformed, revoked or unknown key.",
    403: "`forbidden`: the key's role or feature restriction does not permit this; "
    "`https_required`: a plain-HTTP call while `API_REQUIRE_HTTPS` is on.",
    404: "`not_found`: no such object for this tenant (another tenant's objects look the same).",
    406: "`not_acceptable`: the `Accept` header excludes `application/json`.",
    409: "`conflict`: an idempotency key or request id reused with a different body, or a "
    "state that does not allow this (see docs/api.md).",
    413: "`too_large`: a body over 1 MiB, or over 1,000 events in a batch.",
    415: "`unsupported_media_type`: a body that is not `application/json`.",
    429: "`rate_limited`: over the key's request rate (`API_RATE_LIMIT`).",
    503: "`unavailable`: the database is unreachable or too slow; retry after `Retry-After`.",
}


class ErrorObject(serializers.Serializer):
    code = serializers.CharField(help_text="Stable machine-readable code, e.g. `invalid_request`")
    message = serializers.CharField(help_text="What went wrong, for a person")
    details = serializers.DictField(help_text="Where: the fields or values at fault (may be empty)")


class Error(serializers.Serializer):
    """The contract's error envelope."""

    error = ErrorObject()


def tag_for(method: str, path: str) -> str:
    for methods, pattern, tag in TAG_RULES:
        if method in methods and pattern.search(path):
            return tag
    return "management"


def sort_operations(endpoint: tuple[str, str, str, Any]) -> tuple:
    """Order operations by tag, then the allowance flow, then path and method."""
    path, _, method, _ = endpoint
    flow = FLOW.index(path) if path in FLOW else len(FLOW)
    return TAG_ORDER[tag_for(method, path)], flow, path, METHOD_ORDER.get(method, 9)


def describe_tags(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Postprocessing hook: list the tags, in the documentation's order, with what they hold."""
    result["tags"] = TAGS
    return result


class ComptrollerAutoSchema(AutoSchema):
    def get_tags(self) -> list[str]:
        return [tag_for(self.method, self.path)]

    def get_operation(self, path, path_regex, path_prefix, method, registry):
        operation = super().get_operation(path, path_regex, path_prefix, method, registry)
        if operation is not None and path.startswith("/api/v1/"):
            responses = operation["responses"]
            for status in sorted(self._error_statuses(operation)):
                responses.setdefault(str(status), self._error_response(status))
        return operation

    def _error_statuses(self, operation: dict[str, Any]) -> set[int]:
        # Every call passes the HTTPS rule, authentication, the rate limit and the database.
        statuses = {403, 406, 503}
        if operation.get("security"):
            statuses.add(401)
        if getattr(self.view, "throttle_classes", None):
            statuses.add(429)
        # Any parameter can carry a value the API refuses (a NUL anywhere in the URL, too).
        if operation.get("parameters") or "requestBody" in operation:
            statuses.add(400)
        if "requestBody" in operation:
            statuses.add(415)
        if self.method in {"POST", "PUT", "PATCH"}:
            statuses |= {400, 413}
        key = (self.method, self.path)
        if "{" in self.path or (
            self.method != "PUT" and NOT_FOUND_WITHOUT_PATH_PARAMETER.match(self.path)
        ):
            statuses.add(404)
        if key in CONFLICTS:
            statuses.add(409)
        return statuses

    def _error_response(self, status: int) -> dict[str, Any]:
        component = self.resolve_serializer(Error, "response")
        response: dict[str, Any] = {
            "description": ERRORS[status],
            "content": {"application/json": {"schema": component.ref}},
        }
        if status in (429, 503):
            response["headers"] = RETRY_AFTER
        return response
