"""Writes of the tenancy domain: tenants, features, API keys, members and invitations. Every write is audited."""

from __future__ import annotations

import logging
import secrets
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import get_connection, send_mail
from django.db import transaction
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from governance.audit import Actor, audit_record, audited_delete
from governance.keys import generate_secret, hash_secret
from governance.models import (
    ApiKey,
    Feature,
    Invitation,
    KeyRole,
    Membership,
    OneTimePassword,
    Role,
    Tenant,
)

logger = logging.getLogger(__name__)



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
    asked for or the user already existed) and the admin key's secret. The
    operator who runs this passes the password on; its owner must replace it at
    their first sign-in.
    """
    tenant = Tenant(slug=slug, name=name, timezone=timezone_name)
    tenant.full_clean()
    tenant.save()
    password = None
    if owner_email:
        User = get_user_model()
        email = owner_email.strip().lower()
        user = User.objects.filter(username__iexact=email).first()
        if user is None:
            password = secrets.token_urlsafe(12)
            user = User.objects.create_user(username=email, email=email, password=password)
            OneTimePassword.objects.create(user=user)
        Membership.objects.create(user=user, tenant=tenant, role=Role.OWNER)
    _, secret = api_key_create(tenant=tenant, actor=Actor.system(), name="Initial admin key", role=KeyRole.ADMIN)
    return tenant, password, secret


def password_chosen(*, user) -> None:
    """Record that the user chose their own password: a one-time password no longer binds them."""
    OneTimePassword.objects.filter(user=user).delete()


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


# --- invitations ------------------------------------------------------------------------
# Nobody is added to a tenant by someone else: an owner invites an address, and the
# person who receives the link accepts it, signed in as that address or by choosing the
# password of a new account. The link's token is the only proof, so it lives only in the
# email; the database keeps its hash.


class InvitationError(Exception):
    """The invitation cannot be created, sent or accepted; the message says why."""


class AlreadyMember(InvitationError):
    """The address already belongs to a member of the tenant."""


class InvitationNotSent(InvitationError):
    """The email could not be sent, so the invitation was withdrawn."""


class InvitationInvalid(InvitationError):
    """No open invitation has this token (unknown, accepted, revoked or expired)."""


class InvitationForSomeoneElse(InvitationError):
    """The signed-in user is not the invited address."""


class AccountExists(InvitationError):
    """The invited address has an account: sign in to accept instead of choosing a password."""


def invitation_snapshot(invitation: Invitation) -> dict[str, Any]:
    return {"email": invitation.email, "role": invitation.role}


def _user_for_email(email: str):
    return get_user_model().objects.filter(username__iexact=email.strip()).first()


def invitation_url(token: str) -> str:
    return f"{settings.SITE_URL.rstrip('/')}{reverse('invitation', kwargs={'token': token})}"


def _invitation_send(*, invitation: Invitation, token: str) -> None:
    context = {
        "invitation": invitation,
        "url": invitation_url(token),
        "inviter": invitation.invited_by.get_username() if invitation.invited_by else "The operator",
        "site_url": settings.SITE_URL,
    }
    send_mail(
        subject=f"You are invited to {invitation.tenant.name} on Comptroller",
        message=render_to_string("accounts/invitation_email.txt", context),
        from_email=settings.DEFAULT_FROM_EMAIL,
        recipient_list=[invitation.email],
        connection=get_connection(timeout=settings.INVITATION_EMAIL_TIMEOUT),
    )


@transaction.atomic
def _invitation_record(*, tenant: Tenant, actor: Actor, email: str, role: str) -> tuple[Invitation, str]:
    Role(role)  # raises ValueError on an unknown role
    if Membership.objects.filter(tenant=tenant, user__username__iexact=email).exists():
        raise AlreadyMember(f"{email} is already a member of {tenant.name}.")
    now = timezone.now()
    # Inviting the same address again replaces its open invitation (and the old link stops working).
    for previous in Invitation.objects.select_for_update().filter(
        tenant=tenant, email=email, accepted_at__isnull=True, revoked_at__isnull=True
    ):
        previous.revoked_at = now
        previous.save(update_fields=["revoked_at"])
    token = secrets.token_urlsafe(32)
    invitation = Invitation.objects.create(
        tenant=tenant,
        email=email,
        role=role,
        token_hash=Invitation.hash_token(token),
        invited_by=actor.user if actor.user is not None and actor.user.is_authenticated else None,
        expires_at=now + timedelta(days=settings.INVITATION_TTL_DAYS),
    )
    audit_record(tenant=tenant, actor=actor, action="create", obj=invitation, after=invitation_snapshot(invitation))
    return invitation, token


def invitation_create(*, tenant: Tenant, actor: Actor, email: str, role: str) -> Invitation:
    """Invite an address to the tenant and email it the link; nobody else ever sees the link.

    The email goes out after the invitation is committed; if it cannot be sent the
    invitation is revoked again and InvitationNotSent says why.
    """
    email = email.strip().lower()
    invitation, token = _invitation_record(tenant=tenant, actor=actor, email=email, role=role)
    try:
        _invitation_send(invitation=invitation, token=token)
    except Exception as exc:  # SMTP and socket errors of every kind
        logger.warning("invitation email to %s failed: %s", email, exc)
        invitation_revoke(invitation=invitation, actor=Actor.system())
        raise InvitationNotSent(
            f"The invitation email to {email} could not be sent ({exc}), so the invitation was withdrawn."
        ) from exc
    return invitation


@transaction.atomic
def invitation_revoke(*, invitation: Invitation, actor: Actor) -> Invitation:
    if invitation.accepted_at is None and invitation.revoked_at is None:
        invitation.revoked_at = timezone.now()
        invitation.save(update_fields=["revoked_at"])
        audit_record(tenant=invitation.tenant, actor=actor, action="revoke", obj=invitation,
                     after=invitation_snapshot(invitation))
    return invitation


def _open_invitation_for_update(token: str) -> Invitation:
    invitation = (
        Invitation.objects.select_for_update()
        .select_related("tenant")
        .filter(token_hash=Invitation.hash_token(token), tenant__active=True)
        .first()
    )
    if invitation is None or not invitation.is_pending:
        raise InvitationInvalid("This invitation link is no longer valid.")
    return invitation


def _join(*, invitation: Invitation, user) -> Membership:
    membership, created = Membership.objects.get_or_create(
        user=user, tenant=invitation.tenant, defaults={"role": invitation.role}
    )
    invitation.accepted_at = timezone.now()
    invitation.accepted_by = user
    invitation.save(update_fields=["accepted_at", "accepted_by"])
    actor = Actor(user=user)
    if created:
        audit_record(tenant=invitation.tenant, actor=actor, action="create", obj=membership,
                     after=membership_snapshot(membership))
    audit_record(tenant=invitation.tenant, actor=actor, action="accept", obj=invitation,
                 after=invitation_snapshot(invitation))
    return membership


def invitation_matches(*, invitation: Invitation, user) -> bool:
    """Whether ``user`` is the account the invitation was sent to."""
    return user.is_authenticated and user.get_username().lower() == invitation.email


@transaction.atomic
def invitation_accept(*, token: str, user) -> Membership:
    """Join the invitation's tenant as ``user``, who must be the invited address."""
    invitation = _open_invitation_for_update(token)
    if not invitation_matches(invitation=invitation, user=user):
        raise InvitationForSomeoneElse("This invitation was sent to another address than the one you are signed in with.")
    return _join(invitation=invitation, user=user)


@transaction.atomic
def invitation_accept_new_account(*, token: str, password: str) -> Membership:
    """Create the invited address's account with the password its owner chose, and join."""
    invitation = _open_invitation_for_update(token)
    if _user_for_email(invitation.email) is not None:
        raise AccountExists("An account with this address exists; sign in to accept the invitation.")
    user = get_user_model().objects.create_user(username=invitation.email, email=invitation.email, password=password)
    return _join(invitation=invitation, user=user)


@transaction.atomic
def invitations_accept_for_new_sso_user(*, user) -> list[Membership]:
    """Accept every open invitation to the address a new single sign-on account was verified for."""
    pending = (
        Invitation.objects.select_for_update()
        .select_related("tenant")
        .filter(email=user.get_username().lower(), accepted_at__isnull=True, revoked_at__isnull=True,
                expires_at__gt=timezone.now(), tenant__active=True)
    )
    return [_join(invitation=invitation, user=user) for invitation in pending]
