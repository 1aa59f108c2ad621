"""API key management (admin keys): create answers the secret once; delete revokes."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.response import Response

from governance import selectors, services
from governance.api.base import TenantAPIView
from governance.api.errors import ApiError, Forbidden, NotFound
from governance.api.fields import StrictSerializer
from governance.api.ids import parse_public_id, public_id
from governance.models import ApiKey, KeyRole


class ApiKeyOutput(serializers.Serializer):
    id = serializers.SerializerMethodField()
    name = serializers.CharField()
    role = serializers.CharField()
    prefix = serializers.CharField()
    features = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()
    last_used_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)

    def get_id(self, key: ApiKey) -> str:
        return public_id(key)

    def get_features(self, key: ApiKey) -> list[str]:
        return sorted(f.key for f in key.features.all())


class ApiKeyCreated(ApiKeyOutput):
    secret = serializers.CharField(help_text="Shown once; store it now")


class ApiKeyInput(StrictSerializer):
    name = serializers.CharField(max_length=200)
    role = serializers.ChoiceField(choices=KeyRole.choices, default=KeyRole.SERVICE)
    features = serializers.ListField(
        child=serializers.SlugField(max_length=63), required=False, default=list, max_length=200,
        help_text="Restrict the key to these feature keys; empty means every feature",
    )


class KeyScopeMixin:
    key_features: frozenset  # provided by TenantAPIView

    def may_see(self, key: ApiKey) -> bool:
        """A feature-restricted key sees only keys restricted to some of its own features."""
        if not self.key_features:
            return True
        features = {f.pk for f in key.features.all()}
        return bool(features) and features <= self.key_features


class ApiKeyListApi(KeyScopeMixin, TenantAPIView):
    required_role = KeyRole.ADMIN

    @extend_schema(
        responses=inline_serializer("ApiKeyList", {"results": ApiKeyOutput(many=True)}),
        summary="List API keys (never their secrets)",
        operation_id="keys_list",
    )
    def get(self, request):
        keys = [k for k in selectors.api_key_list(tenant=self.tenant) if self.may_see(k)]
        return Response({"results": ApiKeyOutput(keys, many=True).data})

    @extend_schema(
        request=ApiKeyInput, responses={201: ApiKeyCreated}, summary="Create an API key",
        description="A key restricted to some features can only create keys restricted to some of those "
        "(403 `forbidden` otherwise), and only revoke such keys.",
    )
    def post(self, request):
        data = self.validate(ApiKeyInput, request.data)
        features = list(selectors.feature_list(tenant=self.tenant).filter(key__in=data["features"]))
        missing = sorted(set(data["features"]) - {f.key for f in features})
        if missing:
            raise ApiError(
                f"Unknown feature(s): {', '.join(missing)}.", code="unknown_feature", details={"features": missing}
            )
        try:
            key, secret = services.api_key_create(
                tenant=self.tenant, actor=self.actor, name=data["name"], role=data["role"], features=features
            )
        except services.KeyBroaderThanActor as exc:
            raise Forbidden(str(exc), details={"features": sorted(data["features"])}) from None
        body = ApiKeyOutput(key).data
        body["secret"] = secret
        return Response(body, status=status.HTTP_201_CREATED)


class ApiKeyDetailApi(KeyScopeMixin, TenantAPIView):
    required_role = KeyRole.ADMIN

    def get_key(self, key_id: str) -> ApiKey:
        pk = parse_public_id(key_id, "apikey")
        key = selectors.api_key_get(tenant=self.tenant, key_id=pk) if pk else None
        if key is None or not self.may_see(key):
            raise NotFound("No such API key.")
        return key

    @extend_schema(responses=ApiKeyOutput, summary="One API key")
    def get(self, request, key_id: str):
        return Response(ApiKeyOutput(self.get_key(key_id)).data)

    @extend_schema(responses={200: ApiKeyOutput}, summary="Revoke an API key (idempotent)")
    def delete(self, request, key_id: str):
        try:
            key = services.api_key_revoke(key=self.get_key(key_id), actor=self.actor)
        except services.KeyBroaderThanActor as exc:
            raise Forbidden(str(exc)) from None
        return Response(ApiKeyOutput(key).data)
