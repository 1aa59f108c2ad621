"""Feature endpoints: the policy clients cache, and management CRUD for admin keys."""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.response import Response

from budgets import features as services
from governance import selectors
from governance.api.base import TenantAPIView
from governance.api.errors import ApiError, Conflict, NotFound
from governance.api.fields import StrictSerializer
from governance.models import FailMode, Feature


class FeatureOutput(serializers.ModelSerializer):
    class Meta:
        model = Feature
        fields = [
            "key", "name", "description", "default_model", "allowed_models", "fallback_models",
            "max_tokens_cap", "interactive", "fail_mode", "active", "created_at", "updated_at",
        ]


class FeatureInput(StrictSerializer):
    key = serializers.SlugField(max_length=63)
    name = serializers.CharField(max_length=200)
    description = serializers.CharField(required=False, allow_blank=True, max_length=5000)
    default_model = serializers.CharField(required=False, allow_blank=True, max_length=100)
    allowed_models = serializers.ListField(child=serializers.CharField(max_length=100), required=False, max_length=50)
    fallback_models = serializers.ListField(child=serializers.CharField(max_length=100), required=False, max_length=10)
    max_tokens_cap = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=10_000_000)
    interactive = serializers.BooleanField(required=False)
    fail_mode = serializers.ChoiceField(choices=FailMode.choices, required=False)
    active = serializers.BooleanField(required=False)


def raise_model_errors(exc: DjangoValidationError) -> None:
    raise ApiError("Invalid request.", details={k: v for k, v in exc.message_dict.items()}) from exc


def feature_or_404(tenant, key: str) -> Feature:
    feature = selectors.feature_get(tenant=tenant, key=key)
    if feature is None:
        raise NotFound(f"No feature '{key}'.")
    return feature


def feature_policy(feature: Feature) -> dict:
    from budgets.bodies import budget_statuses

    data = FeatureOutput(feature).data
    data["budgets"] = budget_statuses(tenant=feature.tenant, feature=feature)
    return data


class FeatureListApi(TenantAPIView):
    @extend_schema(
        responses=inline_serializer("FeatureList", {"results": FeatureOutput(many=True)}),
        summary="List features",
        operation_id="features_list",
    )
    def get(self, request):
        features = selectors.feature_list(tenant=self.tenant)
        if self.key_features:
            features = features.filter(pk__in=self.key_features)
        return Response({"results": FeatureOutput(features, many=True).data})

    @extend_schema(request=FeatureInput, responses={201: FeatureOutput}, summary="Create a feature (admin)")
    def post(self, request):
        self.require_admin()
        self.require_whole_tenant("create features")
        data = self.validate(FeatureInput, request.data)
        if selectors.feature_get(tenant=self.tenant, key=data["key"]):
            raise Conflict(f"A feature with key '{data['key']}' exists.", details={"key": data["key"]})
        try:
            feature = services.feature_create(tenant=self.tenant, actor=self.actor, **data)
        except DjangoValidationError as exc:
            raise_model_errors(exc)
        return Response(FeatureOutput(feature).data, status=status.HTTP_201_CREATED)


class FeatureDetailApi(TenantAPIView):
    @extend_schema(responses=OpenApiTypes.OBJECT, summary="A feature's policy and its budgets' current status")
    def get(self, request, key: str):
        feature = feature_or_404(self.tenant, key)
        self.check_feature_access(feature)
        return Response(feature_policy(feature))

    @extend_schema(request=FeatureInput(partial=True), responses=FeatureOutput, summary="Update a feature (admin)")
    def patch(self, request, key: str):
        self.require_admin()
        feature = feature_or_404(self.tenant, key)
        self.check_feature_access(feature)
        data = self.validate(FeatureInput, request.data, partial=True)
        if "key" in data and data["key"] != feature.key and selectors.feature_get(tenant=self.tenant, key=data["key"]):
            raise Conflict(f"A feature with key '{data['key']}' exists.", details={"key": data["key"]})
        try:
            feature = services.feature_update(feature=feature, actor=self.actor, data=data)
        except DjangoValidationError as exc:
            raise_model_errors(exc)
        return Response(FeatureOutput(feature).data)

    @extend_schema(responses={204: None}, summary="Delete a feature with no recorded usage (admin)")
    def delete(self, request, key: str):
        self.require_admin()
        feature = feature_or_404(self.tenant, key)
        self.check_feature_access(feature)
        try:
            services.feature_delete(feature=feature, actor=self.actor)
        except services.FeatureInUse as exc:
            raise Conflict(str(exc)) from exc
        return Response(status=status.HTTP_204_NO_CONTENT)


class WhoAmIApi(TenantAPIView):
    """The cheapest authenticated endpoint: which key and tenant this is (clients check setup with it)."""

    @extend_schema(responses=OpenApiTypes.OBJECT, summary="The calling key, its role and tenant")
    def get(self, request):
        return Response(
            {"tenant": self.tenant.slug, "key_prefix": self.api_key.prefix, "role": self.api_key.role}
        )
