"""Reads of the tenancy domain. Every selector takes its tenant."""

from __future__ import annotations

import uuid

from django.contrib.auth import get_user_model
from django.db.models import QuerySet
from django.utils import timezone

from governance.models import ApiKey, AuditEntry, Feature, Invitation, Membership, Tenant


def feature_list(*, tenant: Tenant) -> QuerySet[Feature]:
    return Feature.objects.filter(tenant=tenant)


def feature_get(*, tenant: Tenant, key: str) -> Feature | None:
    return Feature.objects.filter(tenant=tenant, key=key).first()


def api_key_list(*, tenant: Tenant) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(tenant=tenant).prefetch_related("features")


def api_key_get(*, tenant: Tenant, key_id: uuid.UUID) -> ApiKey | None:
    return api_key_list(tenant=tenant).filter(pk=key_id).first()


def audit_for(*, tenant: Tenant, obj) -> QuerySet[AuditEntry]:
    return AuditEntry.objects.filter(
        tenant=tenant, object_type=obj._meta.model_name, object_id=str(obj.pk)
    ).select_related("actor_user", "actor_key")


def memberships_for_user(*, user) -> QuerySet[Membership]:
    return Membership.objects.filter(user=user, tenant__active=True).select_related("tenant")


def membership_get(*, user, tenant_slug: str) -> Membership | None:
    return memberships_for_user(user=user).filter(tenant__slug=tenant_slug).first()


def membership_list(*, tenant: Tenant) -> QuerySet[Membership]:
    return Membership.objects.filter(tenant=tenant).select_related("user").order_by("user__username")


def membership_get_by_id(*, tenant: Tenant, membership_id: int) -> Membership | None:
    return membership_list(tenant=tenant).filter(pk=membership_id).first()


def audit_entries(
    *, tenant: Tenant, object_type: str | None = None, object_types: list[str] | None = None
) -> QuerySet[AuditEntry]:
    entries = AuditEntry.objects.filter(tenant=tenant).select_related("actor_user", "actor_key")
    if object_type is not None:
        entries = entries.filter(object_type=object_type)
    if object_types is not None:
        entries = entries.filter(object_type__in=object_types)
    return entries


def invitation_list_pending(*, tenant: Tenant) -> QuerySet[Invitation]:
    """Open invitations of the tenant that can still be accepted, newest first."""
    return Invitation.objects.filter(
        tenant=tenant, accepted_at__isnull=True, revoked_at__isnull=True, expires_at__gt=timezone.now()
    ).select_related("invited_by")


def invitation_get(*, tenant: Tenant, invitation_id: uuid.UUID) -> Invitation | None:
    return Invitation.objects.filter(tenant=tenant, pk=invitation_id).first()


def invitation_get_by_token(*, token: str) -> Invitation | None:
    """The invitation a link's token belongs to, in whatever state; the token is its own scope."""
    return Invitation.objects.select_related("tenant").filter(
        token_hash=Invitation.hash_token(token), tenant__active=True
    ).first()


def account_exists(*, email: str) -> bool:
    """Whether an account is named by this address (accounts are named by their email)."""
    return get_user_model().objects.filter(username__iexact=email.strip()).exists()
