"""Writes to the ledger: usage events and the daily rollups kept current beside them."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from governance.instances import instance_new
from governance.models import ApiKey, Feature, Tenant
from usage.models import (
    HISTOGRAM_SIZE,
    ModelPrice,
    ServiceTier,
    Speed,
    UsageEvent,
    UsageRollup,
    histogram_bucket,
)
from usage.pricing import TokenUsage, UnknownModel, model_family, price_for, to_nano, usage_cost
from usage.signals import usage_recorded

logger = logging.getLogger(__name__)



@dataclass
class UsageInput:
    """One model call's usage as a service reports it."""

    feature: Feature
    model: str
    usage: TokenUsage
    service_tier: str = ServiceTier.STANDARD
    inference_geo: str = ""
    speed: str = Speed.STANDARD
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


def _price_or_none(model: str, *, at: datetime, service_tier: str) -> ModelPrice | None:
    try:
        return price_for(model, at=at, service_tier=service_tier)
    except UnknownModel:
        return None


def usage_event_build(
    *, tenant: Tenant, api_key: ApiKey | None, item: UsageInput, source: str, fallback_model: str | None = None
) -> UsageEvent:
    """Price one call with the row in effect when it happened and return an unsaved ledger row.

    Spent money is never refused: a model the catalog does not price is recorded with its
    tokens and ``priced=False``, at ``fallback_model``'s price when one is given (a commit
    passes its hold's model) or at 0. A dated id whose alias is priced is priced, not flagged.
    """
    occurred_at = item.occurred_at or timezone.now()
    price = _price_or_none(item.model, at=occurred_at, service_tier=item.service_tier)
    priced = price is not None
    if price is None and fallback_model:
        price = _price_or_none(fallback_model, at=occurred_at, service_tier=item.service_tier)
    cost_nano = 0
    if price is not None:
        cost = usage_cost(
            price, item.usage, service_tier=item.service_tier, inference_geo=item.inference_geo, speed=item.speed
        )
        cost_nano = to_nano(cost)
    model = price.model if priced and price is not None else item.model
    family = price.family if priced and price is not None else (model_family(item.model) or "")
    u = item.usage
    return instance_new(
        UsageEvent,
        tenant=tenant,
        feature=item.feature,
        api_key=api_key,
        run_id=item.run_id,
        request_id=item.request_id,
        model=model,
        family=family,
        service_tier=item.service_tier,
        inference_geo=item.inference_geo,
        speed=item.speed,
        input_tokens=u.input_tokens,
        output_tokens=u.output_tokens,
        cache_write_5m_tokens=u.cache_write_5m_tokens,
        cache_write_1h_tokens=u.cache_write_1h_tokens,
        cache_read_tokens=u.cache_read_tokens,
        web_search_requests=u.web_search_requests,
        cost_nano=cost_nano,
        priced=priced,
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


def rollup_delta(events: list[UsageEvent]) -> dict[str, Any]:
    """Return what these events add to their rollup: each of SUM_FIELDS, and both histograms."""
    delta: dict[str, Any] = dict.fromkeys(UsageRollup.SUM_FIELDS, 0)
    latency, ttft = [0] * HISTOGRAM_SIZE, [0] * HISTOGRAM_SIZE
    for event in events:
        delta["calls"] += 1
        delta["input_tokens"] += event.input_tokens
        delta["output_tokens"] += event.output_tokens
        delta["cache_write_5m_tokens"] += event.cache_write_5m_tokens
        delta["cache_write_1h_tokens"] += event.cache_write_1h_tokens
        delta["cache_read_tokens"] += event.cache_read_tokens
        delta["web_search_requests"] += event.web_search_requests
        delta["cost_nano"] += event.cost_nano
        if event.stop_reason == "max_tokens":
            delta["truncations"] += 1
        if event.max_tokens:
            delta["max_tokens_sum"] += event.max_tokens
            delta["max_tokens_calls"] += 1
            delta["output_tokens_capped"] += event.output_tokens
        if event.latency_ms is not None:
            delta["latency_sum_ms"] += event.latency_ms
            delta["latency_count"] += 1
            latency[histogram_bucket(event.latency_ms)] += 1
        if event.ttft_ms is not None:
            delta["ttft_sum_ms"] += event.ttft_ms
            delta["ttft_count"] += 1
            ttft[histogram_bucket(event.ttft_ms)] += 1
        if event.streamed:
            delta["streamed_calls"] += 1
    delta["latency_histogram"] = latency if any(latency) else []
    delta["ttft_histogram"] = ttft if any(ttft) else []
    return delta


def histograms_sum(a: list[int], b: list[int]) -> list[int]:
    """Add two histograms bucket by bucket; an empty list is a histogram of nothing."""
    if not a or not b:
        return list(a or b)
    return [x + y for x, y in zip(a, b, strict=True)]


def rollups_add(*, tenant: Tenant, events: list[UsageEvent]) -> None:
    """Add new ledger rows to their daily rollups; call inside the transaction that wrote them."""
    groups: dict[tuple, list[UsageEvent]] = defaultdict(list)
    tz = tenant.tz
    for event in events:
        day = event.occurred_at.astimezone(tz).date()
        groups[(event.feature_id, event.model, event.service_tier, day)].append(event)
    # A fixed order of row locks, so two batches touching the same rollups never deadlock.
    for (feature_id, model, tier, day), group in sorted(groups.items(), key=lambda kv: (str(kv[0][0]), *kv[0][1:])):
        key = dict(tenant=tenant, feature_id=feature_id, model=model, service_tier=tier, day=day)
        delta = rollup_delta(group)
        if connection.vendor == "postgresql":
            _rollup_upsert(key, group[0].family, delta)
            continue
        rollup = _rollup_locked(key, group[0].family)
        for name in UsageRollup.SUM_FIELDS:
            setattr(rollup, name, getattr(rollup, name) + delta[name])
        rollup.latency_histogram = histograms_sum(rollup.latency_histogram, delta["latency_histogram"])
        rollup.ttft_histogram = histograms_sum(rollup.ttft_histogram, delta["ttft_histogram"])
        rollup.save()


def _rollup_locked(key: dict[str, Any], family: str) -> UsageRollup:
    rollup = UsageRollup.objects.select_for_update().filter(**key).first()
    if rollup is not None:
        return rollup
    try:
        with transaction.atomic():
            return UsageRollup.objects.create(family=family, **key)
    except IntegrityError:
        return UsageRollup.objects.select_for_update().get(**key)


# Histograms are JSON arrays of equal length; PostgreSQL adds them bucket by bucket.
_PG_HISTOGRAM_SUM = """CASE
    WHEN jsonb_array_length(EXCLUDED.{c}) = 0 THEN r.{c}
    WHEN jsonb_array_length(r.{c}) = 0 THEN EXCLUDED.{c}
    ELSE (SELECT jsonb_agg(a.n::bigint + b.n::bigint ORDER BY a.i)
          FROM jsonb_array_elements_text(r.{c}) WITH ORDINALITY AS a(n, i)
          JOIN jsonb_array_elements_text(EXCLUDED.{c}) WITH ORDINALITY AS b(n, i) ON a.i = b.i)
END"""


ROLLUP_HISTOGRAMS = ("latency_histogram", "ttft_histogram")


@functools.cache
def _rollup_upsert_sql() -> str:
    """Return the rollup upsert (built once: it depends only on the model)."""
    sums = UsageRollup.SUM_FIELDS
    columns = ["tenant_id", "feature_id", "model", "service_tier", "day", "family", *sums, *ROLLUP_HISTOGRAMS]
    marks = ["%s"] * (len(columns) - len(ROLLUP_HISTOGRAMS)) + ["%s::jsonb"] * len(ROLLUP_HISTOGRAMS)
    updates = [f"{name} = r.{name} + EXCLUDED.{name}" for name in sums]
    updates += [f"{name} = {_PG_HISTOGRAM_SUM.format(c=name)}" for name in ROLLUP_HISTOGRAMS]
    return (
        f"INSERT INTO {UsageRollup._meta.db_table} AS r ({', '.join(columns)}) VALUES ({', '.join(marks)}) "
        f"ON CONFLICT (tenant_id, feature_id, model, service_tier, day) DO UPDATE SET {', '.join(updates)}"
    )


def _rollup_upsert(key: dict[str, Any], family: str, delta: dict[str, Any]) -> None:
    """Add ``delta`` to a rollup in one statement (PostgreSQL): insert it, or add to the row there."""
    values = [key["tenant"].pk, key["feature_id"], key["model"], key["service_tier"], key["day"], family,
              *(delta[name] for name in UsageRollup.SUM_FIELDS),
              *(json.dumps(delta[name]) for name in ROLLUP_HISTOGRAMS)]
    with connection.cursor() as cursor:
        cursor.execute(_rollup_upsert_sql(), values)


class UsageConflict(Exception):
    """A request_id already recorded with a different body (or being recorded by another request)."""

    def __init__(self, request_id: str) -> None:
        super().__init__(f"Usage for request_id '{request_id}' is already recorded with a different body.")
        self.request_id = request_id


def usage_body_hash(item: UsageInput) -> str:
    """Return a stable hash of what a report says about a call, to tell a retry from a different call."""
    body = {
        "feature": item.feature.key, "model": item.model, "usage": dataclasses.asdict(item.usage),
        "service_tier": item.service_tier, "inference_geo": item.inference_geo, "speed": item.speed,
        "run_id": item.run_id, "occurred_at": item.occurred_at.isoformat() if item.occurred_at else None,
        "stop_reason": item.stop_reason, "latency_ms": item.latency_ms, "ttft_ms": item.ttft_ms,
        "streamed": item.streamed, "max_tokens": item.max_tokens, "metadata": item.metadata,
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def usage_events_prepare(
    *, tenant: Tenant, api_key: ApiKey | None, items: list[UsageInput], source: str
) -> list[RecordedUsage]:
    """Price new ledger rows (unsaved) and find the repeats; a request_id seen with another body is a conflict.

    A known request_id with the same body is a duplicate, answered with the row already
    recorded. Save the new rows with ``usage_events_save`` in the same transaction.
    """
    wanted = [item.request_id for item in items if item.request_id]
    existing = {
        e.request_id: e for e in UsageEvent.objects.filter(tenant=tenant, request_id__in=wanted)
    } if wanted else {}
    results: list[RecordedUsage] = []
    seen: dict[str, UsageEvent] = {}
    for item in items:
        body_hash = usage_body_hash(item)
        known = existing.get(item.request_id) or seen.get(item.request_id) if item.request_id else None
        if known is not None:
            # Rows recorded before bodies were hashed have none to compare: a repeat, as it was then.
            if known.body_hash and known.body_hash != body_hash:
                raise UsageConflict(item.request_id)
            results.append(RecordedUsage(known, created=False))
            continue
        event = usage_event_build(tenant=tenant, api_key=api_key, item=item, source=source)
        event.body_hash = body_hash
        if item.request_id:
            seen[item.request_id] = event
        results.append(RecordedUsage(event, created=True))
    return results


def usage_announce(*, tenant: Tenant, events: list[UsageEvent]) -> None:
    """Tell the layers above that these ledger rows were just recorded (``usage.signals``).

    Call it inside the transaction that saved them; the alert layer raises ``unpriced_usage``
    for rows recorded without a price.
    """
    if events:
        usage_recorded.send(sender=UsageEvent, tenant=tenant, events=events)


def usage_events_save(*, tenant: Tenant, events: list[UsageEvent]) -> None:
    """Insert new ledger rows and add them to their rollups; call inside the transaction that priced them.

    Raises IntegrityError when a concurrent writer inserted the same request_id first.
    """
    if events:
        UsageEvent.objects.bulk_create(events)
        rollups_add(tenant=tenant, events=events)
