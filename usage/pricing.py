"""Exact cost of Claude API usage, from the dated price table.

Costs are computed exactly in ``Decimal`` USD, then stored as integer nano-USD:
actual costs round half-up, worst-case holds round up, so a hold is never below
the actual cost of a call that stays within it.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, fields
from datetime import date, datetime
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal

from django.db.models.signals import post_delete, post_save
from django.utils import timezone

from usage.models import NANO, ModelPrice, ServiceTier, Speed

MTOK = Decimal(1_000_000)
# The family word of an id the catalog lacks: claude-fable-5-1 is fable, claude-3-5-haiku-… is haiku.
_FAMILY_RE = re.compile(r"^claude-(?:\d+(?:-\d+)?-)?([a-z]+)\b")
# A dated snapshot id, claude-opus-4-7-20260416: priced as its alias when the catalog has no row for it.
_DATED_RE = re.compile(r"^(?P<alias>.+)-(?P<date>20\d{6})$")


class UnknownModel(Exception):
    def __init__(self, model: str) -> None:
        super().__init__(f"No price is known for model '{model}'.")
        self.model = model


@dataclass(frozen=True)
class TokenUsage:
    """Token counts as Anthropic reports them; ``input_tokens`` is uncached input only."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    cache_read_tokens: int = 0
    web_search_requests: int = 0

    @property
    def total_input(self) -> int:
        return self.input_tokens + self.cache_write_5m_tokens + self.cache_write_1h_tokens + self.cache_read_tokens

    @property
    def total_tokens(self) -> int:
        return self.total_input + self.output_tokens

    @classmethod
    def from_anthropic(cls, usage: dict) -> TokenUsage:
        """Read an Anthropic usage object; cache writes without a breakdown count as 5-minute writes."""
        breakdown = usage.get("cache_creation") or {}
        write_5m = int(breakdown.get("ephemeral_5m_input_tokens") or 0)
        write_1h = int(breakdown.get("ephemeral_1h_input_tokens") or 0)
        total_writes = int(usage.get("cache_creation_input_tokens") or 0)
        if total_writes > write_5m + write_1h:
            write_5m += total_writes - write_5m - write_1h
        tools = usage.get("server_tool_use") or {}
        return cls(
            input_tokens=int(usage.get("input_tokens") or 0),
            output_tokens=int(usage.get("output_tokens") or 0),
            cache_write_5m_tokens=write_5m,
            cache_write_1h_tokens=write_1h,
            cache_read_tokens=int(usage.get("cache_read_input_tokens") or 0),
            web_search_requests=int(tools.get("web_search_requests") or 0),
        )

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})


def model_family(model: str) -> str | None:
    """Return the family of a model id: the catalog's, else the word after ``claude-`` (``claude-3-5-haiku-…`` is haiku)."""
    rows = _rows(model)
    if rows:
        return rows[0].family
    match = _FAMILY_RE.match(model)
    return match.group(1) if match else None


# --- the price table, cached per process ------------------------------------------

_CACHE_TTL_SECONDS = 60.0
_lock = threading.Lock()
_cache: dict[str, list[ModelPrice]] | None = None
_cache_loaded_at = 0.0


def _load() -> dict[str, list[ModelPrice]]:
    by_name: dict[str, list[ModelPrice]] = {}
    for row in ModelPrice.objects.order_by("-effective_from"):
        for name in [row.model, *row.aliases]:
            by_name.setdefault(name, []).append(row)
    return by_name


def _table() -> dict[str, list[ModelPrice]]:
    global _cache, _cache_loaded_at
    now = time.monotonic()
    with _lock:
        if _cache is None or now - _cache_loaded_at > _CACHE_TTL_SECONDS:
            _cache = _load()
            _cache_loaded_at = now
        return _cache


def clear_price_cache(**kwargs) -> None:
    global _cache
    with _lock:
        _cache = None


post_save.connect(clear_price_cache, sender=ModelPrice)
post_delete.connect(clear_price_cache, sender=ModelPrice)


def _rows(model: str) -> list[ModelPrice]:
    """Return every row naming ``model``, newest first; a dated id the catalog lacks falls back to its alias."""
    table = _table()
    rows = table.get(model)
    if rows:
        return rows
    match = _DATED_RE.match(model)
    if match:
        return table.get(match.group("alias")) or []
    return []


def is_priced(model: str) -> bool:
    """Return whether the catalog prices ``model`` (a dated id counts when its alias is priced)."""
    return bool(_rows(model))


def known_families() -> list[str]:
    """Return every family the catalog knows (opus, sonnet, haiku, fable …), sorted."""
    return sorted({row.family for rows in _table().values() for row in rows if row.family})


def priced_models() -> list[ModelPrice]:
    """Return the newest row of every model (one per canonical id), for pickers and tiering."""
    seen: dict[str, ModelPrice] = {}
    for rows in _table().values():
        for row in rows:
            if not row.service_tier and row.model not in seen:
                seen[row.model] = row
    return sorted(seen.values(), key=lambda r: (r.family, -r.generation, r.model))


def is_on_sale(row: ModelPrice, *, today: date | None = None) -> bool:
    """Return whether ``row``'s model can still be called: not retired, nor past its retirement date.

    A retirement announced with a date takes effect on that day without a catalog edit.
    """
    today = today or timezone.now().date()
    return not row.retired and (row.retired_on is None or row.retired_on > today)


def price_for(model: str, *, at: datetime | None = None, service_tier: str = ServiceTier.STANDARD) -> ModelPrice:
    """Return the price row in effect for ``model`` at ``at`` (now by default).

    A dated id (``<alias>-YYYYMMDD``) with no row of its own is priced as its alias.
    """
    rows = _rows(model)
    if not rows:
        raise UnknownModel(model)
    at = at or timezone.now()
    effective = [r for r in rows if r.effective_from <= at] or [rows[-1]]
    if service_tier == ServiceTier.PRIORITY:
        for row in effective:
            if row.service_tier == ServiceTier.PRIORITY:
                return row
    for row in effective:
        if not row.service_tier:
            return row
    raise UnknownModel(model)


def canonical_model(model: str) -> str:
    return price_for(model).model


# --- cost ----------------------------------------------------------------------------


def usage_cost(
    price: ModelPrice,
    usage: TokenUsage,
    *,
    service_tier: str = ServiceTier.STANDARD,
    inference_geo: str = "",
    speed: str = Speed.STANDARD,
) -> Decimal:
    """Return the exact cost in USD of one request's usage at ``price``.

    The prompt-length band (``long_context_threshold``: Haiku 5.5's 100k, the older 200k
    rule) prices every token of a request whose prompt is over it. Then one multiplier of
    the tier or speed: batch (fast mode is not offered on batches, so speed is ignored
    there), else fast mode where the model has it. Then ``inference_geo='us'``. Web search
    is per request and takes none of them.
    """
    long_context = (
        price.long_context_threshold is not None
        and price.lc_input is not None
        and usage.total_input > price.long_context_threshold
    )
    if long_context:
        rates = (price.lc_input, price.lc_output, price.lc_cache_write_5m, price.lc_cache_write_1h, price.lc_cache_read)
    else:
        rates = (price.input, price.output, price.cache_write_5m, price.cache_write_1h, price.cache_read)
    # The lc_* prices are entered together with lc_input; a missing one fails here, as it always has.
    input_rate, output_rate, write_5m_rate, write_1h_rate, read_rate = (Decimal(r) for r in rates)  # type: ignore[arg-type]
    tokens = (
        usage.input_tokens * input_rate
        + usage.output_tokens * output_rate
        + usage.cache_write_5m_tokens * write_5m_rate
        + usage.cache_write_1h_tokens * write_1h_rate
        + usage.cache_read_tokens * read_rate
    ) / MTOK
    if service_tier == ServiceTier.BATCH:
        if price.service_tier != ServiceTier.BATCH:
            tokens *= Decimal(price.batch_factor)
    elif speed == Speed.FAST and price.fast_factor is not None:
        tokens *= Decimal(price.fast_factor)
    if inference_geo == "us":
        tokens *= Decimal(price.geo_us_factor)
    return tokens + usage.web_search_requests * Decimal(price.web_search_per_request)


def to_nano(usd: Decimal, *, rounding: str = ROUND_HALF_UP) -> int:
    return int((usd * NANO).to_integral_value(rounding=rounding))


def usage_cost_nano(
    model: str,
    usage: TokenUsage,
    *,
    service_tier: str = ServiceTier.STANDARD,
    inference_geo: str = "",
    speed: str = Speed.STANDARD,
    at: datetime | None = None,
) -> int:
    """Return the cost of one request in nano-USD, rounded half-up."""
    price = price_for(model, at=at, service_tier=service_tier)
    return to_nano(usage_cost(price, usage, service_tier=service_tier, inference_geo=inference_geo, speed=speed))


def planned_usage(
    *,
    input_tokens: int,
    max_tokens: int,
    cache_read_tokens: int = 0,
    cache_write_5m_tokens: int = 0,
    cache_write_1h_tokens: int = 0,
    web_search_requests: int = 0,
) -> TokenUsage:
    """Return the worst case of a planned call: declared input split by cache, max_tokens out, web searches."""
    declared_cache = cache_read_tokens + cache_write_5m_tokens + cache_write_1h_tokens
    return TokenUsage(
        input_tokens=max(input_tokens - declared_cache, 0),
        output_tokens=max_tokens,
        cache_write_5m_tokens=cache_write_5m_tokens,
        cache_write_1h_tokens=cache_write_1h_tokens,
        cache_read_tokens=cache_read_tokens,
        web_search_requests=web_search_requests,
    )


def worst_case_nano(
    model: str,
    planned: TokenUsage,
    *,
    service_tier: str = ServiceTier.STANDARD,
    inference_geo: str = "global",
    speed: str = Speed.STANDARD,
) -> int:
    """Return the hold for a planned call in nano-USD, rounded up.

    Priced as the caller declared the input split (DESIGN.md), with the same band, fast
    and geo multipliers as the actual cost and each planned web search at the model's
    per-request price: a call whose usage stays within each declared count and
    ``max_tokens`` never costs more than this.
    """
    price = price_for(model, service_tier=service_tier)
    cost = usage_cost(price, planned, service_tier=service_tier, inference_geo=inference_geo, speed=speed)
    return to_nano(cost, rounding=ROUND_CEILING)
