"""One base for every API view: key authentication, tenant scope, role checks, errors, rate limit."""

from __future__ import annotations

from typing import Any

from rest_framework import permissions
from rest_framework.views import APIView

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

    def permission_denied(self, request, message=None, code=None):
        if request.auth is None:
            return super().permission_denied(request, message, code)
        raise Forbidden(message or HasKeyRole.message)

    @property
    def api_key(self) -> ApiKey:
        return self.request.auth

    @property
    def tenant(self) -> Tenant:
        return self.request.auth.tenant

    @property
    def actor(self) -> Actor:
        return Actor(key=self.request.auth)

    def require_admin(self) -> None:
        """Raise 403 unless this is an admin key (for views whose reads are open to service keys)."""
        if not self.api_key.is_admin:
            raise Forbidden("This operation needs an admin API key.")

    def check_feature_access(self, feature: Feature) -> None:
        """Raise 403 when this key is restricted to other features."""
        if not key_may_use_feature(self.api_key, feature):
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


def key_may_use_feature(key: ApiKey, feature: Feature) -> bool:
    allowed = key_feature_ids(key)
    return not allowed or feature.pk in allowed


def key_feature_ids(key: ApiKey) -> frozenset:
    """Return the features this key is restricted to (empty: all), from the tenant's cached policy."""
    from budgets.policy import tenant_policy

    return tenant_policy(key.tenant_id).key_feature_ids(key)
