"""Pages outside any tenant: the tenant chooser."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render

from governance.selectors import memberships_for_user
from governance.web.access import SESSION_TENANT


@login_required
def home(request):
    """Send the user to their last tenant, their only tenant, or the list to choose from."""
    memberships = list(memberships_for_user(user=request.user).order_by("tenant__name"))
    slugs = {m.tenant.slug for m in memberships}
    last = request.session.get(SESSION_TENANT)
    if last in slugs:
        return redirect("web:dashboard", slug=last)
    if len(memberships) == 1:
        return redirect("web:dashboard", slug=memberships[0].tenant.slug)
    return render(request, "home.html", {"memberships": memberships})
