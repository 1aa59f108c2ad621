"""Writes to the ledger: usage events and the daily rollups kept current beside them."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import IntegrityError, OperationalError, transaction
from django.utils import timezone

from governance.models import ApiKey, Feature, Tenant
from governance.transactions import MAX_ATTEMPTS, is_retryable
from usage.models import (
    HISTOGRAM_SIZE,
    ServiceTier,
    UsageEvent,
    UsageRollup,
    UsageSource,
    histogram_bucket,
)
from usage.pricing import TokenUsage, model_family, price_for, to_nano, usage_cost

logger = logging.getLogger(__name__)



@dataclass
class UsageInput:
    """One model call's usage as a service reports it."""

    feature: Feature
    model: str
    usage: TokenUsage
    service_tier: str = ServiceTier.STANDARD
    inference_geo: str = ""
    request_id: str = ""
    run_id: str = ""
    occurred_at: datetime | None = None
    stop_reason: str = ""
    latency_ms: int | None = None
    ttft_ms: int | None = None
    streamed: bool | None = None
    max_tokens: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class RecordedUsage:
    event: UsageEvent
    created: bool


def usage_event_build(*, tenant: Tenant, api_key: ApiKey | None, item: UsageInput, source: str) -> UsageEvent:
    """Price one call with the row in effect when it happened and return an unsaved ledger row."""
    occurred_at = item.occurred_at or timezone.now()
    price = price_for(item.model, at=occurred_at, service_tier=item.service_tier)
    cost = usage_cost(price, item.usage, service_tier=item.service_tier, inference_geo=item.inference_geo)
    u = item.usage
    return UsageEvent(
        tenant=tenant,
        feature=item.feature,
        api_key=api_key,
        run_id=item.run_id,
        request_id=item.request_id,
        model=price.model,
        family=price.family or model_family(price.model) or "",
        service_tier=item.service_tier,
        inference_geo=item.inference_geo,
        input_tokens=u.input_tokens,
        output_tokens=u.output_tokens,
        cache_write_5m_tokens=u.cache_write_5m_tokens,
        cache_write_1h_tokens=u.cache_write_1h_tokens,
        cache_read_tokens=u.cache_read_tokens,
        web_search_requests=u.web_search_requests,
        cost_nano=to_nano(cost),
        max_tokens=item.max_tokens,
        stop_reason=item.stop_reason,
        latency_ms=item.latency_ms,
        ttft_ms=item.ttft_ms,
        streamed=item.streamed,
        occurred_at=occurred_at,
        source=source,
        metadata=item.metadata,
    )


def event_tokens(event: UsageEvent) -> int:
    return (
        event.input_tokens
        + event.output_tokens
        + event.cache_write_5m_tokens
        + event.cache_write_1h_tokens
        + event.cache_read_tokens
    )


def _add_histogram(histogram: list[int], ms: int) -> list[int]:
    histogram = list(histogram) or [0] * HISTOGRAM_SIZE
    histogram[histogram_bucket(ms)] += 1
    return histogram


def rollups_add(*, tenant: Tenant, events: list[UsageEvent]) -> None:
    """Add new ledger rows to their daily rollups; call inside the transaction that wrote them."""
    groups: dict[tuple, list[UsageEvent]] = defaultdict(list)
    tz = tenant.tz
    for event in events:
        day = event.occurred_at.astimezone(tz).date()
        groups[(event.feature_id, event.model, event.service_tier, day)].append(event)
    # A fixed order of row locks, so two batches touching the same rollups never deadlock.
    for (feature_id, model, tier, day), group in sorted(groups.items(), key=lambda kv: (str(kv[0][0]), *kv[0][1:])):
        rollup = _rollup_locked(tenant, feature_id, model, tier, day, group[0].family)
        for event in group:
            rollup.calls += 1
            rollup.input_tokens += event.input_tokens
            rollup.output_tokens += event.output_tokens
            rollup.cache_write_5m_tokens += event.cache_write_5m_tokens
            rollup.cache_write_1h_tokens += event.cache_write_1h_tokens
            rollup.cache_read_tokens += event.cache_read_tokens
            rollup.web_search_requests += event.web_search_requests
            rollup.cost_nano += event.cost_nano
            if event.stop_reason == "max_tokens":
                rollup.truncations += 1
            if event.max_tokens:
                rollup.max_tokens_sum += event.max_tokens
                rollup.max_tokens_calls += 1
                rollup.output_tokens_capped += event.output_tokens
            if event.latency_ms is not None:
                rollup.latency_sum_ms += event.latency_ms
                rollup.latency_count += 1
                rollup.latency_histogram = _add_histogram(rollup.latency_histogram, event.latency_ms)
            if event.ttft_ms is not None:
                rollup.ttft_sum_ms += event.ttft_ms
                rollup.ttft_count += 1
                rollup.ttft_histogram = _add_histogram(rollup.ttft_histogram, event.ttft_ms)
            if event.streamed:
                rollup.streamed_calls += 1
        rollup.save()


def _rollup_locked(tenant: Tenant, feature_id, model: str, tier: str, day, family: str) -> UsageRollup:
    lookup = dict(tenant=tenant, feature_id=feature_id, model=model, service_tier=tier, day=day)
    rollup = UsageRollup.objects.select_for_update().filter(**lookup).first()
    if rollup is not None:
        return rollup
    try:
        with transaction.atomic():
            return UsageRollup.objects.create(family=family, **lookup)
    except IntegrityError:
        return UsageRollup.objects.select_for_update().get(**lookup)


def usage_events_record(
    *, tenant: Tenant, api_key: ApiKey | None, items: list[UsageInput], source: str
) -> list[RecordedUsage]:
    """Write new ledger rows and their rollups; a known request_id is a duplicate, not a new row.

    Call inside a transaction. Raises IntegrityError when a concurrent writer inserted
    the same request_id first; ``usage_report`` retries on that.
    """
    wanted = [item.request_id for item in items if item.request_id]
    existing = {
        e.request_id: e for e in UsageEvent.objects.filter(tenant=tenant, request_id__in=wanted)
    } if wanted else {}
    results: list[RecordedUsage] = []
    new_events: list[UsageEvent] = []
    seen: dict[str, UsageEvent] = {}
    for item in items:
        if item.request_id and item.request_id in existing:
            results.append(RecordedUsage(existing[item.request_id], created=False))
            continue
        if item.request_id and item.request_id in seen:
            results.append(RecordedUsage(seen[item.request_id], created=False))
            continue
        event = usage_event_build(tenant=tenant, api_key=api_key, item=item, source=source)
        if item.request_id:
            seen[item.request_id] = event
        new_events.append(event)
        results.append(RecordedUsage(event, created=True))
    if new_events:
        UsageEvent.objects.bulk_create(new_events)
        rollups_add(tenant=tenant, events=new_events)
    return results


def usage_report(*, tenant: Tenant, api_key: ApiKey | None, items: list[UsageInput]) -> list[RecordedUsage]:
    """Record usage reported without a hold and charge it to the budgets it falls in.

    Always recorded, even over budget: the money was spent.
    """
    from budgets.services import windows_charge_usage

    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            with transaction.atomic():
                results = usage_events_record(tenant=tenant, api_key=api_key, items=items, source=UsageSource.REPORT)
                windows_charge_usage(tenant=tenant, events=[r.event for r in results if r.created])
                return results
        except (IntegrityError, OperationalError) as exc:
            # IntegrityError: a concurrent report of the same request_id won; OperationalError:
            # a deadlock or serialization failure. Either way the retry sees committed rows.
            if attempt == MAX_ATTEMPTS or (isinstance(exc, OperationalError) and not is_retryable(exc)):
                raise
            logger.info("usage report retry %s after %s", attempt, type(exc).__name__)
    raise AssertionError("unreachable")
