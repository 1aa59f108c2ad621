"""Features: list, create, edit (with their audit history), delete."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import Http404
from django.shortcuts import redirect
from django.urls import reverse

from budgets import features as services
from governance import selectors
from governance.audit import Actor
from governance.models import Role
from governance.web.access import page, tenant_page
from governance.web.forms import FeatureForm, apply_service_errors


def _feature_or_404(tenant, key: str):
    feature = selectors.feature_get(tenant=tenant, key=key)
    if feature is None:
        raise Http404("No such feature.")
    return feature


@tenant_page()
def feature_list(request):
    return page(request, "web/features/list.html", {"features": selectors.feature_list(tenant=request.tenant)})


@tenant_page(Role.ADMIN)
def feature_create(request):
    form = FeatureForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        if selectors.feature_get(tenant=request.tenant, key=form.cleaned_data["key"]):
            form.add_error("key", "A feature with this key exists.")
        else:
            try:
                feature = services.feature_create(
                    tenant=request.tenant, actor=Actor(user=request.user), **form.cleaned_data
                )
            except ValidationError as exc:
                apply_service_errors(form, exc)
            else:
                messages.success(request, f"Feature “{feature.name}” created.")
                return redirect("web:features", slug=request.tenant.slug)
    return page(request, "web/features/form.html", {"form": form, "creating": True})


@tenant_page(Role.ADMIN)
def feature_edit(request, key: str):
    feature = _feature_or_404(request.tenant, key)
    initial = services.feature_snapshot(feature)
    form = FeatureForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        new_key = form.cleaned_data["key"]
        if new_key != feature.key and selectors.feature_get(tenant=request.tenant, key=new_key):
            form.add_error("key", "A feature with this key exists.")
        else:
            try:
                services.feature_update(feature=feature, actor=Actor(user=request.user), data=form.cleaned_data)
            except ValidationError as exc:
                apply_service_errors(form, exc)
            else:
                messages.success(request, f"Feature “{feature.name}” saved.")
                return redirect("web:features", slug=request.tenant.slug)
    history = selectors.audit_for(tenant=request.tenant, obj=feature)[:50]
    return page(request, "web/features/form.html", {"form": form, "feature": feature, "history": history})


@tenant_page(Role.ADMIN)
def feature_delete(request, key: str):
    feature = _feature_or_404(request.tenant, key)
    if request.method == "POST":
        try:
            services.feature_delete(feature=feature, actor=Actor(user=request.user))
        except services.FeatureInUse as exc:
            messages.error(request, str(exc))
            return redirect("web:feature-edit", slug=request.tenant.slug, key=feature.key)
        messages.success(request, f"Feature “{feature.name}” deleted.")
        return redirect("web:features", slug=request.tenant.slug)
    return page(request, "web/confirm_delete.html", {
        "object_kind": "feature", "object_name": feature.name,
        "consequence": "Its budgets are deleted with it. A feature with recorded usage cannot be deleted; "
                       "deactivate it instead.",
        "cancel_href": reverse("web:feature-edit", args=[request.tenant.slug, feature.key]),
    })
