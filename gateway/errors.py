"""Answers the gateway makes itself, in the Anthropic Messages API's error shape.

``{"type": "error", "error": {"type": …, "message": …}}``, so an SDK raises its usual
exception with our message. Every one carries ``x-should-retry: false`` unless a retry can
help (the Anthropic SDKs honour it), and its status is one the SDKs do not retry anyway
(they retry 408, 409, 429 and 5xx): a budget denial is a 403 ``budget_exceeded``, never a
429 that a client would retry with backoff until the window resets.
"""

from __future__ import annotations

import json

from django.http import HttpResponse

DECISION_HEADER = "x-comptroller-decision"


class GatewayError(Exception):
    """A request the gateway answers itself, without forwarding it."""

    def __init__(
        self, status: int, kind: str, message: str, *, retry: bool = False, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.retry = retry
        self.headers = headers or {}

    def response(self) -> HttpResponse:
        return error_response(self.status, self.kind, self.message, retry=self.retry, headers=self.headers)


def error_response(
    status: int, kind: str, message: str, *, retry: bool = False, headers: dict[str, str] | None = None
) -> HttpResponse:
    body = json.dumps({"type": "error", "error": {"type": kind, "message": message}})
    response = HttpResponse(body, status=status, content_type="application/json")
    response[DECISION_HEADER] = "error"
    response["x-should-retry"] = "true" if retry else "false"
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def invalid(message: str) -> GatewayError:
    return GatewayError(400, "invalid_request_error", message)


def not_found(path: str) -> HttpResponse:
    return error_response(404, "not_found_error", f"No such endpoint: {path}. The gateway serves "
                          "POST /anthropic/v1/messages and POST /anthropic/v1/messages/count_tokens.")
