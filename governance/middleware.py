"""Keep /api/ answers in the contract's JSON error format, even outside DRF views; keep the web UI's middleware off /api/."""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.conf import settings
from django.contrib.auth.middleware import AuthenticationMiddleware
from django.contrib.messages.middleware import MessageMiddleware
from django.contrib.sessions.middleware import SessionMiddleware
from django.core.exceptions import RequestDataTooBig
from django.db import InterfaceError, OperationalError
from django.http import HttpResponse, HttpResponseBadRequest
from whitenoise.middleware import WhiteNoiseMiddleware

from governance.api.errors import code_for_status, json_error
from governance.api.parsers import unfit_char

logger = logging.getLogger(__name__)


def is_api(request) -> bool:
    return request.path.startswith("/api/")


class WebOnly:
    """Mixed into a middleware of the web UI's: /api/ requests go past it untouched.

    An API call carries a bearer key and never a cookie: it has no session, no signed-in
    user, no flash messages and no static file to find (CSRF's middleware stays Django's
    own, which ``check --deploy`` looks for; every API view is CSRF-exempt). Running those middlewares anyway cost every API request about 0.15 ms of
    CPU (bench/hot_path_profile.py), a third of Django's whole stack around a view. Every
    other request gets the middleware exactly as it is.
    """

    get_response: Callable

    def __call__(self, request):
        if is_api(request):
            return self.get_response(request)  # in async mode, the awaitable the caller awaits
        return super().__call__(request)  # type: ignore[misc]


class WebWhiteNoiseMiddleware(WebOnly, WhiteNoiseMiddleware):
    pass


class WebSessionMiddleware(WebOnly, SessionMiddleware):
    pass


class WebAuthenticationMiddleware(WebOnly, AuthenticationMiddleware):
    pass


class WebMessageMiddleware(WebOnly, MessageMiddleware):
    pass


class RejectNulMiddleware:
    """Answer 400 to a URL holding U+0000 or a lone surrogate, naming where.

    No path or parameter here has one, and PostgreSQL refuses NUL in any query (a surrogate
    cannot even be encoded), so either would otherwise end as a 500 wherever it reached one.
    Request bodies get the same check in the API's JSON parser.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        where = ["path"] if unfit_char(request.path) else []
        if request.META.get("QUERY_STRING"):  # most calls have none: no QueryDict to build
            where += [
                name for name, values in request.GET.lists() if unfit_char(name) or any(map(unfit_char, values))
            ]
        if not where:
            return self.get_response(request)
        message = "The URL must not contain the NUL character or a lone UTF-16 surrogate."
        if is_api(request):
            details = {_escaped(name): [message] for name in where}
            return json_error(400, "invalid_request", message, details)
        return HttpResponseBadRequest(message)


def _escaped(name: str) -> str:
    return "".join(f"\\u{ord(c):04x}" if unfit_char(c) else c for c in name)


class ApiHttpsMiddleware:
    """Refuse a plain-HTTP API call with a JSON 403 ``https_required`` (API_REQUIRE_HTTPS).

    SecurityMiddleware redirects the web UI to HTTPS, but not /api/ (SECURE_REDIRECT_EXEMPT):
    a client would follow a 301 with its key already sent in clear, and most turn a
    redirected POST into a GET. A refusal that names the HTTPS URL tells the operator what
    to fix. With API_REQUIRE_HTTPS off, plain-HTTP API calls are served (a private network
    where nothing else can listen).
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if is_api(request) and settings.API_REQUIRE_HTTPS and not request.is_secure():
            url = f"https://{request.get_host()}{request.get_full_path()}"
            return json_error(
                403,
                "https_required",
                f"This API is served over HTTPS only: call {url}",
                {"url": url},
            )
        return self.get_response(request)


class ApiErrorMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if is_api(request):
            try:
                # Reading the body here enforces DATA_UPLOAD_MAX_MEMORY_SIZE; DRF then
                # parses the buffered copy.
                request.body  # noqa: B018
            except RequestDataTooBig:
                return json_error(413, "too_large", "The request body is over the 1 MiB limit.")
        response = self.get_response(request)
        if is_api(request) and response.status_code >= 400 and not response.get(
            "Content-Type", ""
        ).startswith("application/json"):
            return self.json_for(response)
        return response

    def json_for(self, response):
        """Return the contract's JSON error for a response Django or a library rendered otherwise."""
        status = response.status_code
        messages = {
            404: "No such endpoint or object.",
            405: "Method not allowed on this endpoint.",
            400: "Bad request.",
            403: "Forbidden.",
        }
        if status >= 500:
            return json_error(status, "internal_error", "Internal error; it has been logged.")
        return json_error(status, code_for_status(status), messages.get(status, "Request failed."))

    def process_exception(self, request, exception):
        if isinstance(exception, (OperationalError, InterfaceError)):
            logger.exception("database error on %s", request.path)
            if is_api(request):
                return json_error(503, "unavailable", "The database is unreachable; retry shortly.",
                                  headers={"Retry-After": "5"})
            # Plain text: a page template would reach for the database again.
            return HttpResponse("The database is unreachable; retry in a few seconds.", status=503,
                                content_type="text/plain; charset=utf-8", headers={"Retry-After": "5"})
        if not is_api(request):
            return None
        logger.exception("unhandled error on %s", request.path)
        return json_error(500, "internal_error", "Internal error; it has been logged.")
