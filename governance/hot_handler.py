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

A plain request for a hot view (``governance.api.plain.is_plain``: a JSON POST) is also
answered without the work Django's ``WSGIHandler.__call__`` does around every request
(``HotPathHandler.__call__``): its route is matched on the raw path by the hot views' own
patterns instead of walking the URL resolver, and what the request signals' receivers do
(Django's own, and only those: otherwise the signals are sent) is done for the one
database connection directly instead of by dispatching ``request_started`` and
``request_finished`` (about a fifth of the Python work of an allowance, profiled under
load: bench/README.md).

``tests/test_hot_handler.py`` sends the same requests through this handler and through
Django's own and compares the answers; it also fails when a middleware is added to
``settings.MIDDLEWARE`` that this module has not been told about.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from contextlib import suppress
from functools import partial
from typing import Any

from django import db
from django.conf import settings
from django.core import cache, signals
from django.core.cache.backends.base import BaseCache
from django.core.exceptions import DisallowedHost
from django.core.handlers import base
from django.core.handlers.wsgi import WSGIHandler
from django.db import DEFAULT_DB_ALIAS, connections
from django.dispatch import Signal
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.common import CommonMiddleware
from django.middleware.security import SecurityMiddleware
from django.urls import Resolver404, URLPattern, URLResolver, get_resolver, set_urlconf
from django.urls.converters import StringConverter
from django.utils.log import log_response
from django.utils.module_loading import import_string

from governance.api.plain import is_plain
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


# What Django connects to the request signals; the bare path does their work itself only while
# these, and nothing else, are connected.
STARTED_RECEIVERS = (db.reset_queries, db.close_old_connections)
FINISHED_RECEIVERS = (db.close_old_connections, cache.close_caches, base.reset_urlconf)


def _unused(request: HttpRequest) -> HttpResponse:
    raise AssertionError("response-only middleware called as a view")


def _receiver_keys(signal: Signal) -> list:
    return [entry[0] for entry in signal.receivers]


def _connected(signal: Signal, receivers: tuple) -> list | None:
    """Return the signal's receiver keys when exactly ``receivers`` are connected to it, else None.

    In any order: a receiver disconnected and connected again (as Django's test tools do) comes last.
    """
    live = [entry[1]() for entry in signal.receivers]
    return _receiver_keys(signal) if len(live) == len(receivers) and set(live) == set(receivers) else None


def hot_routes() -> list[tuple[re.Pattern, Callable]]:
    """Return each hot view's full path as a regex on the raw PATH_INFO, with the view.

    Taken from the URLconf: a route whose parameters are not all ``str`` (no conversion)
    is left to the resolver.
    """
    routes = []

    def walk(patterns, prefix: str) -> None:
        for p in patterns:
            regex = p.pattern.regex.pattern.lstrip("^")
            if isinstance(p, URLResolver):
                walk(p.url_patterns, prefix + regex)
            elif isinstance(p, URLPattern) and getattr(p.callback, "hot", False):
                converters = getattr(p.pattern, "converters", {})
                if all(type(c) is StringConverter for c in converters.values()):
                    routes.append((re.compile("/" + prefix + regex), p.callback))

    walk(get_resolver().url_patterns, "")
    return routes


class HotPathHandler(WSGIHandler):
    """Django's WSGIHandler; requests for hot views skip the middleware chain (module docstring)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._outbound: list[Any] = [m(_unused) for m in RESPONSE_MIDDLEWARE]
        self._outbound_added: dict[tuple, list[tuple[str, tuple[str, str] | None]]] = {}  # _add_outbound_headers
        self._errors = ApiErrorMiddleware(_unused)
        # SecurityMiddleware redirects to HTTPS what its exemptions do not cover; /api/ is exempt.
        self._redirect_exempt = [re.compile(r) for r in settings.SECURE_REDIRECT_EXEMPT]
        self._routes = hot_routes()
        self._started_keys = _connected(signals.request_started, STARTED_RECEIVERS)
        self._finished_keys = _connected(signals.request_finished, FINISHED_RECEIVERS)
        # The receivers' work is done for one connection: there is only the default one.
        self._one_database = list(settings.DATABASES) == [DEFAULT_DB_ALIAS]
        # cache.close_caches closes each cache this thread used; Django's locmem and Redis caches
        # (and so this project's) have nothing to close, and finding them costs a few microseconds.
        self._close_caches = any(
            import_string(params["BACKEND"]).close is not BaseCache.close for params in settings.CACHES.values()
        )

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> HttpResponseBase:
        route = self._bare_route(environ)
        if route is None:
            return super().__call__(environ, start_response)
        view, kwargs = route
        # WSGIHandler.__call__, with request_started's receivers' work done directly. The
        # script prefix stays "/" (SCRIPT_NAME is empty), as every request here sets it.
        connection = connections[DEFAULT_DB_ALIAS]
        connection.queries_log.clear()  # db.reset_queries
        connection.close_if_unusable_or_obsolete()  # db.close_old_connections
        request = self.request_class(environ)
        if self._chain_acts(request):
            response = super().get_response(request)
        else:
            response = self._answer(request, view, kwargs)
        response._handler_class = self.__class__  # type: ignore[attr-defined]
        response.close = partial(self._finish, response)  # type: ignore[method-assign]
        # response.items(), without a lookup per header through the case-insensitive mapping
        headers = [*response.headers._store.values(), *(("Set-Cookie", c.output(header="")) for c in response.cookies.values())]
        start_response(f"{response.status_code} {response.reason_phrase}", headers)
        return response

    def _bare_route(self, environ: dict[str, Any]) -> tuple[Callable, dict[str, str]] | None:
        """Return the hot view and its arguments for a plain request the bare path may answer, or None."""
        path = environ.get("PATH_INFO", "")
        if (
            not path.startswith(HOT_PREFIX) or not path.isascii() or environ.get("SCRIPT_NAME")
            or settings.FORCE_SCRIPT_NAME is not None or not self._one_database or not is_plain(environ)
            or _receiver_keys(signals.request_started) != self._started_keys
            or _receiver_keys(signals.request_finished) != self._finished_keys
        ):
            return None
        for regex, view in self._routes:
            match = regex.fullmatch(path)
            if match is not None:
                return view, match.groupdict()
        return None

    def _finish(self, response: HttpResponseBase) -> None:
        """HttpResponseBase.close, with request_finished's receivers' work done directly."""
        closers: list = response._resource_closers  # type: ignore[attr-defined]
        for closer in closers:
            with suppress(Exception):  # as HttpResponseBase.close
                closer()
        closers.clear()
        response.closed = True
        connections[DEFAULT_DB_ALIAS].close_if_unusable_or_obsolete()  # db.close_old_connections
        if self._close_caches:
            cache.close_caches()
        set_urlconf(None)  # base.reset_urlconf (the chain's get_response sets it)

    def get_response(self, request: HttpRequest) -> HttpResponseBase:
        match = self._hot_match(request)
        if match is None:
            return super().get_response(request)
        set_urlconf(settings.ROOT_URLCONF)
        request.resolver_match = match
        return self._answer(request, match.func, match.kwargs)

    def _answer(self, request: HttpRequest, view: Callable, kwargs: dict[str, Any]) -> HttpResponseBase:
        """Call a hot view, then the response hooks of the middlewares the chain would run."""
        response: Any
        try:
            response = view(request, **kwargs)
            if callable(getattr(response, "render", None)):  # a DRF Response (the view's fallback)
                response = response.render()
        except Exception as exc:  # what ApiErrorMiddleware answers for the chain: a JSON 500 or 503
            response = self._errors.process_exception(request, exc)
        if type(response) is HttpResponse and response.status_code < 400 and not response.cookies:
            self._add_outbound_headers(request, response)
        else:
            x_frame, common, security = self._outbound
            response = common.process_response(request, x_frame.process_response(request, response))
            if response.status_code >= 400 and not response.get("Content-Type", "").startswith("application/json"):
                response = self._errors.json_for(response)  # ApiErrorMiddleware, on the way out
            response = security.process_response(request, response)
        response._resource_closers.append(request.close)
        if response.status_code >= 400:
            log_response("%s: %s", response.reason_phrase, request.path, response=response, request=request)
        return response

    def _add_outbound_headers(self, request: HttpRequest, response: HttpResponse) -> None:
        """Add to a successful answer without cookies the headers the response hooks would add.

        To such an answer they only add headers, each decided by the headers it already has,
        the settings and (for HSTS) whether the request is secure; only Content-Length is the
        answer's own. So the hooks run on the first answer of each kind, and the next ones get
        the headers they added then, in the same order.
        """
        x_frame, common, security = self._outbound
        store = response.headers._store
        kind = (
            tuple(store), getattr(response, "xframe_options_exempt", False),
            getattr(settings, "X_FRAME_OPTIONS", "DENY"),  # read by XFrameOptionsMiddleware on every answer
            bool(security.sts_seconds) and request.is_secure(),
        )
        added = self._outbound_added.get(kind)
        if added is None:
            before = set(store)
            security.process_response(request, common.process_response(request, x_frame.process_response(request, response)))
            self._outbound_added[kind] = [(name, None if name == "content-length" else header)
                                          for name, header in store.items() if name not in before]
            return
        for name, header in added:
            store[name] = header or ("Content-Length", str(len(response.content)))

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
