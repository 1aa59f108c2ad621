"""One base for every API view: key authentication, tenant scope, role checks, errors, rate limit."""

from __future__ import annotations

from typing import Any, cast

from rest_framework import permissions
from rest_framework.views import APIView

from budgets.policy import TenantPolicy
from governance.api.authentication import ApiKeyAuthentication
from governance.api.errors import ApiError, Forbidden
from governance.api.throttling import ApiKeyRateThrottle
from governance.audit import Actor
from governance.models import ApiKey, Feature, KeyRole, Tenant


class HasKeyRole(permissions.BasePermission):
    message = "This API key's role does not permit this operation."

    def has_permission(self, request, view) -> bool:
        key: ApiKey | None = request.auth
        if key is None:
            return False
        return view.required_role == KeyRole.SERVICE or key.is_admin


class TenantAPIView(APIView):
    """Base for every /api/v1 view; subclasses read ``self.tenant`` and never look across tenants."""

    authentication_classes = [ApiKeyAuthentication]
    permission_classes = [HasKeyRole]
    throttle_classes = [ApiKeyRateThrottle]
    required_role: str = KeyRole.SERVICE
    # Set on views of tenant-wide objects: what a feature-restricted key may not do there (403).
    whole_tenant_only: str = ""

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)  # authentication, role, rate limit
        if self.whole_tenant_only:
            self.require_whole_tenant(self.whole_tenant_only)

    def permission_denied(self, request, message=None, code=None):
        if request.auth is None:
            return super().permission_denied(request, message, code)
        raise Forbidden(message or HasKeyRole.message)

    # DRF types request.auth as a Token; ApiKeyAuthentication makes it our ApiKey.
    @property
    def api_key(self) -> ApiKey:
        return cast(ApiKey, self.request.auth)

    @property
    def tenant(self) -> Tenant:
        return cast(ApiKey, self.request.auth).tenant

    @property
    def policy(self) -> TenantPolicy:
        """The tenant's cached policy, as authentication found it for this request."""
        # ApiKeyAuthentication sets it on the request; DRF's Request declares no such attribute.
        return self.request.tenant_policy  # type: ignore[attr-defined]

    @property
    def actor(self) -> Actor:
        return Actor(key=cast("ApiKey | None", self.request.auth))

    def require_admin(self) -> None:
        """Raise 403 unless this is an admin key (for views whose reads are open to service keys)."""
        if not self.api_key.is_admin:
            raise Forbidden("This operation needs an admin API key.")

    @property
    def key_features(self) -> frozenset:
        """The feature ids this key is restricted to; empty for a key of the whole tenant."""
        return self.policy.key_feature_ids(self.api_key)

    def require_whole_tenant(self, what: str) -> None:
        """Raise 403 for a feature-restricted key acting beyond its features (tenant-wide objects)."""
        if self.key_features:
            raise Forbidden(f"This API key is restricted to some features; it may not {what}.")

    def check_feature_access(self, feature: Feature) -> None:
        """Raise 403 when this key is restricted to other features."""
        allowed = self.policy.key_feature_ids(self.api_key)
        if allowed and feature.pk not in allowed:
            raise Forbidden(
                f"This API key may not use feature '{feature.key}'.",
                details={"feature": feature.key},
            )

    def validate(self, serializer_class, data: Any, **kwargs) -> dict[str, Any]:
        serializer = serializer_class(data=data, **kwargs)
        if not isinstance(data, dict) and not kwargs.get("many"):
            raise ApiError("The body must be a JSON object.", details={"body": "expected an object"})
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data
