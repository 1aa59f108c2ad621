"""The lever board: per feature, where the money goes and which lever would save it.

Everything here is read from the daily rollups (``UsageRollup``), never from the
ledger, so the board costs the same whether a tenant made a thousand calls or a
billion: one grouped query for the sums, one for the latency histograms of
interactive features, one per active budget.

Rollup sums span many calls, so the per-request long-context rule (PRICING.md)
cannot be applied to them: every what-if price below (one tier down, uncached,
batch) uses a model's base rates. The actual spend (``cost_nano``) is what the
calls really cost, long context and data residency included.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from itertools import pairwise
from typing import Any

from django.db.models import BigIntegerField, Case, F, FloatField, IntegerField, Sum, Value, When
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast, Greatest
from django.utils import timezone

from budgets.bodies import window_status
from budgets.models import Budget
from budgets.projections import window_projections
from budgets.selectors import current_window
from governance.models import Feature, Tenant
from usage.models import (
    HISTOGRAM_SIZE,
    LATENCY_BUCKETS_MS,
    NANO,
    ModelPrice,
    ServiceTier,
    UsageEvent,
    UsageRollup,
)
from usage.money import nano_to_usd
from usage.pricing import (
    MTOK,
    TokenUsage,
    UnknownModel,
    is_on_sale,
    price_for,
    priced_models,
    to_nano,
    usage_cost,
)

# Levers in the order the board shows them; also the tie-break when potentials are equal.
MODEL_SELECTION = "model_selection"
PROMPT_CACHING = "prompt_caching"
BATCH = "batch"
MAX_TOKENS = "max_tokens"
LATENCY = "latency"
BUDGET = "budget"
LEVERS = (MODEL_SELECTION, PROMPT_CACHING, BATCH, BUDGET, MAX_TOKENS, LATENCY)

# Tiers of today's lineup, strongest first; "one tier down" is the next family below.
FAMILY_TIER = {"mythos": 4, "fable": 4, "opus": 3, "sonnet": 2, "haiku": 1}
LOWER_FAMILY = {"fable": "opus", "mythos": "opus", "opus": "sonnet", "sonnet": "haiku"}
# Each lever is judged on the last days of the range: a lever pulled last week is pulled.
RECENT_DAYS = 7
# A lever counts as pulled when a day with most spend the old way is followed only by days
# with at least this share the new way.
PULLED_SHARE = Decimal("0.9")
# Gaps between calls are measured on at most this many of the latest calls of a feature.
GAP_SAMPLE = 2000
CACHE_TTLS = (("5m", 300), ("1h", 3600))
# Firm figures are measured (batch, caching); what-ifs hold only if the answers stay good.
FIRM_LEVERS = ("prompt_caching", "batch")
WHAT_IF_LEVERS = ("model_selection",)
# Levers that change neither the model nor its answers, so need no evals to pull.
SAME_ANSWER_LEVERS = (PROMPT_CACHING, BATCH, MAX_TOKENS)
# "Material": at least a twentieth of the feature's spend over the range.
MATERIAL_SHARE_DENOMINATOR = 20

# Claude does not cache a prefix shorter than the model's minimum (Anthropic's prompt
# caching docs), so below it caching is no lever. Listed models as documented; the 5.x
# Opus-class models 512; other models not listed: 1,024.
MIN_CACHEABLE_TOKENS = {
    "claude-opus-4-7": 4096,
    "claude-opus-4-6": 4096,
    "claude-opus-4-5-20251101": 4096,
    "claude-sonnet-4-6": 2048,
    "claude-haiku-4-5-20251001": 4096,
    "claude-3-5-haiku-20241022": 2048,
    "claude-3-haiku-20240307": 2048,
}
DEFAULT_MIN_CACHEABLE_TOKENS = 1024
OPUS_CLASS_5_MIN_CACHEABLE_TOKENS = 512


def min_cacheable_tokens(price: ModelPrice) -> int:
    """Return the shortest prefix the model caches."""
    if price.model in MIN_CACHEABLE_TOKENS:
        return MIN_CACHEABLE_TOKENS[price.model]
    if FAMILY_TIER.get(price.family, 0) >= FAMILY_TIER["opus"] and price.generation >= 5:
        return OPUS_CLASS_5_MIN_CACHEABLE_TOKENS
    return DEFAULT_MIN_CACHEABLE_TOKENS
# "Little caching": under a fifth of the input is read from cache.
LITTLE_CACHING_SHARE = 0.2
# Above this share of calls stopping at max_tokens, truncation deserves attention.
TRUNCATION_RATE_HIGH = 0.02
# Below this share of the held max_tokens actually used, holds tie up budget for nothing.
CAP_UTILISATION_LOW = 0.25
# Interactive features streaming fewer than this share of calls, with answers slower than
# LATENCY_WORTH_STREAMING_MS at the median, would feel faster streamed.
STREAMED_SHARE_LOW = 0.5
LATENCY_WORTH_STREAMING_MS = 1500



# --- reading the rollups --------------------------------------------------------------


def _rollups(*, tenant: Tenant, start: date, end: date, feature_ids: Collection | None):
    rollups = UsageRollup.objects.filter(tenant=tenant, day__gte=start, day__lte=end)
    if feature_ids is not None:
        rollups = rollups.filter(feature_id__in=list(feature_ids))
    return rollups


def _grouped_sums(rollups) -> list[dict[str, Any]]:
    """Return one row of sums per feature × model × tier over the range."""
    sums = {name: Sum(name) for name in UsageRollup.SUM_FIELDS}
    # Writes a day's reads do not cover were never read back: a cache lives five minutes
    # or an hour, so it is (all but) never read on another day than it was written.
    written = F("cache_write_5m_tokens") + F("cache_write_1h_tokens")
    unread = written - F("cache_read_tokens")
    sums["unread_write_tokens"] = Sum(Greatest(unread, Value(0), output_field=BigIntegerField()))
    # Split each day's unread tokens between 5-minute and 1-hour writes in proportion to
    # what was written (in floating point: a product of two token counts can overflow
    # a bigint, and this is a token estimate, not money).
    sums["unread_write_5m_tokens"] = Sum(
        Case(
            When(
                cache_read_tokens__lt=written,
                then=Cast("cache_write_5m_tokens", FloatField()) * unread / written,
            ),
            default=Value(0.0),
            output_field=FloatField(),
        )
    )
    # Sums are named apart from the columns: an annotation named like a column would
    # shadow it in the expressions above.
    rows = (
        rollups.order_by()
        .values("feature_id", "model", "family", "service_tier")
        .annotate(**{f"total_{name}": value for name, value in sums.items()})
    )
    return [
        {name.removeprefix("total_"): value for name, value in row.items()} for row in rows
    ]


def _merged_histograms(rollups, feature_ids: Collection) -> dict[Any, tuple[list[int], list[int]]]:
    """Return each feature's latency and ttft histograms summed over the range.

    Summed bucket by bucket in the database: reading every day's lists into Python and
    parsing them costs several times more than letting the database add them up.
    """
    if not feature_ids:
        return {}
    buckets = {
        f"{prefix}{i}": Sum(Cast(KeyTextTransform(str(i), column), IntegerField()))
        for prefix, column in (("latency_", "latency_histogram"), ("ttft_", "ttft_histogram"))
        for i in range(HISTOGRAM_SIZE)
    }
    rows = rollups.filter(feature_id__in=list(feature_ids)).order_by().values("feature_id").annotate(**buckets)
    return {
        row["feature_id"]: (
            [row[f"latency_{i}"] or 0 for i in range(HISTOGRAM_SIZE)],
            [row[f"ttft_{i}"] or 0 for i in range(HISTOGRAM_SIZE)],
        )
        for row in rows
    }


def histogram_percentile(counts: list[int], fraction: float) -> int | None:
    """Return the ``fraction`` percentile (ms) of a fixed-bucket histogram, None without samples.

    Interpolated linearly inside the bucket that holds it, as Prometheus does; in the
    open last bucket it is that bucket's lower bound, i.e. "at least" that long.
    """
    total = sum(counts)
    if total == 0:
        return None
    rank = fraction * total
    below = 0
    for i, count in enumerate(counts):
        if count and below + count >= rank:
            if i >= len(LATENCY_BUCKETS_MS):
                return LATENCY_BUCKETS_MS[-1]
            lower = LATENCY_BUCKETS_MS[i - 1] if i else 0
            upper = LATENCY_BUCKETS_MS[i]
            return round(lower + (upper - lower) * (rank - below) / count)
        below += count
    return LATENCY_BUCKETS_MS[-1]


# --- prices ---------------------------------------------------------------------------


def one_tier_down(model: str) -> ModelPrice | None:
    """Return the model one tier down in today's lineup: fable/mythos → opus → sonnet → haiku.

    Same generation where the lower family has one, else the newest of the lower
    family; only models still on sale (a retired model is no advice).
    """
    try:
        price = price_for(model)
    except UnknownModel:
        return None
    lower = LOWER_FAMILY.get(price.family)
    if lower is None:
        return None
    on_sale = [row for row in priced_models() if row.family == lower and is_on_sale(row)]
    if not on_sale:
        return None
    same_generation = [row for row in on_sale if row.generation == price.generation]
    if same_generation:
        return same_generation[0]
    return max(on_sale, key=lambda row: row.generation)


def _generation_major(model: str | None) -> int | None:
    if model is None:
        return None
    try:
        return int(price_for(model).generation)
    except UnknownModel:
        return None


def _display_name(model: str) -> str:
    try:
        return price_for(model).display_name
    except UnknownModel:
        return model


def _base_rates(price: ModelPrice) -> ModelPrice:
    flat = copy.copy(price)
    flat.long_context_threshold = None
    return flat


def _tier_factor(price: ModelPrice, service_tier: str) -> Decimal:
    if service_tier == ServiceTier.BATCH and price.service_tier != ServiceTier.BATCH:
        return Decimal(price.batch_factor)
    return Decimal(1)


def _usage(row: dict[str, Any]) -> TokenUsage:
    return TokenUsage(
        input_tokens=row["input_tokens"] or 0,
        output_tokens=row["output_tokens"] or 0,
        cache_write_5m_tokens=row["cache_write_5m_tokens"] or 0,
        cache_write_1h_tokens=row["cache_write_1h_tokens"] or 0,
        cache_read_tokens=row["cache_read_tokens"] or 0,
        web_search_requests=row["web_search_requests"] or 0,
    )


# --- per-feature accumulation ---------------------------------------------------------


@dataclass
class _ModelLine:
    model: str
    family: str
    display: str
    calls: int = 0
    spend_nano: int = 0
    lower_model: str | None = None
    lower_display: str | None = None
    lower_cost: Decimal = Decimal(0)
    lower_priced: bool = True


@dataclass
class _FeatureSums:
    calls: int = 0
    spend_nano: int = 0
    tokens: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    families: dict[str, list[int]] = field(default_factory=dict)  # family -> [calls, spend]
    models: dict[str, _ModelLine] = field(default_factory=dict)
    cache_saved: Decimal = Decimal(0)
    unread_write_tokens: int = 0
    unread_write_spend: Decimal = Decimal(0)
    unread_write_premium: Decimal = Decimal(0)
    full_cache_potential: Decimal = Decimal(0)
    cacheable_input_tokens: int = 0
    batch_spend_nano: int = 0
    standard_spend_nano: int = 0
    batch_saving: Decimal = Decimal(0)
    # The cached prefix (reads and writes) and what it would cost each way, for the TTL choice.
    prefix_tokens: int = 0
    prefix_calls: int = 0
    prefix_current: Decimal = Decimal(0)
    prefix_at_input: Decimal = Decimal(0)
    prefix_at_read: Decimal = Decimal(0)
    prefix_at_w5: Decimal = Decimal(0)
    prefix_at_w1: Decimal = Decimal(0)
    prefix_below_minimum: int = 0  # cached tokens of calls whose prefix is shorter than the model caches
    min_cacheable: int = 0  # of the model with the most spend
    top_model_spend: int = -1


def _accumulate(sums: _FeatureSums, row: dict[str, Any], at: datetime) -> None:
    model, tier = row["model"], row["service_tier"]
    calls, spend = row["calls"] or 0, row["cost_nano"] or 0
    sums.calls += calls
    sums.spend_nano += spend
    for name in UsageRollup.SUM_FIELDS:
        sums.tokens[name] += row[name] or 0
    family = sums.families.setdefault(row["family"], [0, 0])
    family[0] += calls
    family[1] += spend
    if tier == ServiceTier.BATCH:
        sums.batch_spend_nano += spend
    elif tier == ServiceTier.STANDARD:
        sums.standard_spend_nano += spend

    line = sums.models.get(model)
    if line is None:
        line = sums.models[model] = _ModelLine(model=model, family=row["family"], display=_display_name(model))
        lower = one_tier_down(model)
        if lower is not None:
            line.lower_model, line.lower_display = lower.model, lower.display_name
    line.calls += calls
    line.spend_nano += spend

    usage = _usage(row)
    try:
        price = price_for(model, at=at, service_tier=tier)
    except UnknownModel:
        line.lower_priced = False
        return
    if line.lower_model is not None:
        try:
            lower_price = price_for(line.lower_model, at=at, service_tier=tier)
            line.lower_cost += usage_cost(_base_rates(lower_price), usage, service_tier=tier)
        except UnknownModel:
            line.lower_priced = False

    factor = _tier_factor(price, tier)
    input_rate = Decimal(price.input)
    read_rate = Decimal(price.cache_read)
    w5_rate, w1_rate = Decimal(price.cache_write_5m), Decimal(price.cache_write_1h)
    # Caching vs the same tokens sent uncached: reads are cheaper than input, writes dearer.
    sums.cache_saved += (
        usage.cache_read_tokens * (input_rate - read_rate)
        - usage.cache_write_5m_tokens * (w5_rate - input_rate)
        - usage.cache_write_1h_tokens * (w1_rate - input_rate)
    ) * factor / MTOK
    minimum = min_cacheable_tokens(price)
    if spend > sums.top_model_spend:
        sums.top_model_spend, sums.min_cacheable = spend, minimum
    cached = usage.cache_read_tokens + usage.cache_write_5m_tokens + usage.cache_write_1h_tokens
    if cached and calls:
        if cached < calls * minimum:
            sums.prefix_below_minimum += cached
        else:
            sums.prefix_tokens += cached
            sums.prefix_calls += calls
            sums.prefix_current += (
                usage.cache_read_tokens * read_rate + usage.cache_write_5m_tokens * w5_rate
                + usage.cache_write_1h_tokens * w1_rate
            ) * factor / MTOK
            sums.prefix_at_input += cached * input_rate * factor / MTOK
            sums.prefix_at_read += cached * read_rate * factor / MTOK
            sums.prefix_at_w5 += cached * w5_rate * factor / MTOK
            sums.prefix_at_w1 += cached * w1_rate * factor / MTOK
    # Only calls long enough to cache at all can gain from it.
    if calls and usage.total_input >= calls * minimum:
        sums.cacheable_input_tokens += usage.total_input
        sums.full_cache_potential += usage.input_tokens * (input_rate - read_rate) * factor / MTOK

    unread = row["unread_write_tokens"] or 0
    if unread:
        unread_5m = min(round(row["unread_write_5m_tokens"] or 0), unread)
        unread_1h = unread - unread_5m
        sums.unread_write_tokens += unread
        sums.unread_write_spend += (unread_5m * w5_rate + unread_1h * w1_rate) * factor / MTOK
        sums.unread_write_premium += (
            unread_5m * (w5_rate - input_rate) + unread_1h * (w1_rate - input_rate)
        ) * factor / MTOK

    if tier == ServiceTier.STANDARD:
        search_cost = usage.web_search_requests * Decimal(price.web_search_per_request)
        token_spend = Decimal(spend) / NANO - search_cost
        sums.batch_saving += max(token_spend, Decimal(0)) * (1 - Decimal(price.batch_factor))


# --- text -----------------------------------------------------------------------------


def _usd_text(nano: int) -> str:
    usd = Decimal(nano) / NANO
    if abs(usd) >= 1:
        return f"${usd:,.2f}"
    if abs(usd) >= Decimal("0.01"):
        return f"${usd:.2f}"
    return f"${usd:.4f}"


def _pct_text(ratio: float) -> str:
    percent = ratio * 100
    return f"{percent:.0f}%" if percent >= 10 or percent == 0 else f"{percent:.1f}%"


def _seconds_text(ms: int) -> str:
    return f"{ms / 1000:.1f} s"


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


# --- levers ---------------------------------------------------------------------------


def _model_selection(sums: _FeatureSums, pulled: dict[str, Any] | None) -> dict[str, Any]:
    by_model = []
    lower_total = 0
    saving_total = 0
    biggest: tuple[int, _ModelLine] | None = None
    for line in sorted(sums.models.values(), key=lambda m: (-m.spend_nano, m.model)):
        if line.lower_model is not None and line.lower_priced:
            lower_nano = to_nano(line.lower_cost)
            saving = max(line.spend_nano - lower_nano, 0)
        else:
            lower_nano, saving = line.spend_nano, 0
        lower_total += lower_nano
        saving_total += saving
        if saving and (biggest is None or saving > biggest[0]):
            biggest = (saving, line)
        by_model.append(
            {
                "model": line.model,
                "family": line.family,
                "calls": line.calls,
                "spend_usd": nano_to_usd(line.spend_nano),
                "spend_nano": line.spend_nano,
                "one_tier_down_model": line.lower_model if line.lower_priced else None,
                "one_tier_down_cost_usd": nano_to_usd(lower_nano) if line.lower_model and line.lower_priced else None,
                "one_tier_down_cost_nano": lower_nano if line.lower_model and line.lower_priced else None,
                "potential_saving_usd": nano_to_usd(saving),
                "potential_saving_nano": saving,
            }
        )
    by_family = [
        {"family": family, "calls": calls, "spend_usd": nano_to_usd(spend), "spend_nano": spend}
        for family, (calls, spend) in sorted(sums.families.items(), key=lambda kv: (-kv[1][1], kv[0]))
    ]
    recommendation = None
    if biggest is not None:
        saving, line = biggest
        share = saving / line.spend_nano if line.spend_nano else 0
        recommendation = (
            f"What if: {line.lower_display} instead of {line.display}: the same usage would have cost "
            f"{_usd_text(line.spend_nano - saving)} instead of {_usd_text(line.spend_nano)} "
            f"(save {_usd_text(saving)}, {_pct_text(share)}), if the smaller model passes your evals."
        )
        if _generation_major(line.model) != _generation_major(line.lower_model):
            recommendation += (
                " A model of another generation may count the same text as a different number of tokens "
                "(a newer tokenizer): the figure prices today's token counts."
            )
    return {
        "by_family": by_family,
        "by_model": by_model,
        "one_tier_down_cost_usd": nano_to_usd(lower_total),
        "one_tier_down_cost_nano": lower_total,
        "potential_saving_usd": nano_to_usd(saving_total),
        "potential_saving_nano": saving_total,
        "potential_note": "potential, if the smaller model passes your evals",
        "recommendation": recommendation,
        "what_if": True,
        "pulled": pulled,
        "basis": (
            f"Last {RECENT_DAYS} days: each model's token counts priced at the base rates of the model one "
            f"tier down in today's lineup (fable/mythos → opus → sonnet → haiku, same generation where there "
            f"is one). A what-if: it holds only if the smaller model's answers are good enough."
        ),
    }


@dataclass(frozen=True)
class CallGaps:
    """How far apart a feature's latest calls came: what a 5-minute or a 1-hour cache would catch."""

    sampled: int  # calls looked at (the oldest has no known predecessor: counted a miss)
    within: dict[str, int]  # TTL name -> calls that came within that long of the previous one
    median_seconds: int | None

    def share(self, ttl: str) -> Decimal:
        return Decimal(self.within[ttl]) / self.sampled if self.sampled else Decimal(0)


def call_gaps(*, tenant: Tenant, feature_ids: Collection, start: datetime, end: datetime) -> dict[Any, CallGaps]:
    """Return the gaps between each feature's latest calls (at most ``GAP_SAMPLE``) from ``start`` to ``end``.

    Read from the ledger: the only place that knows when each call happened.
    """
    found = {}
    for feature_id in feature_ids:
        times = list(
            UsageEvent.objects.filter(tenant=tenant, feature_id=feature_id, occurred_at__gte=start,
                                      occurred_at__lt=end)
            .order_by("-occurred_at").values_list("occurred_at", flat=True)[:GAP_SAMPLE]
        )
        if not times:
            continue
        gaps = sorted(int((newer - older).total_seconds()) for newer, older in pairwise(times))
        within = {name: sum(1 for g in gaps if g <= seconds) for name, seconds in CACHE_TTLS}
        found[feature_id] = CallGaps(len(times), within, gaps[len(gaps) // 2] if gaps else None)
    return found


def _minutes_text(seconds: int | None) -> str:
    if seconds is None:
        return "—"
    return f"{seconds // 60} min" if seconds >= 120 else f"{seconds} s"


def _prompt_caching(sums: _FeatureSums, gaps: CallGaps | None) -> dict[str, Any]:
    t = sums.tokens
    total_input = (
        t["input_tokens"] + t["cache_write_5m_tokens"] + t["cache_write_1h_tokens"] + t["cache_read_tokens"]
    )
    read_share = _ratio(t["cache_read_tokens"], total_input)
    avg_input = total_input // sums.calls if sums.calls else 0
    little_caching = sums.cacheable_input_tokens > 0 and (read_share or 0) < LITTLE_CACHING_SHARE
    unread_spend = to_nano(sums.unread_write_spend)
    prefix = sums.prefix_tokens // sums.prefix_calls if sums.prefix_calls else 0
    current_ttl = "1h" if t["cache_write_1h_tokens"] > t["cache_write_5m_tokens"] else "5m"

    costs: dict[str, int] = {}
    recommended = None
    potential = 0
    texts = []
    if sums.prefix_tokens and gaps is not None and gaps.sampled:
        # What the prefix these calls cache would cost with each TTL at the gaps measured:
        # a call within the TTL of the previous one reads (0.1x input), any other writes
        # (1.25x for 5 minutes, 2x for an hour); uncached, every call pays full input.
        costs = {
            "current": to_nano(sums.prefix_current),
            "none": to_nano(sums.prefix_at_input),
            "5m": to_nano(sums.prefix_at_read * gaps.share("5m") + sums.prefix_at_w5 * (1 - gaps.share("5m"))),
            "1h": to_nano(sums.prefix_at_read * gaps.share("1h") + sums.prefix_at_w1 * (1 - gaps.share("1h"))),
        }
        best = min(("1h", "5m", "none"), key=lambda name: costs[name])
        saving = costs["current"] - costs[best]
        if best != current_ttl and saving > 0:
            recommended, potential = best, saving
            catch = (
                f"calls come a median {_minutes_text(gaps.median_seconds)} apart: "
                f"{_pct_text(float(gaps.share('5m')))} within 5 minutes of the previous one, "
                f"{_pct_text(float(gaps.share('1h')))} within an hour"
            )
            if best == "none":
                texts.append(
                    f"Caching costs more than it saves here ({catch}): every write pays the premium and "
                    f"few are read. Sent uncached, the {prefix:,}-token prefix would cost "
                    f"{_usd_text(costs['none'])} instead of {_usd_text(costs['current'])}: save {_usd_text(saving)}."
                )
            else:
                label = "1-hour" if best == "1h" else "5-minute"
                texts.append(
                    f"Use {label} cache writes (cache_control ttl \"{best}\"): {catch}. The {prefix:,}-token "
                    f"cached prefix would cost {_usd_text(costs[best])} instead of {_usd_text(costs['current'])}: "
                    f"save {_usd_text(saving)}."
                )
    elif little_caching:
        # Nothing cached: how long a shared prefix is cannot be seen from token counts, so no figure.
        timing = (
            f": {_pct_text(float(gaps.share('1h')))} of calls come within an hour of the previous one, "
            f"{_pct_text(float(gaps.share('5m')))} within 5 minutes" if gaps is not None and gaps.sampled else ""
        )
        texts.append(
            f"Calls send {avg_input:,} input tokens on average and little is read from cache. If they share a "
            f"stable prefix (system prompt, tools, documents) of at least {sums.min_cacheable:,} tokens, mark it "
            f"with cache_control{timing}. The board measures the saving once the cache is read."
        )
    if sums.prefix_below_minimum:
        texts.append(
            f"{sums.prefix_below_minimum:,} cached tokens came from prompts shorter than the model's minimum "
            f"cacheable length ({sums.min_cacheable:,} tokens)."
        )
    basis = (
        f"Last {RECENT_DAYS} days. Measured: the cached prefix ({prefix:,} tokens a call, cache reads and writes), "
        f"the gaps between the latest {gaps.sampled if gaps else 0:,} calls against the 5-minute and 1-hour "
        f"lifetimes, the model's rates (writes 1.25x input for 5 minutes and 2x for an hour, reads as priced) "
        f"and its minimum cacheable length ({sums.min_cacheable:,} tokens)."
    )
    return {
        "input_tokens": t["input_tokens"],
        "cache_write_5m_tokens": t["cache_write_5m_tokens"],
        "cache_write_1h_tokens": t["cache_write_1h_tokens"],
        "cache_read_tokens": t["cache_read_tokens"],
        "total_input_tokens": total_input,
        "average_input_tokens_per_call": avg_input,
        "cache_read_share": read_share,
        "saved_by_caching_usd": nano_to_usd(to_nano(sums.cache_saved)),
        "saved_by_caching_nano": to_nano(sums.cache_saved),
        "unread_write_tokens": sums.unread_write_tokens,
        "unread_writes_usd": nano_to_usd(unread_spend),
        "unread_writes_nano": unread_spend,
        "large_input_little_caching": little_caching,
        "cached_prefix_tokens_per_call": prefix,
        "min_cacheable_tokens": sums.min_cacheable,
        "gaps": {
            "sampled_calls": gaps.sampled if gaps else 0,
            "median_seconds": gaps.median_seconds if gaps else None,
            "within_5m_share": round(float(gaps.share("5m")), 4) if gaps else None,
            "within_1h_share": round(float(gaps.share("1h")), 4) if gaps else None,
        },
        "prefix_cost_usd": {name: nano_to_usd(value) for name, value in costs.items()},
        "current_ttl": current_ttl if sums.prefix_tokens else None,
        "recommended_ttl": recommended,
        "potential_saving_usd": nano_to_usd(potential),
        "potential_saving_nano": potential,
        "recommendation": " ".join(texts) or None,
        "basis": basis,
    }


def _batch(sums: _FeatureSums, feature: Feature, pulled: dict[str, Any] | None) -> dict[str, Any]:
    movable = 0 if feature.interactive else sums.standard_spend_nano
    potential = 0 if feature.interactive else to_nano(sums.batch_saving)
    recommendation = None
    if potential > 0:
        recommendation = (
            f"This feature is latency tolerant, yet {_usd_text(movable)} ran on the standard tier. "
            f"Sent through the Message Batches API it would have cost {_usd_text(movable - potential)}: "
            f"save {_usd_text(potential)}."
        )
    return {
        "latency_tolerant": not feature.interactive,
        "batch_spend_usd": nano_to_usd(sums.batch_spend_nano),
        "batch_spend_nano": sums.batch_spend_nano,
        "batch_share": _ratio(sums.batch_spend_nano, sums.spend_nano),
        "standard_spend_usd": nano_to_usd(sums.standard_spend_nano),
        "standard_spend_nano": sums.standard_spend_nano,
        "movable_spend_usd": nano_to_usd(movable),
        "movable_spend_nano": movable,
        "potential_saving_usd": nano_to_usd(potential),
        "potential_saving_nano": potential,
        "recommendation": recommendation,
        "pulled": pulled,
        "basis": (
            f"Last {RECENT_DAYS} days: standard-tier spend of a feature marked latency tolerant, priced at "
            f"the model's batch factor (0.5x); web search is not discounted."
        ),
    }


def _max_tokens(sums: _FeatureSums, feature: Feature) -> dict[str, Any]:
    t = sums.tokens
    calls, truncations = sums.calls, t["truncations"]
    rate = _ratio(truncations, calls)
    utilisation = _ratio(t["output_tokens_capped"], t["max_tokens_sum"])
    # Cut-off answers are usually retried or thrown away: their share of spend is at stake.
    truncated_spend = sums.spend_nano * truncations // calls if calls else 0
    texts = []
    # Truncation is a quality signal, not a saving: raising a cap costs more per call and
    # changes the answers, so no money figure is claimed for it.
    potential = 0
    if rate is not None and rate >= TRUNCATION_RATE_HIGH:
        texts.append(
            f"{_pct_text(rate)} of answers were cut off at max_tokens: check they are still useful; "
            f"raising max_tokens makes those calls longer and dearer, asking for shorter answers does not."
        )
    if feature.max_tokens_cap is None:
        texts.append("No max_tokens cap is set: set one as a guard against runaway output.")
    if utilisation is not None and utilisation < CAP_UTILISATION_LOW and not texts:
        held = t["max_tokens_sum"] // max(t["max_tokens_calls"], 1)
        texts.append(
            f"Answers use only {_pct_text(utilisation)} of the {held:,} max_tokens a call holds: a lower "
            f"max_tokens frees budget that holds tie up (it saves nothing on the bill)."
        )
    return {
        "calls": calls,
        "truncations": truncations,
        "truncation_rate": rate,
        "truncated_spend_usd": nano_to_usd(truncated_spend),
        "truncated_spend_nano": truncated_spend,
        "max_tokens_held": t["max_tokens_sum"],
        "output_tokens_capped": t["output_tokens_capped"],
        "cap_utilisation": utilisation,
        "calls_without_max_tokens": max(calls - t["max_tokens_calls"], 0),
        "max_tokens_cap": feature.max_tokens_cap,
        "has_cap": feature.max_tokens_cap is not None,
        "potential_saving_usd": nano_to_usd(potential),
        "potential_saving_nano": potential,
        "recommendation": " ".join(texts) or None,
        "basis": (
            f"Last {RECENT_DAYS} days: calls that stopped with stop_reason = max_tokens over all calls, "
            f"and output tokens over the max_tokens they carried. Never counted as a saving."
        ),
    }


def _latency(sums: _FeatureSums, feature: Feature, histograms) -> dict[str, Any]:
    t = sums.tokens
    latency_counts, ttft_counts = histograms or ([0] * HISTOGRAM_SIZE, [0] * HISTOGRAM_SIZE)
    streamed_share = _ratio(t["streamed_calls"], sums.calls)
    latency_p50 = histogram_percentile(latency_counts, 0.5)
    ttft_p50 = histogram_percentile(ttft_counts, 0.5)
    recommendation = None
    if (
        feature.interactive
        and streamed_share is not None
        and streamed_share < STREAMED_SHARE_LOW
        and latency_p50 is not None
        and latency_p50 >= LATENCY_WORTH_STREAMING_MS
    ):
        first = f" (median {_seconds_text(ttft_p50)} when streamed)" if ttft_p50 is not None else ""
        recommendation = (
            f"Only {_pct_text(streamed_share)} of calls stream, and users wait a median "
            f"{_seconds_text(latency_p50)} for the whole answer: stream responses so text appears "
            f"from the first token{first}."
        )
    return {
        "interactive": feature.interactive,
        "calls": sums.calls,
        "streamed_calls": t["streamed_calls"],
        "streamed_share": streamed_share,
        "ttft_p50_ms": ttft_p50 if feature.interactive else None,
        "ttft_p95_ms": histogram_percentile(ttft_counts, 0.95) if feature.interactive else None,
        "latency_p50_ms": latency_p50 if feature.interactive else None,
        "latency_p95_ms": histogram_percentile(latency_counts, 0.95) if feature.interactive else None,
        "ttft_avg_ms": t["ttft_sum_ms"] // t["ttft_count"] if t["ttft_count"] else None,
        "latency_avg_ms": t["latency_sum_ms"] // t["latency_count"] if t["latency_count"] else None,
        "potential_saving_usd": nano_to_usd(0),
        "potential_saving_nano": 0,
        "recommendation": recommendation,
        "basis": (
            f"Last {RECENT_DAYS} days: commits' ttft_ms and latency_ms, percentiles interpolated in fixed "
            f"histogram buckets. Streaming changes when text appears, not the bill."
        ),
    }


def _rfc3339(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _budget_row(budget: Budget, now: datetime) -> dict[str, Any]:
    window = current_window(budget, at=now)
    status = window_status(window)
    # The forecast the alerts use, so board and alert agree.
    projections = {p.unit: p for p in window_projections(window, now=now)}
    usd, tokens = projections.get("usd"), projections.get("tokens")
    status["window_start"] = _rfc3339(status["window_start"])
    status["window_end"] = _rfc3339(status["window_end"])
    status["limit_nano"] = budget.limit_nano
    status["spent_nano"] = window.spent_nano
    status["spent_share"] = _ratio(window.spent_nano, budget.limit_nano or 0)
    status["forecast_usd"] = nano_to_usd(usd.projected) if usd else None
    status["forecast_nano"] = usd.projected if usd else None
    status["forecast_tokens"] = tokens.projected if tokens else None
    status["forecast_over_limit"] = any(p.alarming for p in projections.values())
    return status


def _budget(rows: list[dict[str, Any]]) -> dict[str, Any]:
    recommendation = None
    over = [row for row in rows if row["forecast_over_limit"]]
    if over:
        row = over[0]
        if row["forecast_nano"] is not None and row["forecast_nano"] > row["limit_nano"]:
            pace = f"{_usd_text(row['forecast_nano'])} against the {_usd_text(row['limit_nano'])}"
        else:
            pace = f"{row['forecast_tokens']:,} tokens against the {row['limit_tokens']:,}-token"
        recommendation = (
            f"On pace to spend {pace} budget '{row['name']}' this {row['period']}: act on the "
            f"levers on this board or raise the limit."
        )
    return {
        "budgets": rows,
        "potential_saving_usd": nano_to_usd(0),
        "potential_saving_nano": 0,
        "recommendation": recommendation,
        "basis": (
            "The current window's counters, and the forecast the alerts use: the budget's usual weekday "
            "and hour-of-day pattern of the last 1-4 weeks, scaled to how this window runs."
        ),
    }


# --- levers already pulled -------------------------------------------------------------


def _daily(rollups) -> dict[Any, dict[date, list[dict[str, Any]]]]:
    """Return each feature's rollup sums by day and model × tier, over the whole range."""
    sums = {f"total_{name}": Sum(name) for name in UsageRollup.SUM_FIELDS}
    rows = rollups.order_by().values("feature_id", "day", "model", "family", "service_tier").annotate(**sums)
    by_feature: dict[Any, dict[date, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        clean = {name.removeprefix("total_"): value for name, value in row.items()}
        by_feature[row["feature_id"]][row["day"]].append(clean)
    return by_feature


def _switch_day(days: dict[date, list[dict[str, Any]]], *, old, new) -> date | None:
    """Return the first day after the last day spent mostly the ``old`` way, if every later day is ``new``.

    ``old`` and ``new`` take a day's rows and return the spend done that way.
    """
    ordered = sorted(d for d, rows in days.items() if sum(r["cost_nano"] or 0 for r in rows) > 0)
    last_old = None
    for day in ordered:
        total = sum(r["cost_nano"] or 0 for r in days[day])
        if old(days[day]) * 2 >= total:
            last_old = day
    if last_old is None:
        return None
    later = [d for d in ordered if d > last_old]
    if not later:
        return None
    for day in later:
        total = sum(r["cost_nano"] or 0 for r in days[day])
        if Decimal(new(days[day])) < PULLED_SHARE * total:
            return None
    return later[0]


def _batch_pulled(days: dict[date, list[dict[str, Any]]]) -> dict[str, Any] | None:
    """Return when a feature moved to the batch tier and what that saved since, or None."""

    def on(tier):
        return lambda rows: sum(r["cost_nano"] or 0 for r in rows if r["service_tier"] == tier)

    switched = _switch_day(days, old=on(ServiceTier.STANDARD), new=on(ServiceTier.BATCH))
    if switched is None:
        return None
    saved = Decimal(0)
    for day, rows in days.items():
        for r in rows:
            if day >= switched and r["service_tier"] == ServiceTier.BATCH:
                try:
                    factor = Decimal(price_for(r["model"]).batch_factor)
                except UnknownModel:
                    continue
                # The standard tier would have cost cost / factor: the difference was saved.
                saved += Decimal(r["cost_nano"] or 0) * (1 - factor) / factor
    return {
        "on": switched.isoformat(),
        "saved_since_usd": nano_to_usd(int(saved)),
        "saved_since_nano": int(saved),
        "text": f"Pulled on {switched:%b} {switched.day}: runs on the batch tier since, "
                f"which saved {_usd_text(int(saved))} against the standard tier.",
    }


def _model_pulled(days: dict[date, list[dict[str, Any]]], at: datetime) -> dict[str, Any] | None:
    """Return when a feature moved to a lower tier of model and what that saved since, or None."""
    recent = sorted(days)[-RECENT_DAYS:]
    family_spend: dict[str, int] = defaultdict(int)
    for day in recent:
        for r in days[day]:
            family_spend[r["family"]] += r["cost_nano"] or 0
    if not family_spend:
        return None
    family = max(family_spend, key=family_spend.__getitem__)
    tier = FAMILY_TIER.get(family)
    if tier is None:
        return None

    def higher(rows):
        return sum(r["cost_nano"] or 0 for r in rows if FAMILY_TIER.get(r["family"], 0) > tier)

    def lower_or_same(rows):
        return sum(r["cost_nano"] or 0 for r in rows if FAMILY_TIER.get(r["family"], 0) <= tier)

    switched = _switch_day(days, old=higher, new=lower_or_same)
    if switched is None:
        return None
    before: dict[str, int] = defaultdict(int)
    for day, rows in days.items():
        if day < switched:
            for r in rows:
                if FAMILY_TIER.get(r["family"], 0) > tier:
                    before[r["model"]] += r["cost_nano"] or 0
    old_model = max(before, key=before.__getitem__)
    saved = Decimal(0)
    try:
        old_price = _base_rates(price_for(old_model, at=at))
    except UnknownModel:
        return None
    for day, rows in days.items():
        if day >= switched:
            for r in rows:
                if FAMILY_TIER.get(r["family"], 0) <= tier:
                    saved += usage_cost(old_price, _usage(r), service_tier=r["service_tier"]) * NANO - (
                        r["cost_nano"] or 0
                    )
    saved_nano = max(int(saved), 0)
    return {
        "on": switched.isoformat(),
        "from_model": old_model,
        "saved_since_usd": nano_to_usd(saved_nano),
        "saved_since_nano": saved_nano,
        "text": f"Pulled on {switched:%b} {switched.day}: moved off {_display_name(old_model)}, which saved "
                f"{_usd_text(saved_nano)} since (the same usage at its prices).",
    }


# --- the board ------------------------------------------------------------------------


def _ranked(levers: dict[str, dict[str, Any]], *, spend_nano: int) -> list[dict[str, Any]]:
    """Return the levers with a recommendation, the one to pull first first.

    By potential saving, with one exception: a lever that keeps the model and its answers
    (caching, batch, max_tokens) and would save a material share of the feature's spend
    comes before a smaller model, whose saving holds only if it passes the team's evals.
    Ranked by money alone, one tier down (40-87 % off) would top every feature not already
    on Haiku and the board would say the same thing everywhere. Advice without a money
    figure (budget pace, caps, streaming) comes last.
    """
    rows = [
        {
            "lever": name,
            "potential_saving_usd": lever["potential_saving_usd"],
            "potential_saving_nano": lever["potential_saving_nano"],
            "text": lever["recommendation"],
        }
        for name, lever in levers.items()
        if lever["recommendation"]
    ]

    def order(row: dict[str, Any]) -> tuple:
        saving = row["potential_saving_nano"]
        if saving <= 0:
            group = 2
        elif row["lever"] in SAME_ANSWER_LEVERS and saving * MATERIAL_SHARE_DENOMINATOR >= spend_nano:
            group = 0
        else:
            group = 1
        return (group, -saving, LEVERS.index(row["lever"]))

    rows.sort(key=order)
    return rows


def lever_board(
    *,
    tenant: Tenant,
    start: date,
    end: date,
    feature: Feature | None = None,
    feature_ids: Collection | None = None,
) -> dict[str, Any]:
    """Return the tenant's lever board for the tenant-local days ``start``..``end`` (inclusive).

    ``feature`` limits the board to one feature (shown even without usage);
    ``feature_ids`` limits it to those features (an API key restricted to them).
    Money is given twice: ``*_usd`` decimal strings and ``*_nano`` integers (1e-9 USD);
    ratios are floats rounded to 4 places (None when undefined).

    Shape::

        {
          "start": "2026-11-01", "end": "2026-11-30", "feature": "support-bot" | None,
          "totals": {"calls", "spend_usd", "spend_nano",
                     "potential_saving_usd", "potential_saving_nano"},  # sum of each feature's top recommendation
          "budgets": [budget status],   # tenant-wide budgets (see the budget lever)
          "budget_recommendation": str | None,  # when one of them is on pace to overrun
          "features": [                 # ranked by their top recommendation's saving
            {
              "key", "name", "interactive", "max_tokens_cap", "calls", "spend_usd", "spend_nano",
              "potential_saving_usd", "potential_saving_nano",  # the top recommendation's
              "recommendation": {"lever", "text", "potential_saving_usd", "potential_saving_nano"} | None,
              "recommendations": [same, the one to pull first first: see ``_ranked``],
              "levers": {
                "model_selection": {by_family: [{family, calls, spend_*}],
                    by_model: [{model, family, calls, spend_*, one_tier_down_model,
                                one_tier_down_cost_*, potential_saving_*}],
                    one_tier_down_cost_*, potential_saving_*, potential_note, recommendation},
                "prompt_caching": {input_tokens, cache_write_5m_tokens, cache_write_1h_tokens,
                    cache_read_tokens, total_input_tokens, average_input_tokens_per_call,
                    cache_read_share, saved_by_caching_*, unread_write_tokens, unread_writes_*,
                    large_input_little_caching, potential_saving_*, recommendation},
                "batch": {latency_tolerant, batch_spend_*, batch_share, standard_spend_*,
                    movable_spend_*, potential_saving_*, recommendation},
                "max_tokens": {calls, truncations, truncation_rate, truncated_spend_*,
                    max_tokens_held, output_tokens_capped, cap_utilisation,
                    calls_without_max_tokens, max_tokens_cap, has_cap, potential_saving_*,
                    recommendation},
                "latency": {interactive, calls, streamed_calls, streamed_share, ttft_p50_ms,
                    ttft_p95_ms, latency_p50_ms, latency_p95_ms, ttft_avg_ms, latency_avg_ms,
                    potential_saving_*, recommendation},
                "budget": {budgets: [budget status], potential_saving_*, recommendation},
              },
            }
          ],
        }

    A budget status is the contract's budget object (``governance`` API) plus
    ``limit_nano``, ``spent_nano``, ``spent_share``, ``forecast_usd``/``forecast_nano``
    and ``forecast_tokens`` (the window's spend at its end as ``budgets.forecast`` sees it, as the
    forecast alerts compute it; None for windows without an end or too young to tell) and
    ``forecast_over_limit``. Latency percentiles are interpolated in the fixed histogram
    buckets (``usage.models.LATENCY_BUCKETS_MS``, see ``histogram_percentile``) and given
    for interactive features only.
    """
    if feature is not None and feature.tenant_id != tenant.pk:
        raise ValueError("feature belongs to another tenant")
    scope = {feature.pk} if feature is not None else feature_ids
    rollups = _rollups(tenant=tenant, start=start, end=end, feature_ids=scope)
    # Levers are judged on the last week of the range: what is pulled is pulled.
    recent_start = max(start, end - timedelta(days=RECENT_DAYS - 1))
    recent_rollups = rollups.filter(day__gte=recent_start)
    # What-ifs are priced with the price table in effect at the end of the range.
    at = datetime.combine(end, time.max, tzinfo=tenant.tz)

    in_range: dict[Any, _FeatureSums] = defaultdict(_FeatureSums)
    for row in _grouped_sums(rollups):
        sums = in_range[row["feature_id"]]
        sums.calls += row["calls"] or 0
        sums.spend_nano += row["cost_nano"] or 0
    by_feature: dict[Any, _FeatureSums] = defaultdict(_FeatureSums)
    for row in _grouped_sums(recent_rollups):
        _accumulate(by_feature[row["feature_id"]], row, at)
    daily = _daily(rollups)

    wanted = set(in_range) | ({feature.pk} if feature is not None else set())
    features = {f.pk: f for f in Feature.objects.filter(tenant=tenant, pk__in=list(wanted))}
    histograms = _merged_histograms(recent_rollups, [pk for pk, f in features.items() if f.interactive])
    gaps = call_gaps(
        tenant=tenant, feature_ids=[pk for pk in features if pk in by_feature],
        start=datetime.combine(recent_start, time(0), tzinfo=tenant.tz),
        end=datetime.combine(end + timedelta(days=1), time(0), tzinfo=tenant.tz),
    )

    now = timezone.now()
    budgets = list(Budget.objects.filter(tenant=tenant, active=True).select_related("tenant"))
    feature_budgets: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    tenant_budgets = []
    for budget in budgets:
        if budget.feature_id is None:
            tenant_budgets.append(_budget_row(budget, now))
        elif budget.feature_id in features:
            feature_budgets[budget.feature_id].append(_budget_row(budget, now))

    rows: list[dict[str, Any]] = []
    for pk, feat in features.items():
        sums = by_feature.get(pk) or _FeatureSums()
        whole = in_range.get(pk) or _FeatureSums()
        days = daily.get(pk, {})
        levers = {
            MODEL_SELECTION: _model_selection(sums, _model_pulled(days, at) if days else None),
            PROMPT_CACHING: _prompt_caching(sums, gaps.get(pk)),
            BATCH: _batch(sums, feat, _batch_pulled(days) if days else None),
            MAX_TOKENS: _max_tokens(sums, feat),
            LATENCY: _latency(sums, feat, histograms.get(pk)),
            BUDGET: _budget(feature_budgets.get(pk, [])),
        }
        recommendations = _ranked(levers, spend_nano=sums.spend_nano)
        best = recommendations[0] if recommendations else None
        best_nano = best["potential_saving_nano"] if best else 0
        firm = max((r["potential_saving_nano"] for r in recommendations if r["lever"] in FIRM_LEVERS), default=0)
        what_if = max(
            (r["potential_saving_nano"] for r in recommendations if r["lever"] in WHAT_IF_LEVERS), default=0
        )
        rows.append(
            {
                "key": feat.key,
                "name": feat.name,
                "interactive": feat.interactive,
                "max_tokens_cap": feat.max_tokens_cap,
                "calls": whole.calls,
                "spend_usd": nano_to_usd(whole.spend_nano),
                "spend_nano": whole.spend_nano,
                "recent_calls": sums.calls,
                "recent_spend_usd": nano_to_usd(sums.spend_nano),
                "recent_spend_nano": sums.spend_nano,
                "potential_saving_usd": nano_to_usd(best_nano),
                "potential_saving_nano": best_nano,
                "firm_saving_nano": firm,
                "what_if_saving_nano": what_if,
                "recommendation": best,
                "recommendations": recommendations,
                "levers": levers,
            }
        )
    rows.sort(key=lambda r: (-r["potential_saving_nano"], -r["spend_nano"], r["key"]))

    spend = sum(r["spend_nano"] for r in rows)
    potential = sum(r["potential_saving_nano"] for r in rows)
    firm = sum(r["firm_saving_nano"] for r in rows)
    what_if = sum(r["what_if_saving_nano"] for r in rows)
    return {
        "start": start.isoformat(),
        "end": end.isoformat(),
        "recent_start": recent_start.isoformat(),
        "feature": feature.key if feature is not None else None,
        "totals": {
            "calls": sum(r["calls"] for r in rows),
            "spend_usd": nano_to_usd(spend),
            "spend_nano": spend,
            "recent_spend_nano": sum(r["recent_spend_nano"] for r in rows),
            "potential_saving_usd": nano_to_usd(potential),
            "potential_saving_nano": potential,
            # Measured over the last week, if the calls stay as they are (batch, caching) …
            "firm_saving_usd": nano_to_usd(firm),
            "firm_saving_nano": firm,
            # … and what a smaller model would save, if its answers are good enough.
            "what_if_saving_usd": nano_to_usd(what_if),
            "what_if_saving_nano": what_if,
        },
        "budgets": tenant_budgets,
        "budget_recommendation": _budget(tenant_budgets)["recommendation"],
        "features": rows,
    }

