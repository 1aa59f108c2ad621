"""Writes of the tenancy domain: tenants, features and API keys. Every write is audited."""

from __future__ import annotations

import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import ProtectedError
from django.forms.models import model_to_dict
from django.utils import timezone

from governance.api.authentication import generate_secret, hash_secret
from governance.audit import Actor, audit_record, audit_update, audited_delete
from governance.models import ApiKey, Feature, KeyRole, Membership, Role, Tenant

FEATURE_FIELDS = (
    "key", "name", "description", "default_model", "allowed_models", "fallback_models",
    "max_tokens_cap", "interactive", "fail_mode", "active",
)


class FeatureInUse(Exception):
    """The feature has recorded usage, so it cannot be deleted; deactivate it instead."""


def feature_snapshot(feature: Feature) -> dict[str, Any]:
    return model_to_dict(feature, fields=FEATURE_FIELDS)


@transaction.atomic
def feature_create(*, tenant: Tenant, actor: Actor, **fields: Any) -> Feature:
    feature = Feature(tenant=tenant, **{k: v for k, v in fields.items() if k in FEATURE_FIELDS})
    feature.full_clean(exclude=["tenant"])
    feature.save()
    audit_record(tenant=tenant, actor=actor, action="create", obj=feature, after=feature_snapshot(feature))
    return feature


@transaction.atomic
def feature_update(*, feature: Feature, actor: Actor, data: dict[str, Any]) -> Feature:
    before = feature_snapshot(feature)
    for name, value in data.items():
        if name in FEATURE_FIELDS:
            setattr(feature, name, value)
    feature.full_clean(exclude=["tenant"])
    feature.save()
    after = feature_snapshot(feature)
    audit_update(actor=actor, obj=feature, before=before, after=after)
    return feature


@transaction.atomic
def feature_delete(*, feature: Feature, actor: Actor) -> None:
    before = feature_snapshot(feature)
    try:
        with transaction.atomic():
            feature.delete()
    except ProtectedError as exc:
        raise FeatureInUse(
            f"Feature '{feature.key}' has recorded usage; deactivate it instead of deleting it."
        ) from exc
    feature.pk = before["key"]
    audit_record(tenant=feature.tenant, actor=actor, action="delete", obj=feature, before=before)


def api_key_snapshot(key: ApiKey) -> dict[str, Any]:
    return {
        "name": key.name,
        "role": key.role,
        "prefix": key.prefix,
        "features": sorted(key.features.values_list("key", flat=True)),
        "revoked_at": key.revoked_at,
    }


class KeyBroaderThanActor(Exception):
    """A feature-restricted key may only create or revoke keys within its own features."""


def _check_within_actor(actor: Actor, feature_ids: set) -> None:
    """Raise KeyBroaderThanActor when the acting key is restricted and ``feature_ids`` reach past it.

    An empty set means every feature, which is broader than any restriction.
    """
    if actor.key is None:
        return
    allowed = set(actor.key.features.values_list("pk", flat=True))
    if allowed and (not feature_ids or not feature_ids <= allowed):
        raise KeyBroaderThanActor(
            "This API key is restricted to some features; it can only manage keys restricted to those."
        )


@transaction.atomic
def api_key_create(
    *, tenant: Tenant, actor: Actor, name: str, role: str = KeyRole.SERVICE, features: list[Feature] | None = None
) -> tuple[ApiKey, str]:
    """Create a key and return it with its secret, which is never stored and never shown again.

    Raise KeyBroaderThanActor when a feature-restricted key asks for a key broader than itself.
    """
    _check_within_actor(actor, {f.pk for f in features or []})
    prefix, secret = generate_secret()
    key = ApiKey.objects.create(
        tenant=tenant,
        name=name,
        role=role,
        prefix=prefix,
        secret_hash=hash_secret(secret),
        created_by=actor.user if actor.user is not None and actor.user.is_authenticated else None,
    )
    if features:
        key.features.set(features)
    audit_record(tenant=tenant, actor=actor, action="create", obj=key, after=api_key_snapshot(key))
    return key, secret


@transaction.atomic
def api_key_revoke(*, key: ApiKey, actor: Actor) -> ApiKey:
    """Revoke the key (idempotent); raise KeyBroaderThanActor as api_key_create does."""
    _check_within_actor(actor, set(key.features.values_list("pk", flat=True)))
    if key.revoked_at is None:
        before = api_key_snapshot(key)
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
        audit_record(
            tenant=key.tenant, actor=actor, action="revoke", obj=key, before=before, after=api_key_snapshot(key)
        )
    return key


@transaction.atomic
def tenant_create(
    *, slug: str, name: str, timezone_name: str = "UTC", owner_email: str | None = None
) -> tuple[Tenant, str | None, str]:
    """Create a tenant, optionally its owner, and a first admin key.

    Return the tenant, the owner's one-time password (None when no owner was
    asked for or the user already existed) and the admin key's secret.
    """
    tenant = Tenant(slug=slug, name=name, timezone=timezone_name)
    tenant.full_clean()
    tenant.save()
    password = None
    if owner_email:
        User = get_user_model()
        user = User.objects.filter(username=owner_email).first()
        if user is None:
            password = secrets.token_urlsafe(12)
            user = User.objects.create_user(username=owner_email, email=owner_email, password=password)
        Membership.objects.create(user=user, tenant=tenant, role=Role.OWNER)
    _, secret = api_key_create(tenant=tenant, actor=Actor.system(), name="Initial admin key", role=KeyRole.ADMIN)
    return tenant, password, secret


# --- members ----------------------------------------------------------------------------


class LastOwner(Exception):
    """The change would leave the tenant without an owner."""


def membership_snapshot(membership: Membership) -> dict[str, Any]:
    return {"user": membership.user.get_username(), "role": membership.role}


def _other_owners(membership: Membership) -> bool:
    return (
        Membership.objects.filter(tenant=membership.tenant, role=Role.OWNER).exclude(pk=membership.pk).exists()
    )


@transaction.atomic
def membership_add(*, tenant: Tenant, actor: Actor, email: str, role: str) -> tuple[Membership, str | None]:
    """Add a user (created if new) to the tenant; return the membership and a new user's one-time password."""
    User = get_user_model()
    email = email.strip().lower()
    user = User.objects.filter(username__iexact=email).first()
    password = None
    if user is None:
        password = secrets.token_urlsafe(12)
        user = User.objects.create_user(username=email, email=email, password=password)
    membership, created = Membership.objects.get_or_create(user=user, tenant=tenant, defaults={"role": role})
    if created:
        audit_record(tenant=tenant, actor=actor, action="create", obj=membership,
                     after=membership_snapshot(membership))
    return membership, password


@transaction.atomic
def membership_set_role(*, membership: Membership, actor: Actor, role: str) -> Membership:
    Role(role)  # raises ValueError on an unknown role
    if membership.role == Role.OWNER and role != Role.OWNER and not _other_owners(membership):
        raise LastOwner("A tenant needs at least one owner; make someone else owner first.")
    before = membership_snapshot(membership)
    membership.role = role
    membership.save(update_fields=["role"])
    if before != membership_snapshot(membership):
        audit_record(tenant=membership.tenant, actor=actor, action="update", obj=membership, before=before,
                     after=membership_snapshot(membership))
    return membership


@transaction.atomic
def membership_remove(*, membership: Membership, actor: Actor) -> None:
    if membership.role == Role.OWNER and not _other_owners(membership):
        raise LastOwner("A tenant needs at least one owner; make someone else owner first.")
    before = membership_snapshot(membership)
    audited_delete(actor=actor, obj=membership, before=before)
