"""GET /api/v1/levers: the lever board per feature, for service and admin keys."""

from __future__ import annotations

from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response

from budgets.levers import LEVERS, lever_board
from governance.api.base import TenantAPIView
from governance.api.errors import ApiError
from governance.api.fields import DayField, StrictSerializer
from governance.selectors import feature_get
from usage.date_range import MAX_RANGE_DAYS, RangeError, resolve_range


def usd(help_text: str = "USD as a decimal string", **kwargs) -> serializers.CharField:
    return serializers.CharField(help_text=help_text, **kwargs)


def ratio(help_text: str) -> serializers.FloatField:
    return serializers.FloatField(allow_null=True, help_text=f"{help_text} (0..1, 4 places; null when undefined)")


class LeverBudgetStatusOutput(serializers.Serializer):
    id = serializers.CharField()
    name = serializers.CharField()
    scope = serializers.CharField()
    period = serializers.CharField()
    enforcement = serializers.CharField()
    run_id = serializers.CharField(allow_null=True)
    window_start = serializers.CharField(help_text="RFC 3339 UTC")
    window_end = serializers.CharField(allow_null=True, help_text="RFC 3339 UTC; null for total and run budgets")
    limit_usd = usd(allow_null=True)
    spent_usd = usd()
    reserved_usd = usd()
    remaining_usd = usd(allow_null=True)
    limit_tokens = serializers.IntegerField(allow_null=True)
    spent_tokens = serializers.IntegerField()
    reserved_tokens = serializers.IntegerField()
    remaining_tokens = serializers.IntegerField(allow_null=True)
    binding = serializers.BooleanField()
    spent_share = ratio("Spent over the USD limit")
    forecast_usd = usd(
        "Spend at the window's end from the budget's usual weekday and hour pattern (last 1-4 weeks); "
        "null without an end or with less than a week of history",
        allow_null=True,
    )
    forecast_tokens = serializers.IntegerField(allow_null=True)
    forecast_over_limit = serializers.BooleanField()


class LeverRecommendationOutput(serializers.Serializer):
    lever = serializers.ChoiceField(choices=LEVERS)
    text = serializers.CharField(help_text="Plain-language recommendation")
    potential_saving_usd = usd()


class LeverFamilySpendOutput(serializers.Serializer):
    family = serializers.CharField()
    calls = serializers.IntegerField()
    spend_usd = usd()


class LeverModelSpendOutput(serializers.Serializer):
    model = serializers.CharField()
    family = serializers.CharField()
    calls = serializers.IntegerField()
    spend_usd = usd()
    one_tier_down_model = serializers.CharField(allow_null=True, help_text="opus → sonnet → haiku (PRICING.md)")
    one_tier_down_cost_usd = usd("The same usage priced on the model one tier down", allow_null=True)
    potential_saving_usd = usd()


class LeverBaseOutput(serializers.Serializer):
    potential_saving_usd = usd("What this lever could save, measured on the last 7 days of the range")
    recommendation = serializers.CharField(allow_null=True)
    basis = serializers.CharField(help_text="What the figures rest on, in words")


class LeverPulledOutput(serializers.Serializer):
    on = serializers.CharField(help_text="The first day the lever was pulled, YYYY-MM-DD")
    from_model = serializers.CharField(required=False, help_text="Model selection: the model moved off")
    saved_since_usd = usd("What it saved from that day to the end of the range")
    text = serializers.CharField()


class LeverModelSelectionOutput(LeverBaseOutput):
    by_family = LeverFamilySpendOutput(many=True)
    by_model = LeverModelSpendOutput(many=True)
    one_tier_down_cost_usd = usd()
    potential_note = serializers.CharField()
    what_if = serializers.BooleanField(help_text="True: holds only if the smaller model's answers are good enough")
    pulled = LeverPulledOutput(allow_null=True, help_text="Set when the feature moved to a lower tier in the range")


class LeverPromptCachingOutput(LeverBaseOutput):
    input_tokens = serializers.IntegerField(help_text="Uncached input")
    cache_write_5m_tokens = serializers.IntegerField()
    cache_write_1h_tokens = serializers.IntegerField()
    cache_read_tokens = serializers.IntegerField()
    total_input_tokens = serializers.IntegerField()
    average_input_tokens_per_call = serializers.IntegerField()
    cache_read_share = ratio("Share of input read from cache")
    saved_by_caching_usd = usd("Saved vs the same tokens uncached (negative when writes cost more than reads saved)")
    unread_write_tokens = serializers.IntegerField(help_text="Cache writes a day's reads never covered")
    unread_writes_usd = usd("Spent on those writes")
    large_input_little_caching = serializers.BooleanField()
    cached_prefix_tokens_per_call = serializers.IntegerField(help_text="Cache reads and writes per call")
    min_cacheable_tokens = serializers.IntegerField(help_text="The shortest prefix the model caches")
    gaps = inline_serializer("LeverCallGaps", {
        "sampled_calls": serializers.IntegerField(),
        "median_seconds": serializers.IntegerField(allow_null=True),
        "within_5m_share": serializers.FloatField(allow_null=True),
        "within_1h_share": serializers.FloatField(allow_null=True),
    }, help_text="Gaps between the latest calls (ledger), against the 5-minute and 1-hour lifetimes")
    prefix_cost_usd = serializers.DictField(
        child=serializers.CharField(),
        help_text="The cached prefix's cost now (current) and uncached (none), with 5-minute and 1-hour writes",
    )
    current_ttl = serializers.CharField(allow_null=True)
    recommended_ttl = serializers.CharField(allow_null=True, help_text="5m, 1h or none; null: keep as is")


class LeverBatchOutput(LeverBaseOutput):
    latency_tolerant = serializers.BooleanField(help_text="The feature is not interactive")
    batch_spend_usd = usd()
    batch_share = ratio("Share of spend on the batch tier")
    standard_spend_usd = usd()
    movable_spend_usd = usd("Standard-tier spend of a latency-tolerant feature")
    pulled = LeverPulledOutput(allow_null=True, help_text="Set when the feature moved to the batch tier in the range")


class LeverMaxTokensOutput(LeverBaseOutput):
    calls = serializers.IntegerField()
    truncations = serializers.IntegerField(help_text="Calls with stop_reason = max_tokens")
    truncation_rate = ratio("Truncations over calls")
    truncated_spend_usd = usd("Spend's share of truncated calls")
    max_tokens_held = serializers.IntegerField()
    output_tokens_capped = serializers.IntegerField()
    cap_utilisation = ratio("Output tokens over the max_tokens held")
    calls_without_max_tokens = serializers.IntegerField()
    max_tokens_cap = serializers.IntegerField(allow_null=True)
    has_cap = serializers.BooleanField()


class LeverLatencyOutput(LeverBaseOutput):
    interactive = serializers.BooleanField()
    calls = serializers.IntegerField()
    streamed_calls = serializers.IntegerField()
    streamed_share = ratio("Streamed calls over calls")
    ttft_p50_ms = serializers.IntegerField(
        allow_null=True, help_text="Interpolated in fixed histogram buckets; over 60 s reads 60000"
    )
    ttft_p95_ms = serializers.IntegerField(allow_null=True)
    latency_p50_ms = serializers.IntegerField(allow_null=True)
    latency_p95_ms = serializers.IntegerField(allow_null=True)
    ttft_avg_ms = serializers.IntegerField(allow_null=True)
    latency_avg_ms = serializers.IntegerField(allow_null=True)


class LeverBudgetOutput(LeverBaseOutput):
    budgets = LeverBudgetStatusOutput(many=True)


class LeversOutput(serializers.Serializer):
    model_selection = LeverModelSelectionOutput()
    prompt_caching = LeverPromptCachingOutput()
    batch = LeverBatchOutput()
    max_tokens = LeverMaxTokensOutput()
    latency = LeverLatencyOutput()
    budget = LeverBudgetOutput()


class LeverFeatureBoardOutput(serializers.Serializer):
    key = serializers.CharField()
    name = serializers.CharField()
    interactive = serializers.BooleanField()
    max_tokens_cap = serializers.IntegerField(allow_null=True)
    calls = serializers.IntegerField()
    spend_usd = usd()
    recent_calls = serializers.IntegerField(help_text="Calls in the last 7 days of the range")
    recent_spend_usd = usd("Spend in the last 7 days of the range, on which the levers are judged")
    potential_saving_usd = usd("The top recommendation's potential saving")
    recommendation = LeverRecommendationOutput(allow_null=True)
    recommendations = LeverRecommendationOutput(many=True)
    levers = LeversOutput()


class LeverTotalsOutput(serializers.Serializer):
    calls = serializers.IntegerField()
    spend_usd = usd()
    potential_saving_usd = usd("Sum of each feature's top recommendation")
    firm_saving_usd = usd("Measured savings (batch, caching at the gaps seen), each feature's best")
    what_if_saving_usd = usd("A smaller model's savings, if its answers are good enough")


class LeverBoardOutput(serializers.Serializer):
    start = serializers.DateField()
    end = serializers.DateField()
    recent_start = serializers.DateField(help_text="Levers are judged from this day to end (the last 7 days)")
    feature = serializers.CharField(allow_null=True)
    totals = LeverTotalsOutput()
    budgets = LeverBudgetStatusOutput(many=True, help_text="Tenant-wide budgets")
    budget_recommendation = serializers.CharField(
        allow_null=True, help_text="Set when a tenant-wide budget is on pace to overrun"
    )
    features = LeverFeatureBoardOutput(many=True, help_text="Ranked by their top recommendation's potential saving")


class LeverBoardApi(TenantAPIView):
    class InputSerializer(StrictSerializer):
        start = DayField(required=False, help_text="First tenant-local day, YYYY-MM-DD (default: 29 days before end)")
        end = DayField(required=False, help_text="Last tenant-local day (inclusive), YYYY-MM-DD (default: today)")
        feature = serializers.CharField(required=False, max_length=63, help_text="Limit to one feature key")

    @extend_schema(
        summary="The lever board per feature",
        description=(
            "Per feature over the tenant-local days start..end (default: the last 30 days): spend in "
            "the range, and each lever judged on its last 7 days, so a lever already pulled shows as "
            "pulled (batch tier, a lower model tier) with what it saved since. Model tier: one tier down "
            "in today's lineup, a what-if that holds only if the smaller model's answers are good "
            "enough. Prompt caching: the cached prefix actually seen, the gaps between the latest calls "
            "against the 5-minute and 1-hour lifetimes, the write premium and the model's minimum "
            "cacheable length; recommended only where the net saving is positive, naming the TTL. "
            "max_tokens: truncation is a quality signal, never a saving. Totals separate measured "
            "savings (firm_saving_usd: batch, caching) from what-ifs (what_if_saving_usd). Every lever "
            "has a basis: what its figures rest on. Recommendations are ranked by potential saving, "
            "except that a lever keeping the model and its answers saving at least 5% of the "
            "feature's spend comes first. Computed from daily rollups (gaps from the ledger). A key "
            "restricted to some features sees only those."
        ),
        parameters=[
            OpenApiParameter("start", OpenApiTypes.DATE, required=False,
                             description="YYYY-MM-DD (inclusive; default: 29 days before end)"),
            OpenApiParameter("end", OpenApiTypes.DATE, required=False, description="YYYY-MM-DD (inclusive; default: today)"),
            OpenApiParameter("feature", str, required=False, description="A feature key"),
        ],
        responses=LeverBoardOutput,
    )
    def get(self, request):
        params = self.validate(self.InputSerializer, request.query_params.dict())
        today = timezone.now().astimezone(self.tenant.tz).date()
        try:
            start, end = resolve_range(start=params.get("start"), end=params.get("end"), today=today,
                                       max_days=MAX_RANGE_DAYS)
        except RangeError as exc:
            raise ApiError(exc.message, details={exc.field: [exc.message]}) from exc
        feature = None
        if "feature" in params:
            feature = feature_get(tenant=self.tenant, key=params["feature"])
            if feature is None:
                raise ApiError(
                    f"No feature '{params['feature']}'.",
                    code="unknown_feature",
                    details={"feature": params["feature"]},
                )
            self.check_feature_access(feature)
        board = lever_board(
            tenant=self.tenant,
            start=start,
            end=end,
            feature=feature,
            feature_ids=self.policy.key_feature_ids(self.api_key) or None,
        )
        return Response(LeverBoardOutput(board).data)
