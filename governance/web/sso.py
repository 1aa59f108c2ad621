"""Optional OpenID Connect single sign-on with mozilla-django-oidc, configured from the environment.

``OIDC_ISSUER``, ``OIDC_CLIENT_ID`` and ``OIDC_CLIENT_SECRET`` turn it on; the provider's
endpoints come from its discovery document. The provider vouches for an email address,
nothing more: the address signs in to the account of that name (created on first sign-in),
and only memberships let it into a tenant. A new account joins the tenants whose open
invitations were sent to its verified address: the provider proved what the invitation
link would have proved.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import jwt
import requests
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.core.exceptions import SuspiciousOperation
from django.http import Http404
from django.shortcuts import redirect
from django.urls import reverse
from django.views import View
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCAuthenticationRequestView

from governance import services

logger = logging.getLogger(__name__)

DISCOVERY_TTL_SECONDS = 3600
_discovery: dict[str, tuple[float, dict[str, Any]]] = {}


class SsoUnavailable(Exception):
    """The identity provider's discovery document cannot be had or is not usable."""


def enabled() -> bool:
    return bool(settings.OIDC_ISSUER and settings.OIDC_RP_CLIENT_ID)


def provider_name() -> str:
    return settings.OIDC_PROVIDER_NAME


def provider_metadata() -> dict[str, Any]:
    """Return the provider's discovery document (cached for an hour), checked to name the configured issuer."""
    issuer = settings.OIDC_ISSUER.rstrip("/")
    cached = _discovery.get(issuer)
    if cached is not None and cached[0] > time.monotonic():
        return cached[1]
    try:
        response = requests.get(f"{issuer}/.well-known/openid-configuration", timeout=settings.OIDC_TIMEOUT)
        response.raise_for_status()
        metadata = response.json()
    except (requests.RequestException, ValueError) as exc:
        raise SsoUnavailable(f"cannot read the discovery document of {issuer}: {exc}") from exc
    if not isinstance(metadata, dict) or str(metadata.get("issuer", "")).rstrip("/") != issuer:
        raise SsoUnavailable(f"the discovery document of {issuer} names another issuer")
    missing = [k for k in ("authorization_endpoint", "token_endpoint", "jwks_uri", "userinfo_endpoint")
               if not metadata.get(k)]
    if missing:
        raise SsoUnavailable(f"the discovery document of {issuer} lacks {', '.join(missing)}")
    _discovery[issuer] = (time.monotonic() + DISCOVERY_TTL_SECONDS, metadata)
    return metadata


def _is_true(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


class SsoBackend(OIDCAuthenticationBackend):
    """Sign in the account named by the provider's verified email; answer only the SSO callback."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # The library reads its endpoints from settings here, for every authenticate() of
        # every sign-in; they come from discovery instead, when a callback arrives.
        self.UserModel = get_user_model()

    def authenticate(self, request, **kwargs):
        if request is None or not enabled() or request.path != reverse("oidc_authentication_callback"):
            return None
        metadata = provider_metadata()
        self.issuer = metadata["issuer"]
        self.OIDC_OP_TOKEN_ENDPOINT = metadata["token_endpoint"]
        self.OIDC_OP_USER_ENDPOINT = metadata["userinfo_endpoint"]
        self.OIDC_OP_JWKS_ENDPOINT = metadata["jwks_uri"]
        self.OIDC_RP_CLIENT_ID = settings.OIDC_RP_CLIENT_ID
        self.OIDC_RP_CLIENT_SECRET = settings.OIDC_RP_CLIENT_SECRET
        self.OIDC_RP_SIGN_ALGO = settings.OIDC_RP_SIGN_ALGO
        self.OIDC_RP_IDP_SIGN_KEY = None
        return super().authenticate(request, **kwargs)

    def _verify_jws(self, payload, key):
        # The library checks the signature, the algorithm and the expiry; a token must
        # also come from the configured issuer and be meant for this client.
        claims = super()._verify_jws(payload, key)
        if claims.get("iss") != self.issuer:
            raise SuspiciousOperation("The token was issued by another issuer.")
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if self.OIDC_RP_CLIENT_ID not in audiences:
            raise SuspiciousOperation("The token is meant for another client.")
        return claims

    def get_userinfo(self, access_token, id_token, payload):
        claims = super().get_userinfo(access_token, id_token, payload)
        if claims.get("sub") != payload.get("sub"):
            raise SuspiciousOperation("The userinfo answer is about another subject than the ID token.")
        return claims

    def verify_claims(self, claims):
        return bool(claims.get("email")) and _is_true(claims.get("email_verified"))

    def filter_users_by_claims(self, claims):
        return self.UserModel.objects.filter(username__iexact=claims["email"].strip())

    def create_user(self, claims):
        email = claims["email"].strip().lower()
        user = self.UserModel.objects.create_user(username=email, email=email)  # no password: SSO only
        joined = services.invitations_accept_for_new_sso_user(user=user)
        logger.info("SSO created %s; joined %s", email, ", ".join(m.tenant.slug for m in joined) or "no tenant")
        return user


class SsoStartView(OIDCAuthenticationRequestView):
    """Send the browser to the provider, with state, nonce and a PKCE challenge in the session."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        View.__init__(self, *args, **kwargs)  # the library's __init__ reads endpoints from settings

    def get(self, request):
        if not enabled():
            raise Http404("Single sign-on is not configured.")
        try:
            metadata = provider_metadata()
        except SsoUnavailable as exc:
            logger.warning("SSO unavailable: %s", exc)
            messages.error(request, f"{provider_name()} cannot be reached right now; sign in with your password.")
            return redirect("login")
        self.OIDC_OP_AUTH_ENDPOINT = metadata["authorization_endpoint"]
        self.OIDC_RP_CLIENT_ID = settings.OIDC_RP_CLIENT_ID
        return super().get(request)


class SsoCallbackView(OIDCAuthenticationCallbackView):
    """Finish the sign-on; anything the provider got wrong ends on the sign-in page, saying so."""

    def get(self, request):
        if not enabled():
            raise Http404("Single sign-on is not configured.")
        try:
            return super().get(request)
        except (SsoUnavailable, SuspiciousOperation, requests.RequestException, jwt.PyJWTError,
                KeyError, ValueError) as exc:
            logger.warning("SSO sign-in failed: %s", exc)
            return self.login_failure()

    def login_failure(self):
        messages.error(self.request, f"{provider_name()} did not sign you in. Try again, or sign in with your password.")
        return redirect("login")
