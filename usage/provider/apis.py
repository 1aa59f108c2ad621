"""Provider connection management (admin keys) and the reconciliation report."""

from __future__ import annotations

from datetime import date, timedelta

from django.conf import settings
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response

from governance.api.base import TenantAPIView
from governance.api.errors import ApiError, NotFound
from governance.api.fields import DayField, StrictSerializer, UsdField
from governance.crypto import mask
from governance.models import KeyRole
from governance.selectors import feature_get
from usage.provider import checks, selectors, services
from usage.provider.models import ProviderConnection

MAX_RECONCILIATION_DAYS = 92
MAX_MAPPINGS = 1000


class FeatureMappingField(serializers.DictField):
    def __init__(self, *, id_problem, **kwargs):
        super().__init__(child=serializers.SlugField(max_length=63), **kwargs)
        self.id_problem = id_problem

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        if len(value) > MAX_MAPPINGS:
            raise serializers.ValidationError(f"At most {MAX_MAPPINGS} entries.")
        problems = [p for p in (self.id_problem(key) for key in value) if p]
        if problems:
            raise serializers.ValidationError(problems[:5])
        return value


class SecretField(serializers.CharField):
    """A secret string; a number is a mistake, not something to coerce into a key."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class FeatureMappingSerializer(StrictSerializer):
    api_keys = FeatureMappingField(
        id_problem=checks.api_key_id_problem, required=False,
        help_text="Anthropic api_key_id (apikey_…) → feature key (the finer attribution).",
    )
    workspaces = FeatureMappingField(
        id_problem=checks.workspace_id_problem, required=False,
        help_text="Anthropic workspace_id (wrkspc_…) → feature key (used when the API key is not mapped).",
    )


class ProviderConnectionApi(TenantAPIView):
    """The tenant's Anthropic organisation connection. The admin key is never returned, only masked."""

    required_role = KeyRole.ADMIN
    # Its keys and mapping serve every feature.
    whole_tenant_only = "manage the provider connection"

    class ProviderConnectionInputSerializer(StrictSerializer):
        admin_key = SecretField(
            required=False,
            write_only=True,
            min_length=8,
            max_length=500,
            help_text="Anthropic admin key (sk-ant-admin…) for the usage and cost sync; omit to keep the current one.",
        )
        inference_api_key = SecretField(
            required=False,
            write_only=True,
            allow_blank=True,
            max_length=500,
            help_text=(
                "Anthropic API key (sk-ant-api…) the gateway (/anthropic/v1/messages) calls with; omit to keep "
                "the current one, \"\" to remove it. Creating a connection needs this or admin_key."
            ),
        )
        workspace_ids = serializers.ListField(
            child=serializers.CharField(max_length=200), required=False, max_length=100,
            help_text="Only sync these Anthropic workspaces; empty means all.",
        )
        enabled = serializers.BooleanField(required=False)
        feature_mapping = FeatureMappingSerializer(required=False)

        def validate_admin_key(self, value: str) -> str:
            if any(c.isspace() for c in value):
                raise serializers.ValidationError("An admin key has no whitespace.")
            problem = checks.admin_key_problem(value)
            if problem:
                raise serializers.ValidationError(problem)
            return value

        def validate_inference_api_key(self, value: str) -> str:
            problem = checks.inference_key_problem(value) if value else None
            if problem:
                raise serializers.ValidationError(problem)
            return value

        def validate_workspace_ids(self, value: list[str]) -> list[str]:
            problems = [p for p in (checks.workspace_id_problem(w) for w in value) if p]
            if problems:
                raise serializers.ValidationError(problems[:5])
            return value

    class ProviderConnectionOutputSerializer(serializers.Serializer):
        admin_key = serializers.SerializerMethodField(help_text="The key, masked: only its last characters.")
        inference_api_key = serializers.SerializerMethodField(
            help_text="The gateway's Anthropic API key, masked; \"\" when none is set."
        )
        base_url = serializers.SerializerMethodField()
        workspace_ids = serializers.ListField(child=serializers.CharField())
        enabled = serializers.BooleanField()
        status = serializers.CharField(help_text="pending, ok, error (retrying) or failing (needs attention)")
        last_error = serializers.CharField()
        last_error_at = serializers.DateTimeField(allow_null=True)
        usage_synced_until = serializers.DateTimeField(allow_null=True)
        usage_synced_at = serializers.DateTimeField(allow_null=True)
        cost_synced_until = serializers.DateTimeField(allow_null=True)
        cost_synced_at = serializers.DateTimeField(allow_null=True)
        feature_mapping = serializers.SerializerMethodField()
        created_at = serializers.DateTimeField()
        updated_at = serializers.DateTimeField()

        def get_admin_key(self, obj: ProviderConnection) -> str:
            return mask(obj.admin_key)

        def get_inference_api_key(self, obj: ProviderConnection) -> str:
            return mask(obj.inference_api_key)

        def get_base_url(self, obj: ProviderConnection) -> str:
            return obj.base_url or settings.ANTHROPIC_API_BASE_URL

        def get_feature_mapping(self, obj: ProviderConnection) -> dict[str, dict[str, str]]:
            return selectors.connection_mapping(connection=obj)

    def _connection(self) -> ProviderConnection:
        connection = selectors.connection_get(tenant=self.tenant)
        if connection is None:
            raise NotFound("This tenant has no provider connection.")
        return connection

    @extend_schema(
        responses=ProviderConnectionOutputSerializer, summary="The Anthropic provider connection (admin)"
    )
    def get(self, request):
        return Response(self.ProviderConnectionOutputSerializer(self._connection()).data)

    @extend_schema(
        request=ProviderConnectionInputSerializer,
        responses={200: ProviderConnectionOutputSerializer, 201: ProviderConnectionOutputSerializer},
        summary="Create or update the Anthropic provider connection (admin)",
        description=(
            "Fields left out keep their value; `feature_mapping`, when given, replaces the whole mapping. "
            "A new key or workspace filter resets the status so the next sync tries again. "
            "The API base URL is the server's ANTHROPIC_API_BASE_URL setting; a per-connection override "
            "is for operators (Django admin), so a tenant cannot point the server at internal hosts."
        ),
    )
    def put(self, request):
        data = self.validate(self.ProviderConnectionInputSerializer, request.data)
        existed = selectors.connection_get(tenant=self.tenant) is not None
        if not existed and not data.get("admin_key") and not data.get("inference_api_key"):
            raise ApiError("An admin key or an inference API key is needed to create the connection.",
                           details={"admin_key": ["This field is required."]})
        try:
            connection = services.provider_connection_save(tenant=self.tenant, actor=self.actor, **data)
        except services.UnknownFeatures as exc:
            raise ApiError(str(exc), code="unknown_feature", details={"feature_mapping": exc.keys}) from exc
        return Response(
            self.ProviderConnectionOutputSerializer(connection).data,
            status=status.HTTP_200_OK if existed else status.HTTP_201_CREATED,
        )

    @extend_schema(responses={204: None}, summary="Delete the provider connection and forget its key (admin)")
    def delete(self, request):
        services.provider_connection_delete(connection=self._connection(), actor=self.actor)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ProviderConnectionTestApi(TenantAPIView):
    """Call Anthropic's Admin API once with the saved connection and say what it answered."""

    required_role = KeyRole.ADMIN
    whole_tenant_only = "manage the provider connection"

    class OutputSerializer(serializers.Serializer):
        ok = serializers.BooleanField()
        message = serializers.CharField()
        status = serializers.IntegerField(allow_null=True, help_text="Anthropic's HTTP status; null if unreachable")
        duration_ms = serializers.IntegerField()

    @extend_schema(
        request=None, responses=OutputSerializer, summary="Test the Anthropic connection (admin)",
        description=(
            "Reads the last full hour of the usage report once, without retries, and reports the "
            "answer. Nothing is stored and the sync is not affected."
        ),
    )
    def post(self, request):
        connection = selectors.connection_get(tenant=self.tenant)
        if connection is None:
            raise NotFound("This tenant has no provider connection.")
        result = checks.connection_test(
            admin_key=connection.admin_key, base_url=connection.base_url or None,
            workspace_ids=list(connection.workspace_ids) or None,
        )
        return Response(self.OutputSerializer(result).data)


class ReconciledModelOutput(serializers.Serializer):
    model = serializers.CharField(help_text="Blank: provider cost the report names no model for")
    metered_usd = UsdField(source="metered_nano")
    provider_usage_usd = UsdField(source="provider_usage_nano", allow_null=True)
    provider_cost_usd = UsdField(source="provider_cost_nano", allow_null=True)
    unpriced_tokens = serializers.IntegerField(help_text="Provider tokens of models with no price")


class ReconciledDayOutput(serializers.Serializer):
    day = serializers.DateField()
    metered_usd = UsdField(source="metered_nano")
    provider_usage_usd = UsdField(
        source="provider_usage_nano", allow_null=True,
        help_text="The usage report's tokens priced by our table; null when not synced for the day",
    )
    provider_cost_usd = UsdField(
        source="provider_cost_nano", allow_null=True,
        help_text="The cost report (UTC days; lags up to a day; no priority tier); null when not synced",
    )
    basis = serializers.CharField(allow_null=True, help_text="usage, cost, or null: what drift compares to")
    unmetered_usd = UsdField(source="unmetered_nano", allow_null=True, help_text="Provider minus metered")
    drift_pct = serializers.DecimalField(
        max_digits=24, decimal_places=2, allow_null=True,
        help_text="Unmetered as a percentage of metered spend; null when nothing was metered",
    )
    usage_drifting = serializers.BooleanField(
        help_text="The usage report (priced by the catalog) exceeds the ledger beyond the tolerance: unmetered calls"
    )
    bill_ledger_usd = UsdField(
        source="bill_metered_nano", allow_null=True,
        help_text="The ledger over the cost report's UTC day, less priority tier; null until the bill settles",
    )
    bill_difference_usd = UsdField(source="bill_diff_nano", allow_null=True, help_text="Cost report minus ledger")
    bill_drift_pct = serializers.DecimalField(
        max_digits=24, decimal_places=2, allow_null=True, help_text="Cost report minus ledger, percent of the ledger",
    )
    bill_drifting = serializers.BooleanField(
        help_text="The cost report (the bill) and the ledger disagree beyond the tolerance, either way"
    )
    drifting = serializers.BooleanField(help_text="Either check drifts")
    models = ReconciledModelOutput(many=True)


class ReconciledFeatureOutput(serializers.Serializer):
    feature = serializers.CharField(source="feature_key", help_text="The feature's key")
    feature_name = serializers.CharField()
    mapped_ids = serializers.ListField(
        child=serializers.CharField(), help_text="The Anthropic API key and workspace ids mapped to the feature"
    )
    metered_usd = UsdField(source="metered_nano", help_text="The ledger: the feature's calls that UTC day")
    provider_usage_usd = UsdField(
        source="provider_usage_nano", allow_null=True,
        help_text="The usage report of the mapped ids, priced by the catalog; null when not synced for the day",
    )
    unpriced_tokens = serializers.IntegerField(help_text="Mapped provider tokens of models with no price")
    usage_difference_usd = UsdField(source="usage_diff_nano", allow_null=True, help_text="Usage report minus ledger")
    usage_drift_pct = serializers.DecimalField(
        max_digits=24, decimal_places=2, allow_null=True,
        help_text="Usage report minus ledger, percent of the ledger; null when nothing was metered",
    )
    usage_drifting = serializers.BooleanField(
        help_text="The usage report and the ledger disagree beyond the tolerance, either way, on a complete day"
    )
    provider_cost_usd = UsdField(
        source="provider_cost_nano", allow_null=True,
        help_text=(
            "The cost report of the workspaces mapped to the feature; null when it cannot be attributed to the "
            "feature alone (mapped by API key only, or a workspace shared with other features) or is not synced"
        ),
    )
    bill_ledger_usd = UsdField(
        source="bill_metered_nano", allow_null=True,
        help_text="The ledger less priority tier, to compare with the cost report; null until the bill settles",
    )
    bill_difference_usd = UsdField(source="bill_diff_nano", allow_null=True, help_text="Cost report minus ledger")
    bill_drift_pct = serializers.DecimalField(
        max_digits=24, decimal_places=2, allow_null=True, help_text="Cost report minus ledger, percent of the ledger",
    )
    bill_drifting = serializers.BooleanField(help_text="The cost report and the ledger disagree beyond the tolerance")
    complete = serializers.BooleanField(help_text="The UTC day is over and the usage report was read since")
    drifting = serializers.BooleanField(help_text="Either check drifts (a drift alert names the feature)")
    status = serializers.ChoiceField(
        choices=["ok", "provider_higher", "ledger_higher", "open", "not_synced"],
        help_text="provider_higher or ledger_higher: which side diverged; open: the day is not over yet",
    )


class ReconciledFeatureDayOutput(serializers.Serializer):
    day = serializers.DateField(help_text="A UTC day")
    unattributed_usage_usd = UsdField(
        source="unattributed_usage_nano", allow_null=True,
        help_text="Usage report spend no mapped feature accounts for (counted in the tenant's figures only)",
    )
    features = ReconciledFeatureOutput(many=True)


class ReconciliationApi(TenantAPIView):
    """Metered spend (the ledger) against the provider's usage (priced by our table) and cost."""

    class ReconciliationQuerySerializer(StrictSerializer):
        start = DayField(required=False, help_text="First tenant-local day (default: 6 days before end)")
        end = DayField(required=False, help_text="Last tenant-local day (default: today)")
        feature = serializers.CharField(required=False, max_length=63, help_text="Only this feature's rows")

    class ReconciliationOutputSerializer(serializers.Serializer):
        start = serializers.DateField()
        end = serializers.DateField()
        timezone = serializers.CharField()
        tolerance_pct = serializers.DecimalField(max_digits=5, decimal_places=2)
        connection_status = serializers.CharField(allow_null=True)
        days = ReconciledDayOutput(many=True)
        feature_days = ReconciledFeatureDayOutput(
            many=True, help_text="Per UTC day from start to end: each mapped feature against its share of the reports",
        )

    @extend_schema(
        parameters=[
            OpenApiParameter("start", date, description="First tenant-local day, YYYY-MM-DD"),
            OpenApiParameter("end", date, description="Last tenant-local day, YYYY-MM-DD (at most 92 days)"),
            OpenApiParameter("feature", str, description="A feature key: only its rows in feature_days"),
        ],
        responses=ReconciliationOutputSerializer,
        summary="Reconciliation: metered vs provider-reported spend per day, model and mapped feature",
        description=(
            "Computed on demand from the ledger's daily rollups and the synced provider reports. "
            "Days are the tenant's local days; `drifting` is true when unmetered spend exceeds the tenant's "
            "`drift_tolerance_pct` of metered spend (a `drift` alert is raised hourly for such days). "
            "`feature_days` compares, per UTC day, each feature with Anthropic API keys or workspaces mapped to "
            "it against the usage (and, for a workspace of its own, the cost) those ids report; a feature "
            "drifting either way beyond the tolerance raises one `drift` alert for the day."
        ),
    )
    def get(self, request):
        query = self.validate(self.ReconciliationQuerySerializer, request.query_params.dict())
        end = query.get("end") or timezone.now().astimezone(self.tenant.tz).date()
        start = query.get("start") or end - timedelta(days=6)
        if start > end:
            raise ApiError("start must not be after end.", details={"start": ["Must not be after end."]})
        if (end - start).days >= MAX_RECONCILIATION_DAYS:
            raise ApiError(f"At most {MAX_RECONCILIATION_DAYS} days at a time.",
                           details={"end": [f"At most {MAX_RECONCILIATION_DAYS} days after start."]})
        feature_ids = set(self.key_features) or None
        if query.get("feature"):
            feature = feature_get(tenant=self.tenant, key=query["feature"])
            if feature is None:
                raise ApiError(f"No feature '{query['feature']}'.", code="unknown_feature",
                               details={"feature": query["feature"]})
            self.check_feature_access(feature)
            feature_ids = {feature.pk}
        # The organisation's days hold every feature's spend: a feature-restricted key sees its
        # features' rows in feature_days only.
        days = [] if self.key_features else selectors.reconciliation_compute(tenant=self.tenant, start=start, end=end)
        feature_days = selectors.feature_reconciliation_compute(
            tenant=self.tenant, start=start, end=end, feature_ids=feature_ids
        )
        connection = selectors.connection_get(tenant=self.tenant)
        return Response(
            {
                "start": start.isoformat(),
                "end": end.isoformat(),
                "timezone": self.tenant.timezone,
                "tolerance_pct": f"{self.tenant.drift_tolerance_pct:.2f}",
                "connection_status": connection.status if connection else None,
                "days": ReconciledDayOutput(days, many=True).data,
                "feature_days": ReconciledFeatureDayOutput(feature_days, many=True).data,
            }
        )
