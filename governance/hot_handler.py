"""The WSGI handler: Django's, with the hot endpoints answered past the middleware chain.

The allowance and its commit are asked around every model call, and Django's middleware
chain around them (thirteen middlewares, each a call in and a call out) cost about a tenth
of each request's CPU (bench/hot_path_profile.py: -13 % profiled time per allowance, -9 %
per commit, once skipped) while doing nothing for them: they carry a bearer key, no cookie,
no session, no CSRF token, no static file. So a request for a hot view (one ``plain_view``
marks ``hot``) that the chain would pass through untouched goes straight to the view, and
its answer gets the headers the chain adds, from the same middleware classes
(``RESPONSE_MIDDLEWARE``). What the chain would act on instead goes through it as before:
a host ``ALLOWED_HOSTS`` refuses, plain HTTP where ``API_REQUIRE_HTTPS`` refuses it, a body
past ``DATA_UPLOAD_MAX_MEMORY_SIZE``, a refused user agent, another method, and every
other path. The view's own steps (key, rate limit, body, errors) are unchanged.

``tests/test_hot_handler.py`` sends the same requests through this handler and through
Django's own and compares the answers; it also fails when a middleware is added to
``settings.MIDDLEWARE`` that this module has not been told about.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.core.handlers.wsgi import WSGIHandler
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.common import CommonMiddleware
from django.middleware.security import SecurityMiddleware
from django.urls import Resolver404, get_resolver, set_urlconf
from django.utils.log import log_response

from governance.middleware import ApiErrorMiddleware

logger = logging.getLogger(__name__)

# The middlewares in settings.MIDDLEWARE, and what each does to a hot request (tests/test_hot_handler.py).
PASSED_THROUGH = {  # nothing, for an API request: web-only, or only for other paths or methods
    "governance.middleware.WebWhiteNoiseMiddleware", "governance.middleware.WebSessionMiddleware",
    "governance.middleware.WebAuthenticationMiddleware", "governance.middleware.WebMessageMiddleware",
    "governance.middleware.RejectNulMiddleware",  # a hot path is one of the URLconf's, free of NUL
    "django.middleware.csrf.CsrfViewMiddleware",  # every API view is CSRF-exempt, and sets no cookie
    "governance.web.auth.PasswordChangeRequiredMiddleware", "axes.middleware.AxesMiddleware",  # sign-in only
}
CHECKED_FIRST = {  # what they refuse goes through the chain (``_chain_acts``)
    "governance.middleware.ApiHttpsMiddleware", "governance.middleware.ApiErrorMiddleware",
}
# Their process_response, innermost first (the chain's order on the way out).
RESPONSE_MIDDLEWARE = (XFrameOptionsMiddleware, CommonMiddleware, SecurityMiddleware)
KNOWN_MIDDLEWARE = PASSED_THROUGH | CHECKED_FIRST | {
    f"{m.__module__}.{m.__name__}" for m in RESPONSE_MIDDLEWARE
}
# Every hot view's URL starts so (tests/test_hot_handler.py); other paths are not even resolved twice.
HOT_PREFIX = "/api/v1/allowances"


def _unused(request: HttpRequest) -> HttpResponse:
    raise AssertionError("response-only middleware called as a view")


class HotPathHandler(WSGIHandler):
    """Django's WSGIHandler; requests for hot views skip the middleware chain (module docstring)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._outbound: list[Any] = [m(_unused) for m in RESPONSE_MIDDLEWARE]
        self._errors = ApiErrorMiddleware(_unused)
        # SecurityMiddleware redirects to HTTPS what its exemptions do not cover; /api/ is exempt.
        self._redirect_exempt = [re.compile(r) for r in settings.SECURE_REDIRECT_EXEMPT]

    def get_response(self, request: HttpRequest) -> HttpResponseBase:
        match = self._hot_match(request)
        if match is None:
            return super().get_response(request)
        set_urlconf(settings.ROOT_URLCONF)
        request.resolver_match = match
        response: Any
        try:
            response = match.func(request, *match.args, **match.kwargs)
            if callable(getattr(response, "render", None)):  # a DRF Response (the view's fallback)
                response = response.render()
        except Exception as exc:  # what ApiErrorMiddleware answers for the chain: a JSON 500 or 503
            response = self._errors.process_exception(request, exc)
        x_frame, common, security = self._outbound
        response = common.process_response(request, x_frame.process_response(request, response))
        if response.status_code >= 400 and not response.get("Content-Type", "").startswith("application/json"):
            response = self._errors.json_for(response)  # ApiErrorMiddleware, on the way out
        response = security.process_response(request, response)
        response._resource_closers.append(request.close)
        if response.status_code >= 400:
            log_response("%s: %s", response.reason_phrase, request.path, response=response, request=request)
        return response

    def _hot_match(self, request: HttpRequest):
        """Return the URL match of a hot view the chain would pass this request to untouched, or None."""
        path = request.path_info
        if request.method != "POST" or not path.startswith(HOT_PREFIX) or self._chain_acts(request):
            return None
        try:
            match = get_resolver().resolve(path)
        except Resolver404:
            return None
        return match if getattr(match.func, "hot", False) else None

    def _chain_acts(self, request: HttpRequest) -> bool:
        """Return whether a middleware would answer or change this request itself."""
        try:
            request.get_host()  # CommonMiddleware: ALLOWED_HOSTS
        except DisallowedHost:
            return True
        meta = request.META
        if settings.DISALLOWED_USER_AGENTS:
            return True  # CommonMiddleware's refusals; no deployment here sets any
        if settings.API_REQUIRE_HTTPS and not request.is_secure():
            return True  # ApiHttpsMiddleware: 403 https_required
        if settings.SECURE_SSL_REDIRECT and not request.is_secure():
            path = request.path.lstrip("/")
            if not any(pattern.search(path) for pattern in self._redirect_exempt):
                return True  # SecurityMiddleware would redirect
        try:
            length = int(meta.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return True
        max_size = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return max_size is not None and length > max_size  # ApiErrorMiddleware: 413
