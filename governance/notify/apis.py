"""Alert channel management, a test send, and alert history (admin keys).

A Slack webhook URL is write-only: responses carry only a hint (host and last characters).
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    extend_schema,
    extend_schema_field,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.response import Response

from governance.api.base import TenantAPIView
from governance.api.errors import ApiError, NotFound
from governance.api.fields import StrictSerializer, nano_to_usd
from governance.api.ids import parse_public_id, public_id
from governance.models import KeyRole
from governance.notify import selectors, services
from governance.notify.models import Alert, AlertChannel, AlertKind, ChannelKind, Notification


def raise_model_errors(exc: DjangoValidationError) -> None:
    details = exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
    raise ApiError(f"Invalid request: check {', '.join(sorted(details))}.", details=details) from exc


class ChannelOutput(serializers.Serializer):
    id = serializers.SerializerMethodField()
    name = serializers.CharField()
    kind = serializers.CharField()
    email_addresses = serializers.ListField(child=serializers.CharField())
    slack_webhook_url_hint = serializers.SerializerMethodField(
        help_text="The saved webhook URL with its secret part hidden; the URL itself is never returned"
    )
    alert_kinds = serializers.ListField(child=serializers.CharField())
    enabled = serializers.BooleanField()
    failing = serializers.BooleanField(help_text="A delivery failed permanently; fix the channel or send a test")
    health = serializers.ChoiceField(
        choices=["ok", "failing", "never_tried"],
        help_text="From its deliveries: failing from the first error (retries too) until one gets through",
    )
    failing_since = serializers.DateTimeField(allow_null=True)
    last_delivered_at = serializers.DateTimeField(allow_null=True, help_text="Last alert or test that got through")
    last_error = serializers.CharField()
    last_error_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()

    def get_id(self, channel: AlertChannel) -> str:
        return public_id(channel)

    def get_slack_webhook_url_hint(self, channel: AlertChannel) -> str | None:
        return channel.slack_webhook_hint or None


class ChannelInput(StrictSerializer):
    name = serializers.CharField(max_length=200)
    kind = serializers.ChoiceField(choices=ChannelKind.choices)
    email_addresses = serializers.ListField(
        child=serializers.EmailField(max_length=254), required=False, max_length=20
    )
    slack_webhook_url = serializers.CharField(
        required=False, allow_blank=True, max_length=500, write_only=True,
        help_text="Slack incoming-webhook URL; stored encrypted and never returned",
    )
    alert_kinds = serializers.ListField(
        child=serializers.ChoiceField(choices=AlertKind.choices), required=False, max_length=10,
        help_text="Alert kinds this channel receives; default all",
    )
    enabled = serializers.BooleanField(required=False)


class ChannelTestOutput(serializers.Serializer):
    delivered = serializers.BooleanField()
    error = serializers.CharField(allow_null=True)
    permanent = serializers.BooleanField(help_text="True when retrying cannot help (e.g. Slack 404)")
    duration_ms = serializers.IntegerField()
    channel = ChannelOutput()


class DeliveryOutput(serializers.Serializer):
    channel = serializers.SerializerMethodField()
    channel_name = serializers.CharField(source="channel.name")
    channel_kind = serializers.CharField(source="channel.kind")
    status = serializers.CharField()
    attempts = serializers.IntegerField()
    error = serializers.CharField()
    duration_ms = serializers.IntegerField(allow_null=True)
    sent_at = serializers.DateTimeField(allow_null=True)

    def get_channel(self, notification: Notification) -> str:
        return public_id(notification.channel)


class AlertOutput(serializers.Serializer):
    id = serializers.SerializerMethodField()
    kind = serializers.CharField()
    title = serializers.CharField()
    body = serializers.CharField()
    budget = serializers.SerializerMethodField()
    threshold = serializers.IntegerField(allow_null=True)
    details = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()
    deliveries = DeliveryOutput(source="notifications", many=True)

    def get_id(self, alert: Alert) -> str:
        return public_id(alert)

    def get_budget(self, alert: Alert) -> str | None:
        return public_id(alert.budget) if alert.budget_id else None

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_details(self, alert: Alert) -> dict[str, Any]:
        return public_details(alert.data or {})


def public_details(data: dict[str, Any]) -> dict[str, Any]:
    """Return an alert's data for clients: money as USD strings, internal ids dropped."""
    details: dict[str, Any] = {}
    for key, value in data.items():
        if key in ("window_id", "budget_id"):
            continue
        if key.endswith("_nano") and (value is None or isinstance(value, int)):
            details[key[: -len("_nano")] + "_usd"] = nano_to_usd(value)
        else:
            details[key] = value
    return details


def channel_or_404(tenant, channel_id: str) -> AlertChannel:
    pk = parse_public_id(channel_id, "alertchannel")
    channel = selectors.channel_get(tenant=tenant, channel_id=pk) if pk else None
    if channel is None:
        raise NotFound("No such alert channel.")
    return channel


class ChannelListApi(TenantAPIView):
    required_role = KeyRole.ADMIN
    whole_tenant_only = "manage alert channels"

    @extend_schema(
        responses=inline_serializer("AlertChannelList", {"results": ChannelOutput(many=True)}),
        summary="List alert channels",
        operation_id="alert_channels_list",
    )
    def get(self, request):
        return Response({"results": ChannelOutput(selectors.channel_list(tenant=self.tenant), many=True).data})

    @extend_schema(request=ChannelInput, responses={201: ChannelOutput}, summary="Create an alert channel")
    def post(self, request):
        data = self.validate(ChannelInput, request.data)
        try:
            channel = services.channel_create(tenant=self.tenant, actor=self.actor, **data)
        except DjangoValidationError as exc:
            raise_model_errors(exc)
        return Response(ChannelOutput(channel).data, status=status.HTTP_201_CREATED)


class ChannelDetailApi(TenantAPIView):
    required_role = KeyRole.ADMIN
    whole_tenant_only = "manage alert channels"

    @extend_schema(responses=ChannelOutput, summary="One alert channel")
    def get(self, request, channel_id: str):
        return Response(ChannelOutput(channel_or_404(self.tenant, channel_id)).data)

    @extend_schema(request=ChannelInput(partial=True), responses=ChannelOutput, summary="Change an alert channel")
    def patch(self, request, channel_id: str):
        channel = channel_or_404(self.tenant, channel_id)
        data = self.validate(ChannelInput, request.data, partial=True)
        if "kind" in data and data["kind"] != channel.kind:
            raise ApiError(
                "A channel's kind cannot change; create a new channel instead.",
                details={"kind": ["Cannot be changed."]},
            )
        try:
            channel = services.channel_update(channel=channel, actor=self.actor, data=data)
        except DjangoValidationError as exc:
            raise_model_errors(exc)
        return Response(ChannelOutput(channel).data)

    @extend_schema(responses={204: None}, summary="Delete an alert channel")
    def delete(self, request, channel_id: str):
        services.channel_delete(channel=channel_or_404(self.tenant, channel_id), actor=self.actor)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ChannelTestApi(TenantAPIView):
    required_role = KeyRole.ADMIN
    whole_tenant_only = "manage alert channels"

    @extend_schema(
        request=None,
        responses=ChannelTestOutput,
        summary="Send a test message through the channel now",
        description="Sends once, without retries, and records the channel's health from the answer: "
        "a success clears `failing`, a permanent error sets it. `delivered` is false when the channel "
        "refused or could not be reached; the request itself still succeeds.",
    )
    def post(self, request, channel_id: str):
        channel = channel_or_404(self.tenant, channel_id)
        result = services.channel_test(channel=channel, actor=self.actor)
        return Response(
            {
                "delivered": result.delivered,
                "error": result.error or None,
                "permanent": result.permanent,
                "duration_ms": result.duration_ms,
                "channel": ChannelOutput(channel).data,
            }
        )


class AlertListQuery(StrictSerializer):
    kind = serializers.ChoiceField(choices=AlertKind.choices, required=False)
    budget = serializers.CharField(required=False, max_length=100)
    limit = serializers.IntegerField(required=False, min_value=1, max_value=500, default=100)

    def validate_budget(self, value: str):
        pk = parse_public_id(value, "budget")
        if pk is None:
            raise serializers.ValidationError("Give a budget id (bud_…).")
        return pk


class AlertListApi(TenantAPIView):
    required_role = KeyRole.ADMIN

    @extend_schema(
        parameters=[
            OpenApiParameter("kind", OpenApiTypes.STR, enum=AlertKind.values),
            OpenApiParameter("budget", OpenApiTypes.STR, description="A budget id: only its alerts"),
            OpenApiParameter("limit", OpenApiTypes.INT, description="1-500, default 100"),
        ],
        responses=inline_serializer("AlertList", {"results": AlertOutput(many=True)}),
        summary="Alert history, newest first, with each delivery's status",
    )
    def get(self, request):
        query = self.validate(AlertListQuery, request.query_params.dict())
        alerts = selectors.alert_list(tenant=self.tenant, kind=query.get("kind"), budget_id=query.get("budget"))
        if self.key_features:
            # A feature-restricted key sees its features' budget alerts, not the tenant's other news.
            alerts = alerts.filter(budget__feature_id__in=self.key_features)
        return Response({"results": AlertOutput(alerts[: query["limit"]], many=True).data})
