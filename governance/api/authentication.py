"""Bearer API keys: ``cpt_<prefix>_<secret>``, stored as prefix + SHA-256, compared in constant time."""

from __future__ import annotations

import hmac
import re
from datetime import timedelta

from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from budgets.policy import TenantPolicy, tenant_policy
from governance.keys import KEY_SCHEME, hash_secret
from governance.models import ApiKey, Tenant

_PREFIX = re.compile("[0-9a-f]{1,16}")
LAST_USED_RESOLUTION = timedelta(minutes=1)


# A key's prefix -> its tenant's id; a key never moves to another tenant, so this never goes stale.
_key_tenants: dict[str, int] = {}


def key_from_secret(secret: str) -> tuple[ApiKey, TenantPolicy] | None:
    """Return the live key this secret belongs to and its tenant's policy, or None.

    Keys are read from the tenant's cached policy, which reloads whenever a key, the
    tenant or its configuration changes (see ``budgets.policy``), so a request costs
    no query here, and a revocation still takes effect at the next request.
    """
    parts = secret.split("_", 2)
    # The prefix is looked up in the database, so anything but what generate_secret makes
    # (hex) is refused before it can reach a query (a NUL there would be a DataError).
    if len(parts) != 3 or parts[0] != KEY_SCHEME or not _PREFIX.fullmatch(parts[1]) or not parts[2]:
        return None
    prefix = parts[1]
    tenant_id = _key_tenants.get(prefix)
    if tenant_id is None:
        tenant_id = ApiKey.objects.filter(prefix=prefix).values_list("tenant_id", flat=True).first()
        if tenant_id is None:
            return None
        _key_tenants[prefix] = tenant_id
    try:
        policy = tenant_policy(tenant_id)
    except Tenant.DoesNotExist:
        _key_tenants.pop(prefix, None)
        return None
    key = policy.api_key(prefix)
    if key is None or not hmac.compare_digest(key.secret_hash, hash_secret(secret)):
        return None
    if key.revoked_at is not None or not key.tenant.active:
        return None
    return key, policy


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """Authenticate ``Authorization: Bearer <key>``; request.auth is the ApiKey."""

    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            raise exceptions.NotAuthenticated("Send your API key as 'Authorization: Bearer <key>'.")
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise exceptions.AuthenticationFailed("Malformed Authorization header; use 'Bearer <key>'.")
        found = key_from_secret(secret.strip())
        if found is None:
            raise exceptions.AuthenticationFailed("Unknown, revoked or malformed API key.")
        key, request.tenant_policy = found
        now = timezone.now()
        if key.last_used_at is None or now - key.last_used_at >= LAST_USED_RESOLUTION:
            # At most one write a minute per key, so the hot path stays read-only.
            ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
            key.last_used_at = now
        return (None, key)

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="comptroller"'


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    """Describe the bearer API key in the OpenAPI schema."""

    target_class = ApiKeyAuthentication
    name = "apiKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key of the tenant: `Authorization: Bearer cpt_…`.",
        }
