"""Writes of the provider sync: the connection, the two reports' buckets, reconciliation, alerts."""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from governance.audit import Actor, audit_record
from governance.crypto import mask
from governance.models import Feature, Tenant
from governance.notify.alerts import alert_raise
from usage.models import ServiceTier, Speed
from usage.money import nano_to_usd
from usage.pricing import TokenUsage, UnknownModel, price_for, to_nano, usage_cost
from usage.provider import selectors
from usage.provider.client import AdminApiClient, ProviderError
from usage.provider.models import (
    ConnectionStatus,
    FeatureReconciliation,
    MappingKind,
    ProviderConnection,
    ProviderCostBucket,
    ProviderFeatureMapping,
    ProviderUsageBucket,
    Reconciliation,
)

logger = logging.getLogger(__name__)

# Usage appears within minutes but is revised for a few hours; cost lags a day and is
# corrected for days afterwards. Each run re-reads this much before its cursor.
USAGE_TRAILING = timedelta(hours=6)
COST_TRAILING_DAYS = 4
# A first sync (or one after a long outage) reads this far back; older gaps are for sync_backfill.
INITIAL_LOOKBACK = timedelta(days=7)
MAX_CATCH_UP = timedelta(days=31)
# One read and one transaction per chunk: a 168-bucket page of usage, a 31-bucket page of cost.
USAGE_CHUNK = timedelta(days=7)
COST_CHUNK_DAYS = 31
# Transient failures are only alarming once the data is this stale.
STALE_AFTER = timedelta(hours=2)
LONG_CONTEXT_WINDOW = "200k-1M"


@dataclass
class SyncResult:
    """What one sync run did; ``error`` is set (and recorded on the connection) when it failed."""

    report: str
    start: datetime
    end: datetime
    rows: int = 0
    written: int = 0
    buckets: int = 0
    error: str | None = None
    chunks: list[tuple[datetime, datetime]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None


# --- the connection ------------------------------------------------------------------------


def connection_snapshot(connection: ProviderConnection) -> dict[str, Any]:
    """Return the audited state of a connection; the key only ever masked."""
    return {
        "admin_key": mask(connection.admin_key),
        "inference_api_key": mask(connection.inference_api_key),
        "base_url": connection.base_url,
        "workspace_ids": list(connection.workspace_ids),
        "enabled": connection.enabled,
        "feature_mapping": selectors.connection_mapping(connection=connection),
    }


def _features_by_key(tenant: Tenant, keys: Iterable[str]) -> dict[str, Feature]:
    wanted = set(keys)
    found = {f.key: f for f in Feature.objects.filter(tenant=tenant, key__in=wanted)}
    missing = sorted(wanted - set(found))
    if missing:
        raise UnknownFeatures(missing)
    return found


class UnknownFeatures(Exception):
    """A mapping names features the tenant does not have."""

    def __init__(self, keys: list[str]) -> None:
        super().__init__(f"No such feature: {', '.join(keys)}.")
        self.keys = keys


@transaction.atomic
def provider_connection_save(
    *,
    tenant: Tenant,
    actor: Actor,
    admin_key: str | None = None,
    inference_api_key: str | None = None,
    workspace_ids: list[str] | None = None,
    enabled: bool | None = None,
    feature_mapping: dict[str, dict[str, str]] | None = None,
) -> ProviderConnection:
    """Create or update the tenant's connection; ``None`` leaves a field as it is.

    A new key or workspace filter resets the status, so a failing connection is
    tried again on the next beat.
    """
    connection = ProviderConnection.objects.select_for_update().filter(tenant=tenant).first()
    creating = connection is None
    if connection is None:
        if not admin_key and not inference_api_key:
            raise ValueError("An admin key or an inference API key is needed to create the connection.")
        connection = ProviderConnection(tenant=tenant)
        before = None
    else:
        before = connection_snapshot(connection)
    reset = creating
    if admin_key is not None and admin_key != connection.admin_key:
        connection.admin_key = admin_key
        reset = True
    if inference_api_key is not None:
        connection.inference_api_key = inference_api_key  # "" removes it: the gateway stops forwarding
    if workspace_ids is not None and list(workspace_ids) != list(connection.workspace_ids):
        connection.workspace_ids = list(workspace_ids)
        reset = True
    if enabled is not None:
        connection.enabled = enabled
    if reset:
        connection.status = ConnectionStatus.PENDING
        connection.last_error = ""
        connection.last_error_at = None
    connection.save()
    if feature_mapping is not None:
        _mapping_replace(connection=connection, feature_mapping=feature_mapping)
    after = connection_snapshot(connection)
    if after != before or reset:
        audit_record(
            tenant=tenant,
            actor=actor,
            action="create" if creating else "update",
            obj=connection,
            before=before,
            after=after,
        )
    return connection


@transaction.atomic
def provider_mapping_save(
    *, connection: ProviderConnection, actor: Actor, feature_mapping: dict[str, dict[str, str]]
) -> ProviderConnection:
    """Replace the connection's API-key and workspace → feature mapping, and audit the change.

    Raise UnknownFeatures when it names a feature the tenant does not have.
    """
    locked = _lock(connection)
    before = connection_snapshot(locked)
    _mapping_replace(connection=locked, feature_mapping=feature_mapping)
    after = connection_snapshot(locked)
    if after != before:
        audit_record(tenant=locked.tenant, actor=actor, action="update", obj=locked, before=before, after=after)
    return locked


def _mapping_replace(*, connection: ProviderConnection, feature_mapping: dict[str, dict[str, str]]) -> None:
    kinds = {"api_keys": MappingKind.API_KEY, "workspaces": MappingKind.WORKSPACE}
    features = _features_by_key(
        connection.tenant, [key for name in kinds for key in feature_mapping.get(name, {}).values()]
    )
    connection.mappings.all().delete()
    ProviderFeatureMapping.objects.bulk_create(
        ProviderFeatureMapping(connection=connection, kind=kind, provider_id=provider_id, feature=features[key])
        for name, kind in kinds.items()
        for provider_id, key in sorted(feature_mapping.get(name, {}).items())
    )
    # Re-attribute what is already stored, so history follows the new mapping at once:
    # workspaces first, then API keys, which are the finer attribution and win.
    buckets = ProviderUsageBucket.objects.filter(tenant=connection.tenant)
    buckets.exclude(feature=None).update(feature=None)
    for name, column in (("workspaces", "workspace_id"), ("api_keys", "api_key_id")):
        for provider_id, key in feature_mapping.get(name, {}).items():
            buckets.filter(**{column: provider_id}).update(feature=features[key])


@transaction.atomic
def provider_connection_delete(*, connection: ProviderConnection, actor: Actor) -> None:
    """Forget the key and stop syncing; the buckets already read stay as history."""
    before = connection_snapshot(connection)
    tenant = connection.tenant
    audit_record(tenant=tenant, actor=actor, action="delete", obj=connection, before=before)
    connection.delete()


def connection_client(connection: ProviderConnection, *, sleep: Callable[[float], None] | None = None) -> AdminApiClient:
    """Return a client for the connection's organisation (``sleep`` replaces real backoff sleeps)."""
    kwargs: dict[str, Any] = {}
    if sleep is not None:
        kwargs["sleep"] = sleep
    return AdminApiClient(
        api_key=connection.admin_key,
        base_url=connection.base_url or settings.ANTHROPIC_API_BASE_URL,
        **kwargs,
    )


# --- parsing the reports ---------------------------------------------------------------------


def _malformed(what: str) -> ProviderError:
    return ProviderError(f"Malformed response: {what}.", permanent=False)


def _when(value: Any, name: str) -> datetime:
    if not isinstance(value, str):
        raise _malformed(f"'{name}' is not a timestamp")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise _malformed(f"'{name}' is not a timestamp") from exc
    if parsed.tzinfo is None:
        raise _malformed(f"'{name}' has no time zone")
    return parsed.astimezone(UTC)


def _dimension(row: dict[str, Any], name: str) -> str:
    # Null (not grouped by, the default workspace, Console use) is stored as "".
    value = row.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _malformed(f"'{name}' is not a string")
    return value[:200]


def _count(obj: Any, name: str) -> int:
    if obj is None:
        return 0
    if not isinstance(obj, dict):
        raise _malformed(f"expected an object holding '{name}'")
    value = obj.get(name)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _malformed(f"'{name}' is not a token count")
    return value


USAGE_KEY = (
    "bucket_start", "bucket_width", "model", "workspace_id", "api_key_id",
    "service_tier", "context_window", "inference_geo", "speed",
)
USAGE_VALUES = (
    "uncached_input_tokens", "cache_write_5m_tokens", "cache_write_1h_tokens", "cache_read_tokens",
    "output_tokens", "web_search_requests", "canonical_model", "cost_nano", "feature",
)
COST_KEY = (
    "bucket_start", "workspace_id", "description", "cost_type", "model",
    "service_tier", "context_window", "token_type", "inference_geo", "speed",
)
COST_VALUES = ("day", "canonical_model", "currency", "amount_cents", "amount_nano")


def _canonical(model: str) -> str:
    if not model:
        return ""
    try:
        return price_for(model).model
    except UnknownModel:
        return ""


def _bucket_cost_nano(model: str, usage: TokenUsage, *, tier: str, geo: str, context_window: str,
                      at: datetime, speed: str = "") -> int | None:
    """Price one bucket's tokens with our table; None when the model has no price."""
    if not model:
        return None
    try:
        price = price_for(model, at=at, service_tier=tier or ServiceTier.STANDARD)
    except UnknownModel:
        return None
    # A bucket sums many requests, so pricing.usage_cost's per-request long-context test
    # (total input above the threshold) cannot apply; the context_window dimension says
    # which rates the provider charged. A copy, so the cached price row is untouched.
    price = copy.copy(price)
    long_context = context_window == LONG_CONTEXT_WINDOW and price.lc_input is not None
    price.long_context_threshold = -1 if long_context else None
    return to_nano(usage_cost(price, usage, service_tier=tier or ServiceTier.STANDARD, inference_geo=geo,
                              speed=speed or Speed.STANDARD))


def _usage_rows(
    buckets: Iterable[dict[str, Any]], *, tenant: Tenant, features: Callable[[str, str], Feature | None],
    synced_at: datetime,
) -> Iterator[ProviderUsageBucket]:
    for bucket in buckets:
        start = _when(bucket.get("starting_at"), "starting_at")
        for row in bucket["results"]:
            if not isinstance(row, dict):
                raise _malformed("a result is not an object")
            cache = row.get("cache_creation")
            usage = TokenUsage(
                input_tokens=_count(row, "uncached_input_tokens"),
                output_tokens=_count(row, "output_tokens"),
                cache_write_5m_tokens=_count(cache, "ephemeral_5m_input_tokens"),
                cache_write_1h_tokens=_count(cache, "ephemeral_1h_input_tokens"),
                cache_read_tokens=_count(row, "cache_read_input_tokens"),
                web_search_requests=_count(row.get("server_tool_use"), "web_search_requests"),
            )
            model = _dimension(row, "model")
            tier = _dimension(row, "service_tier")
            geo = _dimension(row, "inference_geo")
            context_window = _dimension(row, "context_window")
            speed = _dimension(row, "speed")[:20]
            workspace_id = _dimension(row, "workspace_id")
            api_key_id = _dimension(row, "api_key_id")
            yield ProviderUsageBucket(
                tenant=tenant,
                bucket_start=start,
                bucket_width="1h",
                model=model,
                workspace_id=workspace_id,
                api_key_id=api_key_id,
                service_tier=tier,
                context_window=context_window,
                inference_geo=geo[:20],
                speed=speed,
                uncached_input_tokens=usage.input_tokens,
                cache_write_5m_tokens=usage.cache_write_5m_tokens,
                cache_write_1h_tokens=usage.cache_write_1h_tokens,
                cache_read_tokens=usage.cache_read_tokens,
                output_tokens=usage.output_tokens,
                web_search_requests=usage.web_search_requests,
                canonical_model=_canonical(model),
                cost_nano=_bucket_cost_nano(model, usage, tier=tier, geo=geo, context_window=context_window,
                                            at=start, speed=speed),
                feature=features(api_key_id, workspace_id),
                synced_at=synced_at,
            )


def cents_to_nano(amount: Any) -> int:
    """Return a cost report amount (a decimal string in cents) as nano-USD, exactly."""
    if not isinstance(amount, str):
        raise _malformed("'amount' is not a decimal string")
    try:
        cents = Decimal(amount)
    except InvalidOperation as exc:
        raise _malformed("'amount' is not a decimal string") from exc
    if not cents.is_finite():
        raise _malformed("'amount' is not a finite number")
    # Decimal(amount) / 100 is dollars; seven places of cents are whole nano-USD, finer rounds half-up.
    return to_nano(cents / 100)


def _cost_rows(buckets: Iterable[dict[str, Any]], *, tenant: Tenant, synced_at: datetime) -> Iterator[ProviderCostBucket]:
    for bucket in buckets:
        start = _when(bucket.get("starting_at"), "starting_at")
        for row in bucket["results"]:
            if not isinstance(row, dict):
                raise _malformed("a result is not an object")
            amount = row.get("amount")
            model = _dimension(row, "model")
            yield ProviderCostBucket(
                tenant=tenant,
                bucket_start=start,
                day=start.date(),
                workspace_id=_dimension(row, "workspace_id"),
                description=_dimension(row, "description")[:300],
                cost_type=_dimension(row, "cost_type")[:40],
                model=model,
                service_tier=_dimension(row, "service_tier")[:20],
                context_window=_dimension(row, "context_window")[:20],
                token_type=_dimension(row, "token_type")[:60],
                inference_geo=_dimension(row, "inference_geo")[:20],
                speed=_dimension(row, "speed")[:20],
                canonical_model=_canonical(model),
                currency=(_dimension(row, "currency") or "USD")[:3],
                amount_cents=str(amount)[:40],
                amount_nano=cents_to_nano(amount),
                synced_at=synced_at,
            )


# --- storing: upsert by natural key, drop what the provider no longer reports -------------------


def _dedupe(rows: Iterable[Any], key: tuple[str, ...]) -> list[Any]:
    # The same key twice in one read (overlapping pages) is one row: the last one wins.
    by_key = {tuple(getattr(r, k) for k in key): r for r in rows}
    return list(by_key.values())


def _store(model, rows: list[Any], *, key: tuple[str, ...], values: tuple[str, ...], tenant: Tenant,
           start: datetime, end: datetime, synced_at: datetime) -> int:
    """Make the stored buckets in [start, end) exactly ``rows``; return how many rows were written.

    Called under the connection's row lock, so nothing else writes these buckets meanwhile:
    new keys are inserted, changed values updated, unchanged rows left alone (a re-read of the
    trailing window is mostly unchanged), and keys the read no longer returned deleted, since
    the read covered every bucket in the window (a late correction removed them, or the
    workspace filter changed).
    """
    attnames = [model._meta.get_field(name).attname for name in values]
    existing = {
        tuple(r[:len(key)]): (r[len(key)], tuple(r[len(key) + 1:]))
        for r in model.objects.filter(tenant=tenant, bucket_start__gte=start, bucket_start__lt=end)
        .values_list(*key, "pk", *attnames)
        .iterator(chunk_size=2000)
    }
    new, changed = [], []
    for row in rows:
        if not start <= row.bucket_start < end:
            continue  # the provider snapped a bucket outside the window we asked for; not ours to replace
        found = existing.pop(tuple(getattr(row, k) for k in key), None)
        if found is None:
            new.append(row)
        elif tuple(getattr(row, a) for a in attnames) != found[1]:
            row.pk = found[0]
            changed.append(row)
    for row in new + changed:
        row.synced_at = synced_at
    model.objects.bulk_create(new, batch_size=500)
    model.objects.bulk_update(changed, [*values, "synced_at"], batch_size=500)
    stale = [pk for pk, _ in existing.values()]
    for i in range(0, len(stale), 500):
        model.objects.filter(pk__in=stale[i : i + 500]).delete()
    return len(new) + len(changed) + len(stale)


# --- the syncs ---------------------------------------------------------------------------------


def _floor_hour(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _ceil_hour(at: datetime) -> datetime:
    floor = _floor_hour(at)
    return floor if floor == at else floor + timedelta(hours=1)


def _floor_day(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _chunks(start: datetime, end: datetime, size: timedelta) -> list[tuple[datetime, datetime]]:
    out = []
    while start < end:
        out.append((start, min(start + size, end)))
        start += size
    return out


def _feature_resolver(connection: ProviderConnection) -> Callable[[str, str], Feature | None]:
    by_kind: dict[str, dict[str, Feature]] = {MappingKind.API_KEY: {}, MappingKind.WORKSPACE: {}}
    # Only the tenant's own features: a mapping row made in Django admin could name another's.
    for m in connection.mappings.filter(feature__tenant_id=connection.tenant_id).select_related("feature"):
        by_kind[m.kind][m.provider_id] = m.feature

    def resolve(api_key_id: str, workspace_id: str) -> Feature | None:
        # The API key is the finer attribution; the workspace is the fallback.
        return by_kind[MappingKind.API_KEY].get(api_key_id) or by_kind[MappingKind.WORKSPACE].get(workspace_id)

    return resolve


def usage_window(connection: ProviderConnection, *, now: datetime) -> tuple[datetime, datetime]:
    """Return the window the next usage sync reads: a trailing window before the cursor, up to now."""
    cursor = connection.usage_synced_until
    start = cursor - USAGE_TRAILING if cursor else now - INITIAL_LOOKBACK
    return _floor_hour(max(start, now - MAX_CATCH_UP)), _ceil_hour(now)


def cost_window(connection: ProviderConnection, *, now: datetime) -> tuple[datetime, datetime]:
    """Return the window the next cost sync reads: at least COST_TRAILING_DAYS whole days, up to today."""
    today = _floor_day(now)
    cursor = connection.cost_synced_until or now - INITIAL_LOOKBACK
    start = min(_floor_day(cursor), today) - timedelta(days=COST_TRAILING_DAYS)
    return max(start, today - MAX_CATCH_UP), today + timedelta(days=1)


def provider_usage_sync(
    *,
    connection: ProviderConnection,
    start: datetime | None = None,
    end: datetime | None = None,
    client: AdminApiClient | None = None,
    now: datetime | None = None,
) -> SyncResult:
    """Read the hourly usage report over a window and replace the buckets it covers.

    Without ``start``/``end``: from a trailing window before the cursor up to now.
    A provider failure is recorded on the connection (and alerted), never raised.
    """
    now = now or timezone.now()
    if start is None or end is None:
        start, end = usage_window(connection, now=now)
    start, end = _floor_hour(start), _ceil_hour(end)
    resolve = _feature_resolver(connection)

    def read(client: AdminApiClient, chunk_start: datetime, chunk_end: datetime, synced_at: datetime):
        buckets = list(
            client.usage_buckets(
                starting_at=chunk_start, ending_at=chunk_end, workspace_ids=connection.workspace_ids or None
            )
        )
        rows = _dedupe(
            _usage_rows(buckets, tenant=connection.tenant, features=resolve, synced_at=synced_at), USAGE_KEY
        )
        return len(buckets), rows

    return _sync_report(
        connection, SyncResult(report="usage", start=start, end=end), chunk=USAGE_CHUNK, read=read,
        client=client, now=now,
    )


def _sync_report(connection: ProviderConnection, result: SyncResult, *, chunk: timedelta, read,
                 client: AdminApiClient | None, now: datetime) -> SyncResult:
    """Read a report chunk by chunk and store each; a provider failure is recorded, never raised.

    ``read(client, chunk_start, chunk_end, synced_at)`` returns (buckets read, rows to store).
    """
    owns_client = client is None
    client = client or connection_client(connection)
    try:
        for chunk_start, chunk_end in _chunks(result.start, result.end, chunk):
            synced_at = timezone.now()
            bucket_count, rows = read(client, chunk_start, chunk_end, synced_at)
            result.written += _chunk_commit(connection, result.report, rows, chunk_start, chunk_end, synced_at)
            provider_unpriced_alert(tenant=connection.tenant, report=result.report, rows=rows)
            result.rows += len(rows)
            result.buckets += bucket_count
            result.chunks.append((chunk_start, chunk_end))
    except ProviderError as exc:
        result.error = str(exc)
        with contextlib.suppress(ConnectionGone):
            provider_sync_failed(connection=connection, report=result.report, error=exc, now=now)
    except ConnectionGone as exc:
        result.error = str(exc)
    finally:
        if owns_client:
            client.close()
    return result


@transaction.atomic
def _chunk_commit(connection: ProviderConnection, report: str, rows: list, start: datetime, end: datetime,
                  synced_at: datetime) -> int:
    """Replace one chunk of a report's buckets and move that report's cursors, under the connection's lock."""
    # One sync of a connection writes at a time; a second waits here and then writes its own read.
    model, key, values = (
        (ProviderUsageBucket, USAGE_KEY, USAGE_VALUES) if report == "usage"
        else (ProviderCostBucket, COST_KEY, COST_VALUES)
    )
    locked = _lock(connection)
    written = _store(
        model, rows, key=key, values=values, tenant=locked.tenant, start=start, end=end, synced_at=synced_at,
    )
    setattr(locked, f"{report}_synced_until", _advance(getattr(locked, f"{report}_synced_until"), start, end))
    setattr(locked, f"{report}_synced_from", min(getattr(locked, f"{report}_synced_from") or start, start))
    setattr(locked, f"{report}_synced_at", synced_at)
    _mark_ok(locked, synced_at)
    locked.save()
    connection.refresh_from_db()
    return written


def provider_cost_sync(
    *,
    connection: ProviderConnection,
    start: datetime | None = None,
    end: datetime | None = None,
    client: AdminApiClient | None = None,
    now: datetime | None = None,
) -> SyncResult:
    """Read the daily cost report over a window (at least the last few days) and replace its buckets."""
    now = now or timezone.now()
    if start is None or end is None:
        start, end = cost_window(connection, now=now)
    start = _floor_day(start)
    end = _floor_day(end) if _floor_day(end) == end else _floor_day(end) + timedelta(days=1)

    def read(client: AdminApiClient, chunk_start: datetime, chunk_end: datetime, synced_at: datetime):
        buckets = list(client.cost_buckets(starting_at=chunk_start, ending_at=chunk_end))
        rows = _dedupe(_cost_rows(buckets, tenant=connection.tenant, synced_at=synced_at), COST_KEY)
        if connection.workspace_ids:
            rows = [r for r in rows if r.workspace_id in connection.workspace_ids]
        return len(buckets), rows

    return _sync_report(
        connection, SyncResult(report="cost", start=start, end=end), chunk=timedelta(days=COST_CHUNK_DAYS),
        read=read, client=client, now=now,
    )


class ConnectionGone(Exception):
    """The connection was deleted while a sync was reading: drop what was read."""


def _lock(connection: ProviderConnection) -> ProviderConnection:
    locked = ProviderConnection.objects.select_for_update().filter(pk=connection.pk).first()
    if locked is None:
        raise ConnectionGone("The provider connection was deleted during the sync.")
    return locked


def _advance(cursor: datetime | None, start: datetime, end: datetime) -> datetime:
    # A read that starts at or before the cursor extends the contiguous history; a backfill
    # of an older range must not pull the cursor back.
    if cursor is None:
        return end
    return max(cursor, end) if start <= cursor else cursor


def _mark_ok(connection: ProviderConnection, at: datetime) -> None:
    connection.status = ConnectionStatus.OK
    connection.last_error = ""
    connection.last_attempt_at = at


@transaction.atomic
def provider_sync_failed(*, connection: ProviderConnection, report: str, error: ProviderError, now: datetime) -> None:
    """Record a failed sync; raise ``sync_failing`` when a person must act or the data is going stale."""
    locked = _lock(connection)
    locked.status = ConnectionStatus.FAILING if error.permanent else ConnectionStatus.ERROR
    locked.last_error = str(error)[:2000]
    locked.last_error_at = now
    locked.last_attempt_at = now
    locked.save(update_fields=["status", "last_error", "last_error_at", "last_attempt_at", "updated_at"])
    logger.warning("provider sync failed for tenant %s: %s", locked.tenant.slug, error)
    # Each report goes stale on its own: a working usage sync does not hide a broken cost sync.
    last_ok = (locked.usage_synced_at if report == "usage" else locked.cost_synced_at) or locked.created_at
    if error.permanent or now - last_ok > STALE_AFTER:
        what = "rejected the admin key" if error.auth_failed else "cannot be synced"
        alert_raise(
            tenant=locked.tenant,
            kind="sync_failing",
            dedup_key=f"sync_failing:{locked.pk}:{now.date().isoformat()}",
            title=f"Anthropic {what}",
            body=(
                f"The Anthropic {report} sync for {locked.tenant.name} failed: {error}. "
                + (
                    "Check the admin key in the provider connection settings."
                    if error.permanent
                    else "It will keep retrying."
                )
            ),
            data={"connection": str(locked.pk), "status": error.status, "permanent": error.permanent},
        )
    connection.refresh_from_db()


def provider_unpriced_alert(*, tenant: Tenant, report: str, rows: list[Any]) -> None:
    """Raise ``unpriced_usage`` once per model and day for provider usage or cost our catalog cannot price.

    Within the sync that read it: the usage report's tokens of such a model count as $0 in
    the usage-vs-ledger check, so without this alert they would hide; the cost report
    bills them all the same.
    """
    totals: dict[tuple[str, str], list[int]] = {}
    for row in rows:
        if not row.model or row.canonical_model:
            continue
        day = row.bucket_start.date().isoformat()
        total = totals.setdefault((row.model, day), [0, 0])
        if report == "usage":
            total[0] += (row.uncached_input_tokens + row.output_tokens + row.cache_write_5m_tokens
                         + row.cache_write_1h_tokens + row.cache_read_tokens)
        else:
            total[1] += row.amount_nano
    for (model, day), (tokens, billed) in sorted(totals.items()):
        if not tokens and billed <= 0:
            continue
        what = f"{tokens} tokens in the usage report" if report == "usage" else (
            f"${nano_to_usd(billed)} in the cost report")
        alert_raise(
            tenant=tenant,
            kind="unpriced_usage",
            dedup_key=f"unpriced_usage:{tenant.pk}:{model}:{day}",
            title=f"No price for {model}",
            body=(
                f"Anthropic reports {what} for {model} on {day}, but the price catalog has no price for it, "
                f"so Comptroller cannot meter or reconcile it. Load its price with `manage.py prices_load`."
            ),
            data={"model": model, "day": day, "tokens": tokens, "billed_usd": nano_to_usd(billed),
                  "source": f"{report}_report"},
        )


# --- reconciliation -----------------------------------------------------------------------------


@transaction.atomic
def reconciliation_run(*, tenant: Tenant, start: date, end: date, now: datetime | None = None
                       ) -> list[selectors.ReconciledDay]:
    """Store metered vs provider spend per day and model for [start, end]; alert on drift."""
    now = now or timezone.now()
    days = selectors.reconciliation_compute(tenant=tenant, start=start, end=end, now=now)
    keep: list[int] = []
    for day in days:
        for line in day.models:
            row, _ = Reconciliation.objects.update_or_create(
                tenant=tenant,
                day=day.day,
                model=line.model,
                defaults={
                    "metered_nano": line.metered_nano,
                    "provider_usage_nano": line.provider_usage_nano,
                    "provider_cost_nano": line.provider_cost_nano,
                    "unpriced_tokens": line.unpriced_tokens,
                    "computed_at": now,
                },
            )
            keep.append(row.pk)
    Reconciliation.objects.filter(tenant=tenant, day__gte=start, day__lte=end).exclude(pk__in=keep).delete()
    feature_days = _feature_reconciliation_store(tenant=tenant, start=start, end=end, now=now)
    for day in days:
        if day.usage_drifting:
            _drift_alert(tenant, day)
        if day.bill_drifting:
            _bill_drift_alert(tenant, day)
    for feature_day in feature_days:
        for feature_line in feature_day.features:
            if feature_line.drifting:
                _feature_drift_alert(tenant, feature_line)
    return days


def _feature_reconciliation_store(*, tenant: Tenant, start: date, end: date, now: datetime
                                  ) -> list[selectors.FeatureReconciledDay]:
    """Store each mapped feature's reconciliation for the UTC days [start, end]; drop features no longer mapped."""
    feature_days = selectors.feature_reconciliation_compute(tenant=tenant, start=start, end=end, now=now)
    keep: list[int] = []
    for feature_day in feature_days:
        for line in feature_day.features:
            row, _ = FeatureReconciliation.objects.update_or_create(
                tenant=tenant,
                day=line.day,
                feature_id=line.feature_id,
                defaults={
                    "metered_nano": line.metered_nano,
                    "provider_usage_nano": line.provider_usage_nano,
                    "unpriced_tokens": line.unpriced_tokens,
                    "bill_metered_nano": line.bill_metered_nano,
                    "provider_cost_nano": line.provider_cost_nano,
                    "computed_at": now,
                },
            )
            keep.append(row.pk)
    FeatureReconciliation.objects.filter(tenant=tenant, day__gte=start, day__lte=end).exclude(pk__in=keep).delete()
    return feature_days


def _feature_drift_alert(tenant: Tenant, line: selectors.FeatureReconciledLine) -> None:
    """Raise one ``drift`` alert per feature and UTC day, naming the feature, the report and the higher side."""
    by_usage = line.usage_drifting
    report = "usage_report" if by_usage else "cost_report"
    provider = line.provider_usage_nano if by_usage else line.provider_cost_nano
    ledger = line.metered_nano if by_usage else line.bill_metered_nano
    diff = (line.usage_diff_nano if by_usage else line.bill_diff_nano) or 0
    pct = line.usage_drift_pct if by_usage else line.bill_drift_pct
    day = line.day.isoformat()
    what = "usage report (priced by the catalog)" if by_usage else "cost report"
    ids = ", ".join(line.mapped_ids)
    if line.diverged == "provider":
        title = f"Anthropic reports more for {line.feature_name} than the ledger on {day}"
        cause = (f"Calls through {ids} did not all go through Comptroller, or another service uses them."
                 if by_usage else
                 "A price in the catalog differs from the bill, or the bill holds charges the ledger does not "
                 "meter (fast mode, code execution).")
    else:
        title = f"The ledger has more for {line.feature_name} than Anthropic reports on {day}"
        cause = (f"The feature also calls Claude with API keys or workspaces not mapped to it (mapped: {ids}); "
                 "map them on the provider page, or check the mapping is right.")
    alert_raise(
        tenant=tenant,
        kind="drift",
        dedup_key=f"drift:{tenant.pk}:{day}:feature:{line.feature_id}",
        title=title,
        body=(
            f"For feature {line.feature_key} on {day} (UTC), Anthropic's {what} shows ${nano_to_usd(provider)} "
            f"and the ledger ${nano_to_usd(ledger)}: the {'provider' if diff > 0 else 'ledger'} is "
            f"${nano_to_usd(abs(diff))} higher ({f'{pct}%' if pct is not None else 'nothing metered'}, "
            f"tolerance {line.tolerance_pct:.2f}%). {cause}"
        ),
        data={
            "day": day,
            "feature": line.feature_key,
            "report": report,
            "diverged": line.diverged,
            "provider_usd": nano_to_usd(provider),
            "ledger_usd": nano_to_usd(ledger),
            "difference_usd": nano_to_usd(diff),
            "drift_pct": str(pct) if pct is not None else None,
            "mapped_ids": list(line.mapped_ids),
        },
    )


def _bill_drift_alert(tenant: Tenant, day: selectors.ReconciledDay) -> None:
    diff = day.bill_diff_nano or 0
    pct = f"{day.bill_drift_pct}%" if day.bill_drift_pct is not None else "all of it"
    direction = "more" if diff > 0 else "less"
    alert_raise(
        tenant=tenant,
        kind="drift",
        dedup_key=f"drift:{tenant.pk}:{day.day.isoformat()}:cost_report",
        title=f"Anthropic's cost report disagrees with the ledger on {day.day.isoformat()}",
        body=(
            f"Anthropic's cost report bills ${nano_to_usd(day.provider_cost_nano)} for {day.day.isoformat()} (UTC), "
            f"${nano_to_usd(abs(diff))} {direction} than the ${nano_to_usd(day.bill_metered_nano)} the ledger "
            f"priced ({pct}, tolerance {tenant.drift_tolerance_pct}%). "
            + ("The usage report agrees with the ledger, so a price in the catalog differs from the bill, "
               "or the bill holds charges the ledger does not meter (fast mode, code execution)."
               if not day.usage_drifting and day.provider_usage_nano is not None else
               "Check the reconciliation page for the models that differ.")
        ),
        data={
            "day": day.day.isoformat(),
            "report": "cost_report",
            "ledger_usd": nano_to_usd(day.bill_metered_nano),
            "cost_report_usd": nano_to_usd(day.provider_cost_nano),
            "difference_usd": nano_to_usd(diff),
            "drift_pct": str(day.bill_drift_pct) if day.bill_drift_pct is not None else None,
        },
    )


def _drift_alert(tenant: Tenant, day: selectors.ReconciledDay) -> None:
    drift = f"{day.drift_pct}%" if day.drift_pct is not None else "all of it"
    alert_raise(
        tenant=tenant,
        kind="drift",
        dedup_key=f"drift:{tenant.pk}:{day.day.isoformat()}",
        title=f"Unmetered Claude spend on {day.day.isoformat()}",
        body=(
            f"Anthropic's {'usage report (priced by the catalog)' if day.basis == 'usage' else 'cost report'} "
            f"shows ${nano_to_usd(day.provider_nano)} for {day.day.isoformat()}, "
            f"but only ${nano_to_usd(day.metered_nano)} went through Comptroller: "
            f"${nano_to_usd(day.unmetered_nano)} unmetered ({drift}, tolerance {tenant.drift_tolerance_pct}%)."
        ),
        data={
            "day": day.day.isoformat(),
            "metered_usd": nano_to_usd(day.metered_nano),
            "provider_usd": nano_to_usd(day.provider_nano),
            "unmetered_usd": nano_to_usd(day.unmetered_nano),
            "drift_pct": str(day.drift_pct) if day.drift_pct is not None else None,
            "basis": day.basis,
        },
    )


RECONCILE_DAYS = 7


def reconciliation_run_recent(*, tenant: Tenant, now: datetime | None = None) -> list[selectors.ReconciledDay]:
    """Reconcile the tenant's last week of local days: cost is corrected for days afterwards."""
    now = now or timezone.now()
    today = now.astimezone(tenant.tz).date()
    return reconciliation_run(tenant=tenant, start=today - timedelta(days=RECONCILE_DAYS - 1), end=today, now=now)
