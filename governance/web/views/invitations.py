"""The invitation link: accept it signed in as the invited address, or choose the password of a new account.

Opening the link changes nothing (mail scanners open links); accepting is a POST. A
signed-in user who is not the invited address is refused, whoever gave them the link.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import login
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache

from governance import selectors, services
from governance.models import Invitation, InvitationStatus
from governance.web import sso
from governance.web.forms import NewAccountForm

PASSWORD_BACKEND = "django.contrib.auth.backends.ModelBackend"


def _page(request, template: str, context: dict, *, status: int = 200) -> HttpResponse:
    return render(request, f"accounts/{template}", context, status=status)


def _invalid(request, invitation: Invitation | None) -> HttpResponse:
    expired = invitation is not None and invitation.status == InvitationStatus.EXPIRED
    return _page(request, "invitation_invalid.html", {"expired": expired}, status=410 if expired else 404)


@never_cache
def invitation(request, token: str):
    """Show what the invitation offers and the one way to accept it that fits the visitor."""
    found = selectors.invitation_get_by_token(token=token)
    if found is None or not found.is_pending:
        return _invalid(request, found)
    user = request.user
    if user.is_authenticated and not services.invitation_matches(invitation=found, user=user):
        return _page(request, "invitation_other_account.html", {}, status=403)
    if request.method == "POST" and user.is_authenticated:
        return _accept(request, token)
    has_account = user.is_authenticated or selectors.account_exists(email=found.email)
    form = None
    if not has_account:
        form = NewAccountForm(request.POST or None, email=found.email)
        if request.method == "POST" and form.is_valid():
            return _accept_new_account(request, token, form.cleaned_data["password1"])
    return _page(request, "invitation.html", {
        "invitation": found, "has_account": has_account, "form": form,
        "sso": sso.provider_name() if sso.enabled() else None,
    })


def _accept(request, token: str) -> HttpResponse:
    try:
        membership = services.invitation_accept(token=token, user=request.user)
    except services.InvitationForSomeoneElse:
        return _page(request, "invitation_other_account.html", {}, status=403)
    except services.InvitationInvalid:
        return _invalid(request, None)
    messages.success(request, f"You joined {membership.tenant.name} as {membership.get_role_display().lower()}.")
    return redirect("web:dashboard", slug=membership.tenant.slug)


def _accept_new_account(request, token: str, password: str) -> HttpResponse:
    try:
        membership = services.invitation_accept_new_account(token=token, password=password)
    except services.AccountExists as exc:
        messages.error(request, str(exc))
        return redirect("invitation", token=token)
    except services.InvitationInvalid:
        return _invalid(request, None)
    login(request, membership.user, backend=PASSWORD_BACKEND)
    messages.success(request, f"Welcome. You joined {membership.tenant.name} as {membership.get_role_display().lower()}.")
    return redirect("web:dashboard", slug=membership.tenant.slug)
