"""Members (owners only change them): list, invite, change role, remove; pending invitations, revoke."""

from __future__ import annotations

import uuid

from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect

from governance import selectors, services
from governance.audit import Actor
from governance.models import Role
from governance.web.access import page, tenant_page
from governance.web.forms import MemberAddForm, MemberRoleForm


def _member_or_404(tenant, member_id: int):
    membership = selectors.membership_get_by_id(tenant=tenant, membership_id=member_id)
    if membership is None:
        raise Http404("No such member.")
    return membership


@tenant_page()
def member_list(request):
    return _members_page(request, MemberAddForm())


def _members_page(request, form, *, status: int = 200):
    return page(request, "web/members.html", {
        "members": selectors.membership_list(tenant=request.tenant),
        "invitations": selectors.invitation_list_pending(tenant=request.tenant),
        "form": form,
        "roles": Role.choices,
        "audit": selectors.audit_entries(tenant=request.tenant, object_types=["membership", "invitation"])[:30],
    }, status=status)


@tenant_page(Role.OWNER)
def member_add(request):
    """Invite an address: it joins when the person who reads the email accepts."""
    form = MemberAddForm(request.POST or None)
    if request.method != "POST" or not form.is_valid():
        return _members_page(request, form)
    try:
        invitation = services.invitation_create(
            tenant=request.tenant, actor=Actor(user=request.user), **form.cleaned_data
        )
    except services.InvitationError as exc:
        form.add_error("email" if isinstance(exc, services.AlreadyMember) else None, str(exc))
        return _members_page(request, form, status=400)
    messages.success(
        request,
        f"Invitation sent to {invitation.email} ({invitation.get_role_display().lower()}). "
        f"They join when they accept it; the link expires on {invitation.expires_at:%Y-%m-%d}.",
    )
    return redirect("web:members", slug=request.tenant.slug)


@tenant_page(Role.OWNER)
def invitation_revoke(request, invitation_hex: str):
    invitation = selectors.invitation_get(tenant=request.tenant, invitation_id=uuid.UUID(hex=invitation_hex))
    if invitation is None:
        raise Http404("No such invitation.")
    if request.method == "POST":
        services.invitation_revoke(invitation=invitation, actor=Actor(user=request.user))
        messages.success(request, f"Invitation to {invitation.email} revoked; its link no longer works.")
    return redirect("web:members", slug=request.tenant.slug)


@tenant_page(Role.OWNER)
def member_role(request, member_id: int):
    membership = _member_or_404(request.tenant, member_id)
    form = MemberRoleForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            services.membership_set_role(membership=membership, actor=Actor(user=request.user),
                                         role=form.cleaned_data["role"])
        except services.LastOwner as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, f"{membership.user.get_username()} is now "
                                      f"{membership.get_role_display().lower()}.")
    return redirect("web:members", slug=request.tenant.slug)


@tenant_page(Role.OWNER)
def member_remove(request, member_id: int):
    membership = _member_or_404(request.tenant, member_id)
    if request.method == "POST":
        try:
            services.membership_remove(membership=membership, actor=Actor(user=request.user))
        except services.LastOwner as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, f"{membership.user.get_username()} removed.")
    return redirect("web:members", slug=request.tenant.slug)
