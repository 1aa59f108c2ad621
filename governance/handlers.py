"""Error views: the contract's JSON under /api/, the site's templates everywhere else.

Django calls these when a URL does not resolve or a view raises before a response
exists. Under /api/ they never render a template: a template links static files, and a
missing static manifest (or any template error) would turn a 404 into a 500.
"""

from __future__ import annotations

from django.views import defaults

from governance.api.errors import json_error
from governance.middleware import is_api


def bad_request(request, exception):
    if is_api(request):
        return json_error(400, "invalid_request", "Bad request.")
    return defaults.bad_request(request, exception)


def permission_denied(request, exception):
    if is_api(request):
        return json_error(403, "forbidden", "Forbidden.")
    return defaults.permission_denied(request, exception)


def page_not_found(request, exception):
    if is_api(request):
        return json_error(404, "not_found", "No such endpoint or object.")
    return defaults.page_not_found(request, exception)


def server_error(request):
    if is_api(request):
        return json_error(500, "internal_error", "Internal error; it has been logged.")
    return defaults.server_error(request)
