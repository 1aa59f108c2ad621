"""Allowance endpoints (hold, commit, release, read) and budget management."""

from __future__ import annotations

from typing import cast

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response

from budgets import bodies, selectors, services
from budgets.models import Budget, Enforcement, Hold, HoldState, Period, Scope
from budgets.policy import TenantPolicy
from governance.api.base import TenantAPIView
from governance.api.errors import ApiError, Forbidden, NotFound
from governance.api.fields import StrictSerializer, UsdField, nano_to_usd, token_count
from governance.api.ids import parse_public_id, public_id
from governance.api.plain import FastInput, PlainCall, plain_view
from governance.models import ApiKey, Tenant
from governance.selectors import feature_get
from usage.models import ServiceTier, Speed
from usage.pricing import TokenUsage
from usage.serializers import CommitInput, validate_metadata

ERROR_STATUS = {"forbidden": 403, "not_found": 404, "conflict": 409, "unavailable": 503}


def raise_allowance_error(exc: services.AllowanceError):
    raise ApiError(exc.message, code=exc.code, status_code=ERROR_STATUS.get(exc.code, 400), details=exc.details)


def statuses(windows, binding_ids=frozenset()) -> list[dict]:
    return [bodies.window_status(w, binding=w.id in binding_ids) for w in windows]


# --- allowances ----------------------------------------------------------------------


class AllowanceInput(StrictSerializer):
    feature = serializers.CharField(max_length=63)
    model = serializers.CharField(max_length=100)
    input_tokens = token_count(help_text="Estimated prompt tokens, cached parts included")
    max_tokens = serializers.IntegerField(min_value=1, max_value=1_000_000)
    cache_read_tokens = token_count(required=False, default=0)
    cache_write_5m_tokens = token_count(required=False, default=0)
    cache_write_1h_tokens = token_count(required=False, default=0)
    service_tier = serializers.ChoiceField(choices=ServiceTier.choices, default=ServiceTier.STANDARD)
    inference_geo = serializers.ChoiceField(
        choices=["global", "us"], default="global", help_text="us: US-only inference (1.1x on newer models)"
    )
    speed = serializers.ChoiceField(choices=Speed.choices, default=Speed.STANDARD, help_text="fast: fast mode")
    max_web_searches = serializers.IntegerField(
        required=False, min_value=0, max_value=10_000, default=0,
        help_text="Most web searches the call may make (the web search tool's max_uses)",
    )
    run_id = serializers.CharField(required=False, allow_blank=True, max_length=200, default="")
    idempotency_key = serializers.CharField(required=False, allow_blank=True, max_length=255, default="")
    ttl_seconds = serializers.IntegerField(required=False, min_value=10, max_value=90000, default=600)
    metadata = serializers.JSONField(required=False, default=dict, validators=[validate_metadata])

    def validate(self, attrs):
        cached = attrs["cache_read_tokens"] + attrs["cache_write_5m_tokens"] + attrs["cache_write_1h_tokens"]
        if cached > attrs["input_tokens"]:
            raise serializers.ValidationError(
                {"input_tokens": ["Must include the declared cache reads and writes."]}
            )
        return attrs


def denial_reason(decision: services.AllowanceDecision) -> str | None:
    """Return why a call may not go ahead, or None when it may.

    ``budget_exhausted`` only when a refusing window is already full (spent + reserved at
    its limit); otherwise this one call is bigger than what remains: ``exceeds_remaining``.
    A repeat of a finished hold says how it finished (``hold_expired`` …).
    """
    if decision.granted:
        return None
    if decision.state != HoldState.DENIED and decision.decision != "denied":
        return f"hold_{decision.state}"
    refusing = [w for w in decision.windows if w.id in decision.binding_ids]
    return "budget_exhausted" if any(selectors.window_full(w) for w in refusing) else "exceeds_remaining"


def allowance_body(decision: services.AllowanceDecision) -> dict:
    granted = decision.granted
    refusing = [w for w in decision.windows if w.id in decision.binding_ids]
    return {
        "id": public_id(decision.hold) if decision.hold else None,
        "granted": granted,
        "decision": decision.decision,
        "state": decision.state,
        "reason": denial_reason(decision),
        "model": decision.model,
        "max_tokens": decision.max_tokens,
        "clamped": decision.clamped,
        "reserved_usd": nano_to_usd(decision.amount_nano if granted else 0),
        "reserved_tokens": decision.tokens if granted else 0,
        "requested_usd": nano_to_usd(decision.amount_nano),
        "requested_tokens": decision.tokens,
        "remaining_usd": nano_to_usd(selectors.least_remaining(refusing, unit="usd")) if refusing else None,
        "remaining_tokens": selectors.least_remaining(refusing, unit="tokens") if refusing else None,
        "expires_at": decision.expires_at,
        "retry_after": decision.retry_after,
        "budgets": statuses(decision.windows, decision.binding_ids),
    }


class AllowanceApi(TenantAPIView):
    @extend_schema(
        request=AllowanceInput,
        responses={201: OpenApiTypes.OBJECT, 200: OpenApiTypes.OBJECT},
        summary="Ask before a call: hold its worst-case cost",
        description="201 when granted or downgraded; 200 with granted=false when denied (nothing is held).",
    )
    def post(self, request):
        data = self.validate(AllowanceInput, request.data)
        body, status_code = allowance_answer(self.tenant, self.api_key, self.policy, data)
        return Response(body, status=status_code)


def allowance_answer(tenant: Tenant, api_key: ApiKey, policy: TenantPolicy, data: dict) -> tuple[dict, int]:
    try:
        decision = services.allowance_request(
            tenant=tenant, api_key=api_key, req=services.AllowanceRequest(**data), policy=policy
        )
    except services.AllowanceError as exc:
        raise_allowance_error(exc)
    return allowance_body(decision), 201 if decision.granted else 200


def hold_body(hold: Hold) -> dict:
    event = hold.usage_event if hold.usage_event_id else None
    return {
        "id": public_id(hold),
        "state": hold.state,
        "feature": hold.feature.key,
        "decision": hold.decision,
        "requested_model": hold.requested_model,
        "model": hold.model,
        "max_tokens": hold.max_tokens,
        "clamped": hold.clamped,
        "service_tier": hold.service_tier,
        "inference_geo": hold.inference_geo,
        "speed": hold.speed,
        "max_web_searches": hold.max_web_searches,
        "run_id": hold.run_id or None,
        "reserved_usd": nano_to_usd(hold.amount_nano),
        "reserved_tokens": hold.tokens,
        "expires_at": hold.expires_at,
        "created_at": hold.created_at,
        "finished_at": hold.finished_at,
        "late": hold.late,
        "cost_usd": nano_to_usd(event.cost_nano) if event else None,
        "usage_event_id": public_id(event) if event else None,
        "metadata": hold.metadata,
    }


class HoldMixin:
    policy: TenantPolicy  # provided by TenantAPIView, which every user of the mixin also subclasses
    api_key: ApiKey

    def hold_id(self, hold_id: str):
        pk = parse_public_id(hold_id, "hold")
        if pk is None:
            raise NotFound("No such allowance.")
        return pk

    @property
    def feature_ids(self) -> frozenset:
        """The features this key may see holds of (empty: all): another feature's hold is a 404."""
        return self.policy.key_feature_ids(self.api_key)


class AllowanceDetailApi(HoldMixin, TenantAPIView):
    @extend_schema(responses=OpenApiTypes.OBJECT, summary="A hold's current state, amounts and expiry")
    def get(self, request, hold_id: str):
        hold = selectors.hold_get(tenant=self.tenant, hold_id=self.hold_id(hold_id))
        if hold is None or hold.state == HoldState.DENIED or (self.feature_ids and hold.feature_id not in self.feature_ids):
            raise NotFound("No such allowance.")
        return Response(hold_body(hold))


class AllowanceCommitApi(HoldMixin, TenantAPIView):
    @extend_schema(request=CommitInput, responses=OpenApiTypes.OBJECT, summary="Report a call's actual usage")
    def post(self, request, hold_id: str):
        pk = self.hold_id(hold_id)
        data = self.validate(CommitInput, request.data)
        return Response(commit_answer(self.tenant, self.api_key, self.policy, pk, data, request.data))


def commit_answer(tenant: Tenant, api_key: ApiKey, policy: TenantPolicy, pk, data: dict, body) -> dict:
    usage = data["usage"]
    commit = services.CommitData(
        usage=TokenUsage.from_anthropic(usage),
        model=data.get("model") or "",
        service_tier=usage.get("service_tier") or "",
        inference_geo=usage.get("inference_geo") or "",
        speed=Speed.FAST if usage.get("speed") == Speed.FAST else (Speed.STANDARD if usage.get("speed") else ""),
        request_id=data.get("request_id") or "",
        stop_reason=data.get("stop_reason") or "",
        latency_ms=data.get("latency_ms"),
        ttft_ms=data.get("ttft_ms"),
        streamed=data.get("streamed"),
        metadata=data.get("metadata") or {},
    )
    fingerprint = services.AllowanceRequest.fingerprint_of(body)
    try:
        result = services.hold_commit(
            tenant=tenant, hold_id=pk, api_key=api_key, data=commit, fingerprint=fingerprint,
            policy=policy, feature_ids=policy.key_feature_ids(api_key),
        )
    except services.AllowanceError as exc:
        raise_allowance_error(exc)
    return {
        "id": public_id(result.hold),
        "state": result.hold.state,
        "model": result.event.model,
        "cost_usd": nano_to_usd(result.event.cost_nano),
        "priced": result.event.priced,
        "off_hold": result.event.off_hold,
        "released_usd": nano_to_usd(result.released_nano),
        "usage_event_id": public_id(result.event),
        "late": result.hold.late,
        "budgets": statuses(result.windows),
    }


# The two calls made around every model call, as plain views (governance/api/plain.py).
ALLOWANCE_INPUT, COMMIT_INPUT = FastInput(AllowanceInput), FastInput(CommitInput)


def allowance_plain(call: PlainCall) -> tuple[dict, int]:
    return allowance_answer(call.tenant, call.api_key, call.policy, call.validate(ALLOWANCE_INPUT))


def commit_plain(call: PlainCall, hold_id: str) -> tuple[dict, int]:
    pk = parse_public_id(hold_id, "hold")
    if pk is None:
        raise NotFound("No such allowance.")
    data = call.validate(COMMIT_INPUT)
    return commit_answer(call.tenant, call.api_key, call.policy, pk, data, call.data), 200


allowance_view = plain_view(AllowanceApi, allowance_plain)
commit_view = plain_view(AllowanceCommitApi, commit_plain)


class AllowanceReleaseApi(HoldMixin, TenantAPIView):
    @extend_schema(request=None, responses=OpenApiTypes.OBJECT, summary="The call did not happen: drop the hold")
    def post(self, request, hold_id: str):
        try:
            hold = services.hold_release(tenant=self.tenant, hold_id=self.hold_id(hold_id), feature_ids=self.feature_ids)
        except services.AllowanceError as exc:
            raise_allowance_error(exc)
        return Response({"id": public_id(hold), "state": hold.state})


# --- budgets ----------------------------------------------------------------------------


class BudgetInput(StrictSerializer):
    name = serializers.CharField(max_length=200)
    scope = serializers.ChoiceField(choices=Scope.choices)
    feature = serializers.CharField(required=False, allow_null=True, max_length=63)
    model_families = serializers.ListField(
        child=serializers.CharField(max_length=40), required=False, max_length=20
    )
    period = serializers.ChoiceField(choices=Period.choices, required=False)
    limit_usd = UsdField(required=False, allow_null=True)
    limit_tokens = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=10**15)
    enforcement = serializers.ChoiceField(choices=Enforcement.choices, required=False)
    thresholds = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=1000), required=False, max_length=20
    )
    forecast_alert = serializers.BooleanField(required=False)
    active = serializers.BooleanField(required=False)


class BudgetMixin:
    tenant: Tenant  # provided by TenantAPIView, which every user of the mixin also subclasses

    def budget_fields(self, data: dict) -> dict:
        fields = dict(data)
        if "limit_usd" in fields:
            fields["limit_nano"] = fields.pop("limit_usd")
        if "feature" in fields:
            key = fields["feature"]
            fields["feature"] = None
            if key:
                feature = feature_get(tenant=self.tenant, key=key)
                if feature is None:
                    raise ApiError(f"No feature '{key}'.", code="unknown_feature", details={"feature": key})
                fields["feature"] = feature
        return fields

    def budget_or_404(self, budget_id: str) -> Budget:
        pk = parse_public_id(budget_id, "budget")
        budget = selectors.budget_get(tenant=self.tenant, budget_id=pk) if pk else None
        if budget is None or not self.may_see(budget):
            raise NotFound("No such budget.")
        return budget

    def may_see(self, budget: Budget) -> bool:
        """A feature-restricted key sees its features' budgets and the tenant-wide ones that count them."""
        allowed = cast(TenantAPIView, self).key_features
        return not allowed or budget.feature_id is None or budget.feature_id in allowed

    def check_may_change(self, budget: Budget) -> None:
        """A feature-restricted key changes only budgets of its own features (tenant-wide ones are broader)."""
        allowed = cast(TenantAPIView, self).key_features
        if allowed and (budget.feature_id is None or budget.feature_id not in allowed):
            raise Forbidden("This API key is restricted to some features; it may only change their budgets.")


def raise_model_errors(exc: DjangoValidationError):
    details = exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
    raise ApiError("Invalid budget: " + "; ".join(f"{k}: {' '.join(v)}" for k, v in details.items()),
                   details=details)


class BudgetListApi(BudgetMixin, TenantAPIView):
    @extend_schema(
        parameters=[OpenApiParameter("feature", OpenApiTypes.STR, description="Only budgets touching this feature")],
        responses=OpenApiTypes.OBJECT,
        summary="Budgets with their current window status, thresholds and forecast",
        operation_id="budgets_list",
    )
    def get(self, request):
        budgets = [b for b in selectors.budget_list(tenant=self.tenant) if self.may_see(b)]
        key = request.query_params.get("feature")
        if key:
            feature = feature_get(tenant=self.tenant, key=key)
            if feature is None:
                raise ApiError(f"No feature '{key}'.", code="unknown_feature", details={"feature": key})
            self.check_feature_access(feature)
            budgets = [b for b in budgets if b.feature_id in (None, feature.pk)]
        return Response({"results": [bodies.budget_detail(b) for b in budgets]})

    @extend_schema(request=BudgetInput, responses={201: OpenApiTypes.OBJECT}, summary="Create a budget (admin)")
    def post(self, request):
        self.require_admin()
        data = self.budget_fields(self.validate(BudgetInput, request.data))
        feature = data.get("feature")
        self.check_may_change(Budget(tenant=self.tenant, feature=feature))
        try:
            budget = services.budget_create(tenant=self.tenant, actor=self.actor, **data)
        except DjangoValidationError as exc:
            raise_model_errors(exc)
        return Response(bodies.budget_detail(budget), status=status.HTTP_201_CREATED)


class BudgetDetailApi(BudgetMixin, TenantAPIView):
    @extend_schema(responses=OpenApiTypes.OBJECT, summary="One budget with its current window")
    def get(self, request, budget_id: str):
        return Response(bodies.budget_detail(self.budget_or_404(budget_id)))

    @extend_schema(request=BudgetInput(partial=True), responses=OpenApiTypes.OBJECT, summary="Update (admin)")
    def patch(self, request, budget_id: str):
        self.require_admin()
        budget = self.budget_or_404(budget_id)
        self.check_may_change(budget)
        data = self.budget_fields(self.validate(BudgetInput, request.data, partial=True))
        if "feature" in data:
            self.check_may_change(Budget(tenant=self.tenant, feature=data["feature"]))
        try:
            budget = services.budget_update(budget=budget, actor=self.actor, data=data)
        except DjangoValidationError as exc:
            raise_model_errors(exc)
        return Response(bodies.budget_detail(budget))

    @extend_schema(responses={204: None}, summary="Delete a budget (admin); its windows go with it")
    def delete(self, request, budget_id: str):
        self.require_admin()
        budget = self.budget_or_404(budget_id)
        self.check_may_change(budget)
        services.budget_delete(budget=budget, actor=self.actor)
        return Response(status=status.HTTP_204_NO_CONTENT)
