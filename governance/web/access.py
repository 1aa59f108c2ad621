"""Who may see a tenant page: members only (others get 404), and the role each page needs (403)."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from governance.models import Role
from governance.selectors import membership_get, memberships_for_user

SESSION_TENANT = "web_tenant"


def tenant_page(role: str = Role.VIEWER) -> Callable:
    """Resolve ``/t/<slug>/`` to the user's membership and require ``role``.

    A tenant the user does not belong to is a 404, exactly like one that does not
    exist, so page addresses never reveal which tenants exist.
    """

    def decorator(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @login_required
        @wraps(view)
        def wrapper(request: HttpRequest, slug: str, *args: Any, **kwargs: Any) -> HttpResponse:
            membership = membership_get(user=request.user, tenant_slug=slug)
            if membership is None:
                raise Http404("No such tenant.")
            if not membership.has_role(role):
                raise PermissionDenied(f"This page needs the {Role(role).label.lower()} role.")
            request.membership = membership  # type: ignore[attr-defined]
            request.tenant = membership.tenant  # type: ignore[attr-defined]
            request.session[SESSION_TENANT] = membership.tenant.slug
            return view(request, *args, **kwargs)

        return wrapper

    return decorator


def page(request: HttpRequest, template: str, context: dict[str, Any] | None = None, *, status: int = 200) -> HttpResponse:
    """Render a tenant page with what the layout needs: the tenant, the role, the switcher."""
    membership = request.membership  # type: ignore[attr-defined]
    base = {
        "tenant": membership.tenant,
        "membership": membership,
        "can_edit": membership.has_role(Role.ADMIN),
        "is_owner": membership.has_role(Role.OWNER),
        "memberships": memberships_for_user(user=request.user).order_by("tenant__name"),
    }
    return render(request, template, {**base, **(context or {})}, status=status)
