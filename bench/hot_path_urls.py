"""The app's URLs plus one constant view under /api/, for ``hot_path_profile.py`` to measure the stack around a view."""

from __future__ import annotations

from django.http import HttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from governance.urls import handler400, handler403, handler404, handler500
from governance.urls import urlpatterns as app_patterns

__all__ = ["handler400", "handler403", "handler404", "handler500", "urlpatterns"]

CONSTANT = b'{"granted":true}'


@csrf_exempt  # as the plain views are: bearer keys, no cookies
def constant(request):
    """Answer a constant: what the middleware, URL resolution and the handler cost alone."""
    return HttpResponse(CONSTANT, status=201, content_type="application/json")


# First, as the allowance is: resolved at once.
urlpatterns = [path("api/v1/bench-constant", constant), *app_patterns]
