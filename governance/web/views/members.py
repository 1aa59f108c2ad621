"""Members (owners only change them): list, add, change role, remove."""

from __future__ import annotations

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


def _members_page(request, form):
    return page(request, "web/members.html", {
        "members": selectors.membership_list(tenant=request.tenant),
        "form": form,
        "roles": Role.choices,
        "audit": selectors.audit_entries(tenant=request.tenant, object_type="membership")[:30],
    })


@tenant_page(Role.OWNER)
def member_add(request):
    form = MemberAddForm(request.POST or None)
    if request.method != "POST" or not form.is_valid():
        return _members_page(request, form)
    membership, password = services.membership_add(
        tenant=request.tenant, actor=Actor(user=request.user), **form.cleaned_data
    )
    username, role = membership.user.get_username(), membership.get_role_display().lower()
    if password:
        messages.success(
            request,
            f"Created {username} as {role}. One-time password (shown once; pass it on safely): {password}",
        )
    else:
        messages.success(request, f"{username} is a member ({role}).")
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
