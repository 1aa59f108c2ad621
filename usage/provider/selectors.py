"""Reads of the provider sync: the connection, its mapping, and reconciliation per day and model."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django.db.models import F, Q, Sum
from django.db.models.functions import Coalesce, TruncDate
from django.utils import timezone

from governance.models import Tenant
from usage.models import NANO, ServiceTier, UsageEvent, UsageRollup
from usage.provider.models import (
    ConnectionStatus,
    MappingKind,
    ProviderConnection,
    ProviderCostBucket,
    ProviderFeatureMapping,
    ProviderUsageBucket,
)

# Below this, unmetered spend is rounding and timing noise, not a service calling Claude behind
# Comptroller's back; a day with nothing metered would otherwise alert on a single cent.
DRIFT_MIN_NANO = NANO // 100
FAILING_RETRY_AFTER = timedelta(hours=1)
# The cost report lags up to a day: a UTC day's bill is compared with the ledger once this
# long after it began (it is still corrected later; each correction is compared again).
BILL_SETTLES_AFTER = timedelta(days=2)
# A feature's UTC day is judged once a usage sync has read this long after the day ended:
# before that its last minutes may be missing from the report, and the ledger would look higher.
USAGE_SETTLES_AFTER = timedelta(hours=2)


def connection_get(*, tenant: Tenant) -> ProviderConnection | None:
    return ProviderConnection.objects.filter(tenant=tenant).select_related("tenant").first()


def connection_mapping(*, connection: ProviderConnection) -> dict[str, dict[str, str]]:
    """Return the mapping as the API shows it: Anthropic id → feature key, per kind."""
    out: dict[str, dict[str, str]] = {"api_keys": {}, "workspaces": {}}
    names: dict[str, str] = {MappingKind.API_KEY: "api_keys", MappingKind.WORKSPACE: "workspaces"}
    if connection.pk is None:
        return out
    mappings = connection.mappings.filter(feature__tenant_id=connection.tenant_id)
    for kind, provider_id, key in mappings.values_list("kind", "provider_id", "feature__key"):
        out[names[kind]][provider_id] = key
    return out


def connection_ids_due(*, now: datetime) -> list:
    """Return the connections a beat run should sync.

    A failing connection (rejected key, bad configuration) is tried only hourly, so
    it is not hammered every five minutes; saving a new key makes it due at once.
    """
    active = ProviderConnection.objects.filter(enabled=True, tenant__active=True).exclude(admin_key="")
    due = active.exclude(status=ConnectionStatus.FAILING) | active.filter(
        status=ConnectionStatus.FAILING, last_attempt_at__lt=now - FAILING_RETRY_AFTER
    )
    return list(due.values_list("pk", flat=True))


def tenant_ids_to_reconcile() -> list[int]:
    return list(
        ProviderConnection.objects.filter(tenant__active=True).exclude(admin_key="").values_list("tenant_id", flat=True)
    )


# --- reconciliation -----------------------------------------------------------------------------


@dataclass
class ReconciledLine:
    """One model on one day: what the ledger metered, and what the provider reports."""

    model: str
    metered_nano: int = 0
    provider_usage_nano: int | None = None
    provider_cost_nano: int | None = None
    unpriced_tokens: int = 0


@dataclass
class ReconciledDay:
    day: date
    tolerance_pct: Decimal
    models: list[ReconciledLine] = field(default_factory=list)
    metered_nano: int = 0
    provider_usage_nano: int | None = None
    provider_cost_nano: int | None = None
    # The ledger over the cost report's UTC day, less priority tier (which the cost report
    # omits); None until that day's cost is read and settled (the bill lags a day).
    bill_metered_nano: int | None = None

    @property
    def bill_diff_nano(self) -> int | None:
        """Return the cost report (the bill) minus the ledger for the same UTC day."""
        if self.bill_metered_nano is None or self.provider_cost_nano is None:
            return None
        return self.provider_cost_nano - self.bill_metered_nano

    @property
    def bill_drift_pct(self) -> Decimal | None:
        diff = self.bill_diff_nano
        if diff is None or not self.bill_metered_nano:
            return None
        return (Decimal(diff) * 100 / self.bill_metered_nano).quantize(Decimal("0.01"), ROUND_HALF_UP)

    @property
    def bill_drifting(self) -> bool:
        """Whether the bill and the ledger disagree, either way, beyond the tolerance.

        Unmetered calls, a wrong or missing price, fast mode or code execution the ledger
        does not see: this catches what the usage check (priced by our own table) cannot.
        """
        diff = self.bill_diff_nano
        if diff is None or abs(diff) < DRIFT_MIN_NANO:
            return False
        if not self.bill_metered_nano:
            return True
        return Decimal(abs(diff)) * 100 > self.tolerance_pct * self.bill_metered_nano

    @property
    def basis(self) -> str | None:
        """Which provider figure drift is measured against.

        The usage report priced by our own table, when it covers the day: it is
        complete (the cost report omits priority tier), arrives within minutes and
        uses the same prices as the ledger, so a gap is unmetered calls and not a
        price difference. The cost report otherwise.
        """
        if self.provider_usage_nano is not None:
            return "usage"
        if self.provider_cost_nano is not None:
            return "cost"
        return None

    @property
    def provider_nano(self) -> int | None:
        return self.provider_usage_nano if self.basis == "usage" else self.provider_cost_nano

    @property
    def unmetered_nano(self) -> int | None:
        provider = self.provider_nano
        return None if provider is None else provider - self.metered_nano

    @property
    def drift_pct(self) -> Decimal | None:
        """Return unmetered spend as a percentage of metered spend (None when nothing was metered)."""
        unmetered = self.unmetered_nano
        if unmetered is None or self.metered_nano == 0:
            return None
        return (Decimal(unmetered) * 100 / self.metered_nano).quantize(Decimal("0.01"), ROUND_HALF_UP)

    @property
    def drifting(self) -> bool:
        """Whether either check drifts: unmetered spend (usage report) or the bill (cost report)."""
        return self.usage_drifting or self.bill_drifting

    @property
    def usage_drifting(self) -> bool:
        unmetered = self.unmetered_nano
        if unmetered is None or unmetered < DRIFT_MIN_NANO:
            return False
        if self.metered_nano == 0:
            return True
        return Decimal(unmetered) * 100 > self.tolerance_pct * self.metered_nano


def _is_utc(tz) -> bool:
    probe = datetime(2026, 1, 1, tzinfo=UTC)
    return all(probe.replace(month=m).astimezone(tz).utcoffset() == timedelta(0) for m in (1, 7))


def _covered(synced_from: datetime | None, synced_until: datetime | None, day_start: datetime) -> bool:
    return synced_from is not None and synced_until is not None and synced_from <= day_start < synced_until


def reconciliation_compute(*, tenant: Tenant, start: date, end: date, now: datetime | None = None
                           ) -> list[ReconciledDay]:
    """Return metered vs provider spend per tenant-local day in [start, end] and per model.

    Metered spend comes from the ledger's daily rollups; provider usage from the hourly
    buckets, each counted on the tenant-local day its hour starts; provider cost from
    the cost report, whose days are UTC days (the same days for a UTC tenant).
    A provider figure is None for a day the sync has not read.
    """
    tz = tenant.tz
    now = now or timezone.now()
    connection = connection_get(tenant=tenant)
    days: dict[date, ReconciledDay] = {}
    lines: dict[tuple[date, str], ReconciledLine] = {}
    current = start
    while current <= end:
        days[current] = ReconciledDay(day=current, tolerance_pct=Decimal(tenant.drift_tolerance_pct))
        current += timedelta(days=1)

    def line(day: date, model: str) -> ReconciledLine:
        if (day, model) not in lines:
            lines[(day, model)] = ReconciledLine(model=model)
        return lines[(day, model)]

    def local_start(day: date) -> datetime:
        return datetime.combine(day, time(), tzinfo=tz).astimezone(UTC)

    for row in (
        UsageRollup.objects.filter(tenant=tenant, day__gte=start, day__lte=end)
        .values("day", "model")
        .annotate(cost=Sum("cost_nano"))
    ):
        line(row["day"], row["model"]).metered_nano += row["cost"] or 0

    if connection is not None:
        usage_days = {
            d for d in days if _covered(connection.usage_synced_from, connection.usage_synced_until, local_start(d))
        }
        for d in usage_days:
            days[d].provider_usage_nano = 0
        tokens = (
            F("uncached_input_tokens") + F("output_tokens") + F("cache_write_5m_tokens")
            + F("cache_write_1h_tokens") + F("cache_read_tokens")
        )
        usage = (
            ProviderUsageBucket.objects.filter(
                tenant=tenant,
                bucket_start__gte=local_start(start),
                bucket_start__lt=local_start(end + timedelta(days=1)),
            )
            .values("bucket_start", "canonical_model", "model")
            .annotate(
                cost=Coalesce(Sum("cost_nano"), 0),
                unpriced=Coalesce(Sum(tokens, filter=Q(cost_nano__isnull=True)), 0),
            )
        )
        for usage_row in usage:
            day = usage_row["bucket_start"].astimezone(tz).date()
            if day not in usage_days:
                continue
            item = line(day, usage_row["canonical_model"] or usage_row["model"])
            item.provider_usage_nano = (item.provider_usage_nano or 0) + usage_row["cost"]
            item.unpriced_tokens += usage_row["unpriced"]

        cost_days = {
            d
            for d in days
            if _covered(
                connection.cost_synced_from,
                connection.cost_synced_until,
                datetime.combine(d, time(), tzinfo=UTC),
            )
        }
        for d in cost_days:
            days[d].provider_cost_nano = 0
        settled = [d for d in cost_days if datetime.combine(d, time(), tzinfo=UTC) + BILL_SETTLES_AFTER <= now]
        if settled:
            for d in settled:
                days[d].bill_metered_nano = 0
            ledger: Iterable[Mapping[str, Any]]
            if _is_utc(tz):  # the rollups' local days are the bill's UTC days
                ledger = (
                    UsageRollup.objects.filter(tenant=tenant, day__gte=min(settled), day__lte=max(settled))
                    .exclude(service_tier=ServiceTier.PRIORITY)
                    .values(utc_day=F("day"))
                    .annotate(cost=Sum("cost_nano"))
                )
            else:
                ledger = (
                    UsageEvent.objects.filter(
                        tenant=tenant,
                        occurred_at__gte=datetime.combine(min(settled), time(), tzinfo=UTC),
                        occurred_at__lt=datetime.combine(max(settled) + timedelta(days=1), time(), tzinfo=UTC),
                    )
                    .exclude(service_tier=ServiceTier.PRIORITY)
                    .annotate(utc_day=TruncDate("occurred_at", tzinfo=UTC))
                    .values("utc_day")
                    .annotate(cost=Sum("cost_nano"))
                )
            for ledger_row in ledger:
                if ledger_row["utc_day"] in days and days[ledger_row["utc_day"]].bill_metered_nano is not None:
                    days[ledger_row["utc_day"]].bill_metered_nano = ledger_row["cost"] or 0
        for row in (
            ProviderCostBucket.objects.filter(tenant=tenant, day__gte=start, day__lte=end, currency="USD")
            .values("day", "canonical_model", "model")
            .annotate(cost=Sum("amount_nano"))
        ):
            if row["day"] not in cost_days:
                continue
            item = line(row["day"], row["canonical_model"] or row["model"])
            item.provider_cost_nano = (item.provider_cost_nano or 0) + (row["cost"] or 0)

    for (day, _model), item in sorted(lines.items()):
        summary = days[day]
        if summary.provider_usage_nano is not None and item.provider_usage_nano is None:
            item.provider_usage_nano = 0
        if summary.provider_cost_nano is not None and item.provider_cost_nano is None:
            item.provider_cost_nano = 0
        summary.models.append(item)
        summary.metered_nano += item.metered_nano
        if summary.provider_usage_nano is not None:
            summary.provider_usage_nano += item.provider_usage_nano or 0
        if summary.provider_cost_nano is not None:
            summary.provider_cost_nano += item.provider_cost_nano or 0
    return [days[d] for d in sorted(days)]


# --- reconciliation per mapped feature -------------------------------------------------------


def _beyond(diff: int | None, base: int, tolerance_pct: Decimal) -> bool:
    """Whether ``diff`` (either sign) exceeds the tolerance of ``base`` and is more than noise."""
    if diff is None or abs(diff) < DRIFT_MIN_NANO:
        return False
    return base == 0 or Decimal(abs(diff)) * 100 > tolerance_pct * base


def _pct(diff: int | None, base: int | None) -> Decimal | None:
    if diff is None or not base:
        return None
    return (Decimal(diff) * 100 / base).quantize(Decimal("0.01"), ROUND_HALF_UP)


@dataclass
class FeatureReconciledLine:
    """One mapped feature on one UTC day: its ledger against the usage and cost of what is mapped to it."""

    day: date
    feature_id: Any
    feature_key: str
    feature_name: str
    tolerance_pct: Decimal
    mapped_ids: list[str] = field(default_factory=list)
    metered_nano: int = 0
    provider_usage_nano: int | None = None
    unpriced_tokens: int = 0
    # The bill of the feature's own workspaces, and the ledger to compare it with (less priority
    # tier, which the cost report omits) once it has settled; None when the cost report cannot
    # be attributed to this feature alone or is not synced for the day.
    provider_cost_nano: int | None = None
    bill_metered_nano: int | None = None
    # The day is over and a usage sync has read it since (USAGE_SETTLES_AFTER).
    complete: bool = False

    @property
    def usage_diff_nano(self) -> int | None:
        """Return the usage report (priced by the catalog) minus the ledger."""
        return None if self.provider_usage_nano is None else self.provider_usage_nano - self.metered_nano

    @property
    def usage_drift_pct(self) -> Decimal | None:
        return _pct(self.usage_diff_nano, self.metered_nano)

    @property
    def usage_drifting(self) -> bool:
        """Whether the usage report and the ledger disagree beyond the tolerance, either way, on a complete day."""
        return self.complete and _beyond(self.usage_diff_nano, self.metered_nano, self.tolerance_pct)

    @property
    def bill_diff_nano(self) -> int | None:
        """Return the cost report of the feature's workspaces minus the ledger, once the bill has settled."""
        if self.provider_cost_nano is None or self.bill_metered_nano is None:
            return None
        return self.provider_cost_nano - self.bill_metered_nano

    @property
    def bill_drift_pct(self) -> Decimal | None:
        return _pct(self.bill_diff_nano, self.bill_metered_nano)

    @property
    def bill_drifting(self) -> bool:
        return _beyond(self.bill_diff_nano, self.bill_metered_nano or 0, self.tolerance_pct)

    @property
    def drifting(self) -> bool:
        return self.usage_drifting or self.bill_drifting

    @property
    def diverged(self) -> str | None:
        """Return which side is higher where a check drifts: "provider" or "ledger" (the usage report first)."""
        diff = self.usage_diff_nano if self.usage_drifting else self.bill_diff_nano if self.bill_drifting else None
        if diff is None:
            return None
        return "provider" if diff > 0 else "ledger"

    @property
    def status(self) -> str:
        """Return ok, provider_higher, ledger_higher, open (the day is not over) or not_synced."""
        if self.diverged is not None:
            return f"{self.diverged}_higher"
        if self.provider_usage_nano is None and self.provider_cost_nano is None:
            return "not_synced"
        return "ok" if self.complete else "open"


@dataclass
class FeatureReconciledDay:
    day: date
    features: list[FeatureReconciledLine] = field(default_factory=list)
    # The usage report's spend no mapped feature accounts for (it stays in the tenant's figure).
    unattributed_usage_nano: int | None = None


def feature_mappings(*, tenant: Tenant) -> list[ProviderFeatureMapping]:
    """Return the tenant's API-key and workspace mappings, only ever to the tenant's own features."""
    return list(
        ProviderFeatureMapping.objects.filter(connection__tenant=tenant, feature__tenant=tenant)
        .select_related("feature").order_by("feature__key", "kind", "provider_id")
    )


def feature_reconciliation_compute(
    *, tenant: Tenant, start: date, end: date, now: datetime | None = None, feature_ids: Iterable | None = None,
) -> list[FeatureReconciledDay]:
    """Return, per UTC day in [start, end], each mapped feature's ledger against its share of the reports.

    A feature's provider usage is the usage buckets attributed to it (its API keys, else its
    workspaces); its bill is the cost report of the workspaces mapped to it, but only on days
    when the usage report shows those workspaces used by this feature alone and the feature
    used no other workspace (the cost report has no API key dimension, so a shared workspace
    cannot be split). ``feature_ids`` limits the lines returned (a feature-restricted key).
    """
    now = now or timezone.now()
    connection = connection_get(tenant=tenant)
    tolerance = Decimal(tenant.drift_tolerance_pct)
    day_list = [start + timedelta(days=n) for n in range((end - start).days + 1)]
    out = {d: FeatureReconciledDay(day=d) for d in day_list}
    if connection is None or not day_list:
        return [out[d] for d in day_list]

    def utc_start(day: date) -> datetime:
        return datetime.combine(day, time(), tzinfo=UTC)

    mappings = feature_mappings(tenant=tenant)
    features = {m.feature_id: m.feature for m in mappings}
    mapped_ids: dict[Any, list[str]] = {}
    workspaces: dict[Any, set[str]] = {}
    for m in mappings:
        mapped_ids.setdefault(m.feature_id, []).append(m.provider_id)
        if m.kind == MappingKind.WORKSPACE:
            workspaces.setdefault(m.feature_id, set()).add(m.provider_id)
    wanted = set(features) if feature_ids is None else set(features) & set(feature_ids)
    lines = {
        (d, fid): FeatureReconciledLine(
            day=d, feature_id=fid, feature_key=features[fid].key, feature_name=features[fid].name,
            tolerance_pct=tolerance, mapped_ids=mapped_ids[fid],
        )
        for d in day_list
        for fid in sorted(features, key=lambda f: features[f].key)
    }
    window = {"gte": utc_start(start), "lt": utc_start(end + timedelta(days=1))}

    # The ledger: the rollups when local days are UTC days, the events otherwise.
    not_priority = ~Q(service_tier=ServiceTier.PRIORITY)
    ledger: Iterable[Mapping[str, Any]]
    if _is_utc(tenant.tz):
        ledger = (
            UsageRollup.objects.filter(tenant=tenant, feature_id__in=features, day__gte=start, day__lte=end)
            .values("feature_id", utc_day=F("day"))
            .annotate(cost=Sum("cost_nano"), billable=Sum("cost_nano", filter=not_priority))
        )
    else:
        ledger = (
            UsageEvent.objects.filter(tenant=tenant, feature_id__in=features, occurred_at__gte=window["gte"],
                                      occurred_at__lt=window["lt"])
            .annotate(utc_day=TruncDate("occurred_at", tzinfo=UTC))
            .values("utc_day", "feature_id")
            .annotate(cost=Sum("cost_nano"), billable=Sum("cost_nano", filter=not_priority))
        )
    billable: dict[tuple[date, Any], int] = {}
    for row in ledger:
        key = (row["utc_day"], row["feature_id"])
        if key in lines:
            lines[key].metered_nano += row["cost"] or 0
            billable[key] = billable.get(key, 0) + (row["billable"] or 0)

    # The usage report, by feature and workspace: the figures, and who used which workspace.
    usage_days = {
        d for d in day_list if _covered(connection.usage_synced_from, connection.usage_synced_until, utc_start(d))
    }
    for d in usage_days:
        out[d].unattributed_usage_nano = 0
        for fid in features:
            lines[(d, fid)].provider_usage_nano = 0
            day_end = utc_start(d) + timedelta(days=1)
            lines[(d, fid)].complete = bool(
                connection.usage_synced_until is not None and connection.usage_synced_until >= day_end
                and connection.usage_synced_at is not None
                and connection.usage_synced_at >= day_end + USAGE_SETTLES_AFTER
            )
    tokens = (
        F("uncached_input_tokens") + F("output_tokens") + F("cache_write_5m_tokens")
        + F("cache_write_1h_tokens") + F("cache_read_tokens")
    )
    users: dict[tuple[date, str], set] = {}  # (day, workspace) → the features (None: unmapped) that used it
    places: dict[tuple[date, Any], set[str]] = {}  # (day, feature) → the workspaces it used
    for bucket in (
        ProviderUsageBucket.objects.filter(tenant=tenant, bucket_start__gte=window["gte"],
                                           bucket_start__lt=window["lt"])
        .annotate(utc_day=TruncDate("bucket_start", tzinfo=UTC))
        .values("utc_day", "feature_id", "workspace_id")
        .annotate(cost=Coalesce(Sum("cost_nano"), 0),
                  unpriced=Coalesce(Sum(tokens, filter=Q(cost_nano__isnull=True)), 0))
    ):
        day = bucket["utc_day"]
        user = bucket["feature_id"] if bucket["feature_id"] in features else None
        users.setdefault((day, bucket["workspace_id"]), set()).add(user)
        if user is not None:
            places.setdefault((day, user), set()).add(bucket["workspace_id"])
        if day not in usage_days:
            continue
        if user is None:
            out[day].unattributed_usage_nano = (out[day].unattributed_usage_nano or 0) + bucket["cost"]
        else:
            line = lines[(day, user)]
            line.provider_usage_nano = (line.provider_usage_nano or 0) + bucket["cost"]
            line.unpriced_tokens += bucket["unpriced"]

    # The cost report of the workspaces mapped to a feature, where it is that feature's alone.
    cost_days = {
        d for d in day_list if _covered(connection.cost_synced_from, connection.cost_synced_until, utc_start(d))
    }
    billed: dict[tuple[date, str], int] = {}
    all_workspaces = set().union(*workspaces.values()) if workspaces else set()
    if cost_days and all_workspaces:
        for cost in (
            ProviderCostBucket.objects.filter(tenant=tenant, day__gte=start, day__lte=end, currency="USD",
                                              workspace_id__in=all_workspaces)
            .values("day", "workspace_id").annotate(cost=Sum("amount_nano"))
        ):
            billed[(cost["day"], cost["workspace_id"])] = cost["cost"] or 0
    for (day, fid), line in lines.items():
        own = workspaces.get(fid)
        if day not in cost_days or not own:
            continue
        shared = any(users.get((day, w), {fid}) - {fid} for w in own)
        elsewhere = bool(places.get((day, fid), set()) - own)
        if shared or elsewhere:
            continue
        line.provider_cost_nano = sum(billed.get((day, w), 0) for w in own)
        if utc_start(day) + BILL_SETTLES_AFTER <= now:
            line.bill_metered_nano = billable.get((day, fid), 0)

    for (day, fid), line in lines.items():
        if fid in wanted:
            out[day].features.append(line)
    return [out[d] for d in day_list]
