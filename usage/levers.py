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
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

from django.db.models import BigIntegerField, Case, F, FloatField, IntegerField, Sum, Value, When
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast, Greatest
from django.utils import timezone

from budgets.alerting import window_projections
from budgets.models import Budget
from budgets.selectors import current_window, window_status
from governance.api.fields import nano_to_usd
from governance.models import Feature, Tenant
from usage.models import (
    HISTOGRAM_SIZE,
    LATENCY_BUCKETS_MS,
    NANO,
    ModelPrice,
    ServiceTier,
    UsageRollup,
)
from usage.pricing import (
    MTOK,
    TokenUsage,
    UnknownModel,
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

LOWER_FAMILY = {"opus": "sonnet", "sonnet": "haiku"}
# Levers that change neither the model nor its answers, so need no evals to pull.
SAME_ANSWER_LEVERS = (PROMPT_CACHING, BATCH, MAX_TOKENS)
# "Material": at least a twentieth of the feature's spend over the range.
MATERIAL_SHARE_DENOMINATOR = 20

# Claude does not cache a prefix shorter than the model's minimum (Anthropic's prompt
# caching docs), so below it caching is no lever. Models not listed: 1,024.
MIN_CACHEABLE_TOKENS = {
    "claude-opus-4-6": 4096,
    "claude-opus-4-5-20251101": 4096,
    "claude-haiku-4-5-20251001": 4096,
    "claude-3-5-haiku-20241022": 2048,
    "claude-3-haiku-20240307": 2048,
}
DEFAULT_MIN_CACHEABLE_TOKENS = 1024
# "Little caching": under a fifth of the input is read from cache.
LITTLE_CACHING_SHARE = 0.2
# How much of an uncached large prompt we assume is a stable, cacheable prefix
# (system prompt, tools, documents). A guess, stated in the recommendation.
REUSABLE_PREFIX_SHARE = Decimal("0.5")
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
    """Return the model one tier down (PRICING.md): opus → sonnet → haiku.

    Same generation where the lower family has one, else the newest of the lower
    family; models still on sale are preferred to retired ones.
    """
    try:
        price = price_for(model)
    except UnknownModel:
        return None
    lower = LOWER_FAMILY.get(price.family)
    if lower is None:
        return None
    candidates = [row for row in priced_models() if row.family == lower]
    on_sale = [row for row in candidates if not row.retired] or candidates
    if not on_sale:
        return None
    same_generation = [row for row in on_sale if row.generation == price.generation]
    if same_generation:
        return same_generation[0]
    return max(on_sale, key=lambda row: row.generation)


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
    # Only calls long enough to cache at all can gain from it.
    if calls and usage.total_input >= calls * MIN_CACHEABLE_TOKENS.get(price.model, DEFAULT_MIN_CACHEABLE_TOKENS):
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


def _model_selection(sums: _FeatureSums) -> dict[str, Any]:
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
            f"Try {line.lower_display} instead of {line.display}: the same usage would have cost "
            f"{_usd_text(line.spend_nano - saving)} instead of {_usd_text(line.spend_nano)} "
            f"(save {_usd_text(saving)}, {_pct_text(share)}), if the smaller model passes your evals."
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
    }


def _prompt_caching(sums: _FeatureSums) -> dict[str, Any]:
    t = sums.tokens
    total_input = (
        t["input_tokens"] + t["cache_write_5m_tokens"] + t["cache_write_1h_tokens"] + t["cache_read_tokens"]
    )
    read_share = _ratio(t["cache_read_tokens"], total_input)
    avg_input = total_input // sums.calls if sums.calls else 0
    little_caching = sums.cacheable_input_tokens > 0 and (read_share or 0) < LITTLE_CACHING_SHARE
    prefix_potential = to_nano(sums.full_cache_potential * REUSABLE_PREFIX_SHARE) if little_caching else 0
    premium = max(to_nano(sums.unread_write_premium), 0)
    potential = prefix_potential + premium
    unread_spend = to_nano(sums.unread_write_spend)

    texts = []
    if little_caching and prefix_potential > 0:
        texts.append(
            f"Calls send {avg_input:,} input tokens on average and only {_pct_text(read_share or 0)} "
            f"is read from cache: mark the stable prefix (system prompt, tools, documents) with "
            f"cache_control. If half of the input were a cached prefix, you would save about "
            f"{_usd_text(prefix_potential)}."
        )
    if premium > 0:
        texts.append(
            f"{sums.unread_write_tokens:,} tokens written to cache were never read back "
            f"({_usd_text(unread_spend)} of writes): only cache prompts that repeat within the "
            f"cache lifetime, and prefer 5-minute to 1-hour writes."
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
        "potential_saving_usd": nano_to_usd(potential),
        "potential_saving_nano": potential,
        "recommendation": " ".join(texts) or None,
    }


def _batch(sums: _FeatureSums, feature: Feature) -> dict[str, Any]:
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
    }


def _max_tokens(sums: _FeatureSums, feature: Feature) -> dict[str, Any]:
    t = sums.tokens
    calls, truncations = sums.calls, t["truncations"]
    rate = _ratio(truncations, calls)
    utilisation = _ratio(t["output_tokens_capped"], t["max_tokens_sum"])
    # Cut-off answers are usually retried or thrown away: their share of spend is at stake.
    truncated_spend = sums.spend_nano * truncations // calls if calls else 0
    texts = []
    potential = 0
    if rate is not None and rate >= TRUNCATION_RATE_HIGH:
        potential = truncated_spend
        texts.append(
            f"{_pct_text(rate)} of calls stopped at max_tokens (about {_usd_text(truncated_spend)} "
            f"spent on cut-off answers): raise max_tokens or ask for shorter output."
        )
    if feature.max_tokens_cap is None:
        texts.append("No max_tokens cap is set: set one as a guard against runaway output.")
    if utilisation is not None and utilisation < CAP_UTILISATION_LOW and not texts:
        texts.append(
            f"Answers use only {_pct_text(utilisation)} of the max_tokens they hold: lower "
            f"max_tokens so holds stop tying up budget."
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
    # What-ifs are priced with the price table in effect at the end of the range.
    at = datetime.combine(end, time.max, tzinfo=tenant.tz)

    by_feature: dict[Any, _FeatureSums] = defaultdict(_FeatureSums)
    for row in _grouped_sums(rollups):
        _accumulate(by_feature[row["feature_id"]], row, at)

    wanted = set(by_feature) | ({feature.pk} if feature is not None else set())
    features = {f.pk: f for f in Feature.objects.filter(tenant=tenant, pk__in=list(wanted))}
    histograms = _merged_histograms(rollups, [pk for pk, f in features.items() if f.interactive])

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
        levers = {
            MODEL_SELECTION: _model_selection(sums),
            PROMPT_CACHING: _prompt_caching(sums),
            BATCH: _batch(sums, feat),
            MAX_TOKENS: _max_tokens(sums, feat),
            LATENCY: _latency(sums, feat, histograms.get(pk)),
            BUDGET: _budget(feature_budgets.get(pk, [])),
        }
        recommendations = _ranked(levers, spend_nano=sums.spend_nano)
        best = recommendations[0] if recommendations else None
        best_nano = best["potential_saving_nano"] if best else 0
        rows.append(
            {
                "key": feat.key,
                "name": feat.name,
                "interactive": feat.interactive,
                "max_tokens_cap": feat.max_tokens_cap,
                "calls": sums.calls,
                "spend_usd": nano_to_usd(sums.spend_nano),
                "spend_nano": sums.spend_nano,
                "potential_saving_usd": nano_to_usd(best_nano),
                "potential_saving_nano": best_nano,
                "recommendation": best,
                "recommendations": recommendations,
                "levers": levers,
            }
        )
    rows.sort(key=lambda r: (-r["potential_saving_nano"], -r["spend_nano"], r["key"]))

    spend = sum(r["spend_nano"] for r in rows)
    potential = sum(r["potential_saving_nano"] for r in rows)
    return {
        "start": start.isoformat(),
        "end": end.isoformat(),
        "feature": feature.key if feature is not None else None,
        "totals": {
            "calls": sum(r["calls"] for r in rows),
            "spend_usd": nano_to_usd(spend),
            "spend_nano": spend,
            "potential_saving_usd": nano_to_usd(potential),
            "potential_saving_nano": potential,
        },
        "budgets": tenant_budgets,
        "budget_recommendation": _budget(tenant_budgets)["recommendation"],
        "features": rows,
    }

