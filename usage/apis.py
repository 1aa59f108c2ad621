"""Usage endpoints: report usage without a hold, and the grouped summary."""

from __future__ import annotations

from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.response import Response

from budgets.services import usage_report
from governance.api.base import TenantAPIView
from governance.api.errors import ApiError, Forbidden
from governance.api.fields import DayField, StrictSerializer, nano_to_usd
from governance.api.ids import public_id
from governance.selectors import feature_get
from usage import selectors
from usage.date_range import RangeError, resolve_range
from usage.models import ServiceTier, Speed
from usage.pricing import TokenUsage
from usage.serializers import UsageEventInput
from usage.services import UsageConflict, UsageInput

MAX_EVENTS = 1000


class UsageResult(serializers.Serializer):
    request_id = serializers.CharField()
    status = serializers.ChoiceField(choices=["recorded", "duplicate"])
    cost_usd = serializers.CharField()
    priced = serializers.BooleanField(help_text="False: no price is known for the model; recorded with its tokens")
    off_hold = serializers.BooleanField(help_text="True: this spend took an enforcing budget past its limit")
    usage_event_id = serializers.CharField()


class UsageReportApi(TenantAPIView):
    @extend_schema(
        request=UsageEventInput,
        responses={201: inline_serializer("UsageResults", {"results": UsageResult(many=True)})},
        summary="Report usage without a hold (one event, or {\"events\": [...]} up to 1,000)",
        description="Idempotent per request_id. All-or-nothing validation: one invalid event makes it 400 "
        "with details naming its index. Always recorded, even over budget.",
    )
    def post(self, request):
        body = request.data
        if not isinstance(body, dict):
            raise ApiError("The body must be a JSON object.", details={"body": "expected an object"})
        if "events" in body:
            events = body["events"]
            if set(body) != {"events"}:
                raise ApiError("A batch body has only 'events'.", details={"body": "unexpected keys"})
            if not isinstance(events, list) or not events:
                raise ApiError("'events' must be a non-empty list.", details={"events": "expected a list"})
            if len(events) > MAX_EVENTS:
                raise ApiError(
                    f"At most {MAX_EVENTS} events per batch; got {len(events)}.",
                    code="too_large", status_code=413, details={"events": len(events)},
                )
        else:
            events = [body]
        # One list serializer validates the whole batch: its fields are built once, not per event.
        serializer = UsageEventInput(data=events, many=True, max_length=MAX_EVENTS)
        if not serializer.is_valid():
            errors = serializer.errors
            if isinstance(errors, dict):  # the list itself is malformed
                raise ApiError("Invalid events.", details={"errors": errors})
            index = next(i for i, e in enumerate(errors) if e)
            raise ApiError(
                f"events[{index}]: invalid fields.",
                details={"index": index, "errors": errors[index]},
            )
        features: dict[str, object] = {}
        items = [self._item(index, data, features) for index, data in enumerate(serializer.validated_data)]
        try:
            results = usage_report(tenant=self.tenant, api_key=self.api_key, items=items, policy=self.policy)
        except UsageConflict as exc:
            index = next(i for i, item in enumerate(items) if item.request_id == exc.request_id)
            raise ApiError(
                f"events[{index}]: {exc}", code="conflict", status_code=409,
                details={"index": index, "request_id": exc.request_id},
            ) from None
        return Response(
            {
                "results": [
                    {
                        "request_id": r.event.request_id,
                        "status": "recorded" if r.created else "duplicate",
                        "cost_usd": nano_to_usd(r.event.cost_nano),
                        "priced": r.event.priced,
                        "off_hold": r.event.off_hold,
                        "usage_event_id": public_id(r.event),
                    }
                    for r in results
                ]
            },
            status=status.HTTP_201_CREATED,
        )

    def _item(self, index: int, data: dict, features: dict) -> UsageInput:
        def fail(message: str, code: str, details: dict, status_code: int | None = None):
            raise ApiError(f"events[{index}]: {message}", code=code, status_code=status_code,
                           details={"index": index, **details})

        key = data["feature"]
        if key not in features:
            features[key] = feature_get(tenant=self.tenant, key=key)
            if features[key] is not None:
                try:
                    self.check_feature_access(features[key])
                except Forbidden as exc:
                    fail(str(exc.detail), "forbidden", {"feature": key}, status_code=403)
        feature = features[key]
        if feature is None:
            fail(f"no feature '{key}'.", "unknown_feature", {"feature": key})
        usage = data["usage"]
        return UsageInput(
            feature=feature,
            model=data["model"],
            usage=TokenUsage.from_anthropic(usage),
            service_tier=usage.get("service_tier") or ServiceTier.STANDARD,
            inference_geo=usage.get("inference_geo") or "",
            speed=Speed.FAST if usage.get("speed") == Speed.FAST else Speed.STANDARD,
            request_id=data["request_id"],
            run_id=data.get("run_id", ""),
            occurred_at=data.get("occurred_at"),
            stop_reason=data.get("stop_reason") or "",
            latency_ms=data.get("latency_ms"),
            ttft_ms=data.get("ttft_ms"),
            streamed=data.get("streamed"),
            metadata=data.get("metadata") or {},
        )


class SummaryQuery(StrictSerializer):
    start = DayField(
        required=False, help_text="First tenant-local day (default: 29 days before end); at most 731 days before end"
    )
    end = DayField(required=False, help_text="Last tenant-local day, inclusive (default: today)")
    group_by = serializers.CharField(required=False, default="feature", help_text="Comma list of: "
                                     + ", ".join(selectors.GROUPS))
    feature = serializers.CharField(required=False, max_length=63)

    def validate_group_by(self, value: str) -> list[str]:
        groups = [g.strip() for g in value.split(",") if g.strip()]
        unknown = [g for g in groups if g not in selectors.GROUPS]
        if unknown:
            raise serializers.ValidationError(f"Unknown group(s): {', '.join(unknown)}.")
        return list(dict.fromkeys(groups))

    def validate(self, attrs):
        if attrs.get("start") and attrs.get("end") and attrs["start"] > attrs["end"]:
            raise serializers.ValidationError({"start": ["Must not be after end."]})
        return attrs


class UsageSummaryApi(TenantAPIView):
    @extend_schema(
        parameters=[
            OpenApiParameter("start", OpenApiTypes.DATE), OpenApiParameter("end", OpenApiTypes.DATE),
            OpenApiParameter("group_by", OpenApiTypes.STR, description="feature, model, day, service_tier, family"),
            OpenApiParameter("feature", OpenApiTypes.STR),
        ],
        responses={200: OpenApiTypes.OBJECT},
        summary="Cost, calls and tokens by type, grouped (from daily rollups)",
    )
    def get(self, request):
        query = self.validate(SummaryQuery, request.query_params.dict())
        today = timezone.now().astimezone(self.tenant.tz).date()
        try:
            start, end = resolve_range(start=query.get("start"), end=query.get("end"), today=today)
        except RangeError as exc:
            raise ApiError(exc.message, details={exc.field: [exc.message]}) from exc
        feature = None
        if query.get("feature"):
            feature = feature_get(tenant=self.tenant, key=query["feature"])
            if feature is None:
                raise ApiError(f"No feature '{query['feature']}'.", code="unknown_feature",
                               details={"feature": query["feature"]})
            self.check_feature_access(feature)
        elif self.key_features:
            # A restricted key sees only its features' spend, and the summary sums one feature or all.
            if len(self.key_features) != 1:
                raise Forbidden("This API key is restricted to some features: name one with feature=KEY.")
            feature = self.policy.feature_by_id(next(iter(self.key_features)))
        summary = selectors.usage_summary(
            tenant=self.tenant, start=start, end=end, group_by=query["group_by"], feature=feature
        )
        return Response(summary_body(summary))


def summary_body(summary: dict) -> dict:
    """The contract's usage summary: each row's and the total's ``cost_nano`` as ``cost_usd``."""

    def shaped(row: dict) -> dict:
        out = {k: v for k, v in row.items() if k != "cost_nano"}
        out["cost_usd"] = nano_to_usd(row["cost_nano"])
        return out

    return {**summary, "rows": [shaped(r) for r in summary["rows"]], "total": shaped(summary["total"])}
