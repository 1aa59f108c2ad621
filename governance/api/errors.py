"""The contract's error format, for every error an API request can meet."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied
from django.db import InterfaceError, OperationalError
from django.http import Http404, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import set_rollback

logger = logging.getLogger(__name__)

# Every code an API error can carry, with its status: the contract's table (docs/api.md,
# Conventions), kept honest by tests/test_docs_contract.py. A new code goes here first.
ERROR_CODES: dict[str, int] = {
    "invalid_request": 400,
    "unknown_feature": 400,
    "unknown_model": 400,
    "model_not_allowed": 400,
    "feature_inactive": 400,
    "unauthenticated": 401,
    "forbidden": 403,
    "https_required": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "not_acceptable": 406,
    "conflict": 409,
    "too_large": 413,
    "unsupported_media_type": 415,
    "rate_limited": 429,
    "internal_error": 500,
    "unavailable": 503,
}
# The code an answer of a status gets when nothing more specific is known.
_CODE_FOR_STATUS = {
    400: "invalid_request", 401: "unauthenticated", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 406: "not_acceptable", 409: "conflict", 413: "too_large",
    415: "unsupported_media_type", 429: "rate_limited", 503: "unavailable",
}


def code_for_status(status_code: int) -> str:
    """Return the contract's code for an error of this status that carries none of its own."""
    if status_code in _CODE_FOR_STATUS:
        return _CODE_FOR_STATUS[status_code]
    return "internal_error" if status_code >= 500 else "invalid_request"


class ApiError(exceptions.APIException):
    """An error with a contract code, a message and details."""

    status_code: int = status.HTTP_400_BAD_REQUEST
    default_code = "invalid_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status_code: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.error_code = code or self.default_code
        if status_code is not None:
            self.status_code = status_code
        self.details = details or {}


class NotFound(ApiError):
    status_code = status.HTTP_404_NOT_FOUND
    default_code = "not_found"


class Conflict(ApiError):
    status_code = status.HTTP_409_CONFLICT
    default_code = "conflict"


class Forbidden(ApiError):
    status_code = status.HTTP_403_FORBIDDEN
    default_code = "forbidden"


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or {}}}


def json_error(status_code: int, code: str, message: str, details=None, headers=None) -> JsonResponse:
    response = JsonResponse(error_body(code, message, details), status=status_code)
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def _flatten(detail: Any) -> Any:
    if isinstance(detail, dict):
        return {str(k): _flatten(v) for k, v in detail.items()}
    if isinstance(detail, list):
        return [_flatten(v) for v in detail]
    return str(detail)


def _validation_message(details: dict[str, Any]) -> str:
    names = ", ".join(sorted(details)) if isinstance(details, dict) else ""
    return f"Invalid request: check {names}." if names else "Invalid request."


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Render every exception raised in an API view as the contract's error body."""
    headers: dict[str, str] = {}
    if isinstance(exc, ApiError):
        set_rollback()
        # Every 503 says when to retry (an allowance or commit that lost a race several times).
        retry = {"Retry-After": "1"} if exc.status_code == status.HTTP_503_SERVICE_UNAVAILABLE else None
        return Response(error_body(exc.error_code, str(exc.detail), exc.details), status=exc.status_code,
                        headers=retry)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, (OperationalError, InterfaceError)):
        logger.exception("database unavailable")
        set_rollback()
        return Response(
            error_body("unavailable", "The database is unreachable; retry shortly."),
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "5"},
        )

    if not isinstance(exc, exceptions.APIException):
        return None  # a real bug: ApiErrorMiddleware turns it into a JSON 500

    set_rollback()
    # Only some APIException subclasses carry these (NotAuthenticated, Throttled).
    auth_header = getattr(exc, "auth_header", None)
    if auth_header:
        headers["WWW-Authenticate"] = auth_header
    wait = getattr(exc, "wait", None)
    if wait:
        headers["Retry-After"] = str(int(wait) + (0 if float(wait).is_integer() else 1))

    if isinstance(exc, exceptions.ValidationError):
        details = _flatten(exc.detail)
        if not isinstance(details, dict):
            details = {"non_field_errors": details}
        return Response(
            error_body("invalid_request", _validation_message(details), details),
            status=400,
            headers=headers,
        )
    code_by_class: list[tuple[type, str, int]] = [
        (exceptions.ParseError, "invalid_request", 400),
        (exceptions.NotAuthenticated, "unauthenticated", 401),
        (exceptions.AuthenticationFailed, "unauthenticated", 401),
        (exceptions.PermissionDenied, "forbidden", 403),
        (exceptions.NotFound, "not_found", 404),
        (exceptions.MethodNotAllowed, "method_not_allowed", 405),
        (exceptions.NotAcceptable, "not_acceptable", 406),
        (exceptions.UnsupportedMediaType, "unsupported_media_type", 415),
        (exceptions.Throttled, "rate_limited", 429),
    ]
    for cls, code, status_code in code_by_class:
        if isinstance(exc, cls):
            return Response(
                error_body(code, str(exc.detail)), status=status_code, headers=headers
            )
    # Another APIException (a subclass DRF or a library adds): still one of the contract's codes.
    return Response(error_body(code_for_status(exc.status_code), str(exc.detail)), status=exc.status_code,
                    headers=headers)
