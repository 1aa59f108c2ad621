"""The lever board's numbers, checked against values computed by hand from PRICING.md."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
import time_machine

from budgets.levers import histogram_percentile, lever_board, one_tier_down
from budgets.models import Budget, BudgetWindow, Period, Scope
from tests.factories import FeatureFactory
from tests.factories import ledger_history as history
from usage.models import HISTOGRAM_SIZE, NANO, ModelPrice, UsageRollup, histogram_bucket
from usage.pricing import clear_price_cache, model_family

DAY = date(2026, 11, 28)  # in the last week of RANGE: levers are judged on it
RANGE = {"start": date(2026, 11, 1), "end": date(2026, 11, 30)}


def usd(text: str) -> int:
    """'0.0105' -> nano-USD, so expectations read like the hand computation."""
    from decimal import Decimal

    return int(Decimal(text) * NANO)


def rollup(feature, model, *, tier="standard", day=DAY, **sums) -> UsageRollup:
    return UsageRollup.objects.create(
        tenant=feature.tenant,
        feature=feature,
        model=model,
        family=model_family(model),
        service_tier=tier,
        day=day,
        **sums,
    )


def histogram(**counts_by_ms: int) -> list[int]:
    counts = [0] * HISTOGRAM_SIZE
    for ms, count in counts_by_ms.items():
        counts[histogram_bucket(int(ms.lstrip("_")))] += count
    return counts


def board_feature(board, key):
    [row] = [f for f in board["features"] if f["key"] == key]
    return row


# --- model selection ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "lower"),
    [
        ("claude-opus-4-5-20251101", "claude-sonnet-5-5"),  # Sonnet 4.5 retired on 2026-11-30
        ("claude-opus-4-5", "claude-sonnet-5-5"),  # alias
        ("claude-opus-4-6", "claude-sonnet-4-6"),  # same generation
        ("claude-fable-5-2", "claude-opus-5-5"),  # no Opus 5.2: the newest Opus
        ("claude-mythos-5-2", "claude-opus-5-5"),
        ("claude-fable-5-1", "claude-opus-5-5"),
        ("claude-opus-4-20250514", "claude-sonnet-5-5"),  # Sonnet 4 is retired: the newest Sonnet
        ("claude-opus-5", "claude-sonnet-5"),
        ("claude-opus-5-5", "claude-sonnet-5-5"),
        ("claude-opus-4-7", "claude-sonnet-5-5"),  # no Sonnet 4.7: the newest Sonnet
        ("claude-opus-4-1-20250805", "claude-sonnet-5-5"),
        ("claude-sonnet-4-5-20250929", "claude-haiku-4-5-20251001"),
        ("claude-sonnet-5", "claude-haiku-5-5"),  # newest Haiku, not a retired one
        ("claude-sonnet-5-5", "claude-haiku-5-5"),
        ("claude-sonnet-4-20250514", "claude-haiku-5-5"),
        ("claude-haiku-4-5-20251001", None),
        ("claude-3-haiku-20240307", None),
        ("not-a-model", None),
    ],
)
def test_one_tier_down_follows_the_pricing_rule(db, model, lower):
    found = one_tier_down(model)
    assert (found.model if found else None) == lower


def test_model_selection_prices_the_same_usage_one_tier_down(tenant):
    # Given a feature using Opus 4.1, Sonnet 4.5 (batch) and Haiku 4.5
    feature = FeatureFactory(tenant=tenant, key="assistant")
    # Opus 4.1: 100,000 × $15 + 20,000 × $75 = $3.00; Sonnet 5.5: 100,000 × $2 + 20,000 × $10 = $0.40
    rollup(feature, "claude-opus-4-1-20250805", calls=10, input_tokens=100_000, output_tokens=20_000,
           cost_nano=usd("3.00"))
    # Sonnet 4.5 batch: (10,000 × $3 + 2,000 × $15) × 0.5 = $0.03; Haiku 4.5 batch: (10,000 + 10,000) × $1/M × 0.5 = $0.01
    rollup(feature, "claude-sonnet-4-5-20250929", tier="batch", calls=4, input_tokens=10_000,
           output_tokens=2_000, cost_nano=usd("0.03"))
    rollup(feature, "claude-sonnet-4-5-20250929", tier="batch", day=date(2026, 11, 29), calls=1,
           output_tokens=0, cost_nano=0)
    # Haiku 4.5 has nothing below it: 1,000 × $1 + 100 × $5 = $0.0015
    rollup(feature, "claude-haiku-4-5-20251001", calls=6, input_tokens=1_000, output_tokens=100,
           cost_nano=usd("0.0015"))

    # When the board is read
    row = board_feature(lever_board(tenant=tenant, **RANGE), "assistant")

    # Then spend, calls and the one-tier-down costs are as computed by hand
    lever = row["levers"]["model_selection"]
    assert row["spend_nano"] == usd("3.0315")
    assert row["calls"] == 21
    assert [(f["family"], f["calls"], f["spend_usd"]) for f in lever["by_family"]] == [
        ("opus", 10, "3.000000"),
        ("sonnet", 5, "0.030000"),
        ("haiku", 6, "0.001500"),
    ]
    by_model = {m["model"]: m for m in lever["by_model"]}
    opus = by_model["claude-opus-4-1-20250805"]
    assert opus["one_tier_down_model"] == "claude-sonnet-5-5"
    assert opus["one_tier_down_cost_usd"] == "0.400000"
    assert opus["potential_saving_usd"] == "2.600000"
    sonnet = by_model["claude-sonnet-4-5-20250929"]
    assert sonnet["one_tier_down_model"] == "claude-haiku-4-5-20251001"
    assert sonnet["one_tier_down_cost_nano"] == usd("0.01")
    assert sonnet["potential_saving_nano"] == usd("0.02")
    haiku = by_model["claude-haiku-4-5-20251001"]
    assert haiku["one_tier_down_model"] is None
    assert haiku["potential_saving_nano"] == 0
    assert lever["one_tier_down_cost_usd"] == "0.411500"
    assert lever["potential_saving_usd"] == "2.620000"
    assert lever["potential_note"] == "potential, if the smaller model passes your evals"
    assert "Claude Sonnet 5.5" in lever["recommendation"]
    assert "if the smaller model passes your evals" in lever["recommendation"]


def test_one_tier_down_skips_a_model_past_its_retirement_date(db):
    # Given Sonnet 4.5 without the retired flag, but with its retirement date (2026-11-30) past
    ModelPrice.objects.filter(model="claude-sonnet-4-5-20250929").update(retired=False)
    clear_price_cache()
    # Then Opus 4.5 is sent to the newest Sonnet, not to the same generation's retired one
    assert one_tier_down("claude-opus-4-5").model == "claude-sonnet-5-5"
    # and while that date is ahead, Sonnet 4.5 is still the advice
    ModelPrice.objects.filter(model="claude-sonnet-4-5-20250929").update(retired_on=date(2099, 1, 1))
    clear_price_cache()
    assert one_tier_down("claude-opus-4-5").model == "claude-sonnet-4-5-20250929"


def test_one_tier_down_uses_base_rates_not_the_prompt_length_band(tenant):
    # Given a million input tokens on Sonnet 5.5 summed over many calls ($2.00)
    feature = FeatureFactory(tenant=tenant, key="long")
    rollup(feature, "claude-sonnet-5-5", calls=100, input_tokens=1_000_000, cost_nano=usd("2"))

    # Then Haiku 5.5 is priced at $0.10/M, not its $0.50/M band over 100k (which is per request)
    lever = board_feature(lever_board(tenant=tenant, **RANGE), "long")["levers"]["model_selection"]
    assert lever["one_tier_down_cost_usd"] == "0.100000"
    assert lever["potential_saving_usd"] == "1.900000"


# --- prompt caching -------------------------------------------------------------------


def test_cache_share_savings_and_unread_writes(tenant):
    # Given Haiku 4.5 usage with good caching on one day and writes never read on the next
    feature = FeatureFactory(tenant=tenant, key="rag")
    rollup(feature, "claude-haiku-4-5-20251001", calls=10, input_tokens=10_000,
           cache_write_5m_tokens=4_000, cache_read_tokens=20_000, cost_nano=1)
    rollup(feature, "claude-haiku-4-5-20251001", day=date(2026, 11, 29), calls=2,
           cache_write_1h_tokens=3_000, cache_read_tokens=1_000, cost_nano=1)

    lever = board_feature(lever_board(tenant=tenant, **RANGE), "rag")["levers"]["prompt_caching"]

    # Then 21,000 of 38,000 input tokens came from cache
    assert lever["total_input_tokens"] == 38_000
    assert lever["cache_read_share"] == round(21_000 / 38_000, 4)
    # Saved vs uncached: reads 21,000 × ($1 − $0.10) − 5m writes 4,000 × ($1.25 − $1)
    # − 1h writes 3,000 × ($2 − $1) = 18,900 − 1,000 − 3,000 = $0.0149
    assert lever["saved_by_caching_usd"] == "0.014900"
    # Day two wrote 3,000 (1 h) and read 1,000: 2,000 tokens never read back, 2,000 × $2 = $0.004
    assert lever["unread_write_tokens"] == 2_000
    assert lever["unread_writes_usd"] == "0.004000"
    # Rollups alone say nothing of the gaps between calls (the ledger has none here): no TTL
    # advice; and 2,400 cached tokens a call is below what Haiku 4.5 caches at all
    assert lever["potential_saving_usd"] == "0.000000"
    assert lever["large_input_little_caching"] is False
    assert lever["recommendation"] == (
        "28,000 cached tokens came from prompts shorter than the model's minimum cacheable length (4,096 tokens)."
    )


def test_unread_writes_split_between_5m_and_1h_in_proportion(tenant):
    # Given one day writing 3,000 (5 m) and 1,000 (1 h) on Sonnet 4.5 and reading 2,000
    feature = FeatureFactory(tenant=tenant, key="split")
    rollup(feature, "claude-sonnet-4-5-20250929", calls=1, cache_write_5m_tokens=3_000,
           cache_write_1h_tokens=1_000, cache_read_tokens=2_000, cost_nano=1)

    lever = board_feature(lever_board(tenant=tenant, **RANGE), "split")["levers"]["prompt_caching"]

    # Then 2,000 unread tokens split 1,500 (5 m) / 500 (1 h): 1,500 × $3.75 + 500 × $6 = $0.008625
    assert lever["unread_write_tokens"] == 2_000
    assert lever["unread_writes_usd"] == "0.008625"
    assert lever["potential_saving_usd"] == "0.000000"  # no gaps measured, no TTL advice


def test_large_uncached_input_is_flagged_with_its_potential(tenant):
    # Given 10 Sonnet 4.5 calls averaging 5,000 uncached input tokens, nothing cached
    feature = FeatureFactory(tenant=tenant, key="docs")
    rollup(feature, "claude-sonnet-4-5-20250929", calls=10, input_tokens=50_000, cost_nano=usd("0.15"))

    lever = board_feature(lever_board(tenant=tenant, **RANGE), "docs")["levers"]["prompt_caching"]

    assert lever["average_input_tokens_per_call"] == 5_000
    assert lever["cache_read_share"] == 0
    assert lever["large_input_little_caching"] is True
    # How much of it is a shared prefix cannot be seen: advice, and no figure claimed
    assert lever["potential_saving_usd"] == "0.000000"
    assert "cache_control" in lever["recommendation"]


def test_batch_tier_caching_savings_are_halved(tenant):
    feature = FeatureFactory(tenant=tenant, key="batched")
    rollup(feature, "claude-haiku-4-5-20251001", tier="batch", calls=1, cache_read_tokens=10_000,
           cost_nano=1)
    lever = board_feature(lever_board(tenant=tenant, **RANGE), "batched")["levers"]["prompt_caching"]
    # 10,000 × ($1 − $0.10) × 0.5 = $0.0045
    assert lever["saved_by_caching_usd"] == "0.004500"


# --- batch ----------------------------------------------------------------------------


def test_latency_tolerant_standard_spend_and_batch_potential(tenant):
    # Given a feature that is not interactive, mostly on the standard tier
    feature = FeatureFactory(tenant=tenant, key="nightly", interactive=False)
    # 100,000 × $3 + 10,000 × $15 = $0.45 of tokens, plus 3 web searches × $0.01
    rollup(feature, "claude-sonnet-4-5-20250929", calls=5, input_tokens=100_000, output_tokens=10_000,
           web_search_requests=3, cost_nano=usd("0.48"))
    rollup(feature, "claude-sonnet-4-5-20250929", tier="batch", calls=5, input_tokens=66_667,
           cost_nano=usd("0.10"))

    lever = board_feature(lever_board(tenant=tenant, **RANGE), "nightly")["levers"]["batch"]

    assert lever["latency_tolerant"] is True
    assert lever["batch_spend_usd"] == "0.100000"
    assert lever["standard_spend_usd"] == "0.480000"
    assert lever["movable_spend_usd"] == "0.480000"
    assert lever["batch_share"] == round(0.10 / 0.58, 4)
    # Batch halves token prices, not web search: $0.45 × 0.5 = $0.225
    assert lever["potential_saving_usd"] == "0.225000"
    assert "Message Batches" in lever["recommendation"]


def test_interactive_features_have_no_batch_potential(tenant, feature):
    rollup(feature, "claude-sonnet-4-5-20250929", calls=5, input_tokens=100_000, cost_nano=usd("0.3"))
    lever = board_feature(lever_board(tenant=tenant, **RANGE), feature.key)["levers"]["batch"]
    assert lever["standard_spend_usd"] == "0.300000"
    assert lever["movable_spend_nano"] == 0
    assert lever["potential_saving_nano"] == 0
    assert lever["recommendation"] is None


# --- max_tokens -----------------------------------------------------------------------


def test_truncation_rate_cap_utilisation_and_missing_cap(tenant):
    # Given 200 calls, 10 of which stopped at max_tokens; 180 carried max_tokens=1000
    feature = FeatureFactory(tenant=tenant, key="extract", max_tokens_cap=None)
    rollup(feature, "claude-haiku-4-5-20251001", calls=150, truncations=6, max_tokens_sum=130_000,
           max_tokens_calls=130, output_tokens_capped=30_000, output_tokens=35_000, cost_nano=usd("0.75"))
    rollup(feature, "claude-haiku-4-5-20251001", day=date(2026, 11, 27), calls=50, truncations=4,
           max_tokens_sum=50_000, max_tokens_calls=50, output_tokens_capped=15_000,
           output_tokens=15_000, cost_nano=usd("0.25"))

    lever = board_feature(lever_board(tenant=tenant, **RANGE), "extract")["levers"]["max_tokens"]

    assert lever["truncations"] == 10
    assert lever["truncation_rate"] == 0.05
    # 45,000 output tokens of 180,000 max_tokens held
    assert lever["cap_utilisation"] == 0.25
    assert lever["calls_without_max_tokens"] == 20
    assert lever["has_cap"] is False
    # 5% of the $1.00 spent went to cut-off answers: a quality signal, never a saving
    assert lever["truncated_spend_usd"] == "0.050000"
    assert lever["potential_saving_usd"] == "0.000000"
    assert "5.0% of answers were cut off at max_tokens" in lever["recommendation"]
    assert "No max_tokens cap" in lever["recommendation"]


def test_low_cap_utilisation_suggests_lowering_max_tokens(tenant):
    feature = FeatureFactory(tenant=tenant, key="short", max_tokens_cap=4096)
    rollup(feature, "claude-haiku-4-5-20251001", calls=10, max_tokens_sum=40_000, max_tokens_calls=10,
           output_tokens_capped=2_000, output_tokens=2_000, cost_nano=usd("0.01"))
    lever = board_feature(lever_board(tenant=tenant, **RANGE), "short")["levers"]["max_tokens"]
    assert lever["cap_utilisation"] == 0.05
    assert lever["truncation_rate"] == 0
    assert lever["potential_saving_nano"] == 0
    assert "lower max_tokens" in lever["recommendation"]


# --- streaming and latency ------------------------------------------------------------


def test_latency_percentiles_come_from_the_merged_histograms(tenant):
    # Given an interactive feature's histograms over two days
    feature = FeatureFactory(tenant=tenant, key="chat", interactive=True, max_tokens_cap=1024)
    rollup(feature, "claude-haiku-4-5-20251001", calls=4, streamed_calls=4,
           latency_histogram=histogram(_250=3), ttft_histogram=histogram(_80=4),
           latency_sum_ms=900, latency_count=3, ttft_sum_ms=320, ttft_count=4, cost_nano=1)
    rollup(feature, "claude-haiku-4-5-20251001", day=date(2026, 11, 29), calls=6, streamed_calls=2,
           latency_histogram=histogram(_260=2, _4000=4, _90000=1), ttft_histogram=histogram(_80=2, _700=4),
           latency_sum_ms=106_520, latency_count=7, ttft_sum_ms=2_960, ttft_count=6, cost_nano=1)
    # and one day whose histograms were never filled (an empty list is all zeros)
    rollup(feature, "claude-haiku-4-5-20251001", day=date(2026, 11, 27), calls=0, cost_nano=0)

    lever = board_feature(lever_board(tenant=tenant, **RANGE), "chat")["levers"]["latency"]

    # Latency samples: 5 in (200, 300] ms, 4 in (3, 5] s, 1 over 60 s. The median (rank 5 of 10)
    # is the top of the first bucket; the p95 (rank 9.5) falls in the open bucket: "60 s or more"
    assert lever["latency_p50_ms"] == 300
    assert lever["latency_p95_ms"] == 60_000
    # ttft samples: 6 in (0, 100] ms, 4 in (500, 750] ms. Median: rank 5 of the first 6, 100 × 5/6;
    # p95: rank 9.5, 3.5 into the 4 of the second bucket: 500 + 250 × 3.5/4 = 718.75
    assert lever["ttft_p50_ms"] == 83
    assert lever["ttft_p95_ms"] == 719
    assert lever["streamed_share"] == 0.6
    assert lever["latency_avg_ms"] == 10_742
    assert lever["ttft_avg_ms"] == 328
    assert lever["recommendation"] is None  # most calls stream


def test_slow_unstreamed_interactive_feature_is_told_to_stream(tenant):
    feature = FeatureFactory(tenant=tenant, key="slow", interactive=True, max_tokens_cap=1024)
    rollup(feature, "claude-haiku-4-5-20251001", calls=10, streamed_calls=1,
           latency_histogram=histogram(_2800=10), ttft_histogram=histogram(_400=1), cost_nano=1)
    lever = board_feature(lever_board(tenant=tenant, **RANGE), "slow")["levers"]["latency"]
    # 10 samples in (2, 3] s: the median is halfway through the bucket
    assert lever["latency_p50_ms"] == 2_500
    assert lever["streamed_share"] == 0.1
    assert "stream responses" in lever["recommendation"]


def test_latency_percentiles_are_only_for_interactive_features(tenant):
    feature = FeatureFactory(tenant=tenant, key="offline", interactive=False)
    rollup(feature, "claude-haiku-4-5-20251001", calls=10, latency_histogram=histogram(_2800=10),
           cost_nano=1)
    lever = board_feature(lever_board(tenant=tenant, **RANGE), "offline")["levers"]["latency"]
    assert lever["latency_p50_ms"] is None
    assert lever["recommendation"] is None


@pytest.mark.parametrize(
    ("counts", "fraction", "expected"),
    [
        ([], 0.5, None),
        ([0] * HISTOGRAM_SIZE, 0.5, None),
        ([1] + [0] * (HISTOGRAM_SIZE - 1), 0.95, 95),
        ([1, 1] + [0] * (HISTOGRAM_SIZE - 2), 0.5, 100),
        ([1, 1] + [0] * (HISTOGRAM_SIZE - 2), 0.95, 190),
        ([0, 0, 0, 4] + [0] * (HISTOGRAM_SIZE - 4), 0.5, 400),  # (300, 500]: halfway
        ([0] * (HISTOGRAM_SIZE - 1) + [3], 0.5, 60_000),
        ([2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], 0.5, 75),
    ],
)
def test_histogram_percentile(counts, fraction, expected):
    assert histogram_percentile(counts, fraction) == expected


# --- budget ---------------------------------------------------------------------------


@time_machine.travel(datetime(2026, 11, 16, tzinfo=UTC), tick=False)
def test_budget_spend_and_forecast_for_the_period(tenant):
    # Given a $10 monthly budget on a feature that usually spends a cent an hour ($7.20 in
    # November) and spent $6 in its first 15 days
    feature = FeatureFactory(tenant=tenant, key="support")
    history(feature, first=date(2026, 10, 1), last=date(2026, 11, 15), calls_in=lambda at: [usd("0.01")])
    budget = Budget.objects.create(tenant=tenant, name="Support monthly", scope=Scope.FEATURE,
                                   feature=feature, period=Period.MONTH, limit_nano=usd("10"))
    BudgetWindow.objects.create(budget=budget, start=datetime(2026, 11, 1, tzinfo=UTC),
                                end=datetime(2026, 12, 1, tzinfo=UTC), spent_nano=usd("6"))
    Budget.objects.create(tenant=tenant, name="Everything", scope=Scope.TENANT, period=Period.DAY,
                          limit_nano=usd("100"))
    rollup(feature, "claude-haiku-4-5-20251001", calls=1, cost_nano=usd("6"))

    board = lever_board(tenant=tenant, **RANGE)
    lever = board_feature(board, "support")["levers"]["budget"]

    # Then the window's spend is on pace for $6 + (6 + 1.44) / (3.60 + 1.44) × $3.60 = $11.31
    # against $10 (budgets.forecast: the prior is a fifth of the usual month)
    [status] = lever["budgets"]
    assert status["name"] == "Support monthly"
    assert status["limit_usd"] == "10.000000"
    assert status["spent_usd"] == "6.000000"
    assert status["spent_share"] == 0.6
    assert status["forecast_usd"] == "11.314285714"
    assert status["forecast_over_limit"] is True
    assert status["window_start"] == "2026-11-01T00:00:00Z"
    assert "$11.31" in lever["recommendation"] and "$10.00" in lever["recommendation"]
    # and the tenant-wide budget is shown once, on the board, with no spend today
    [tenant_status] = board["budgets"]
    assert tenant_status["name"] == "Everything"
    assert tenant_status["spent_usd"] == "0.000000"
    assert tenant_status["forecast_over_limit"] is False
    assert board["budget_recommendation"] is None


# --- the board as a whole -------------------------------------------------------------


def demo_like_usage(tenant):
    """Five features, each with one lever standing out (like the demo tenant)."""
    # Interactive Opus 4.1 assistant: one tier down (Sonnet 5) saves 87%.
    assistant = FeatureFactory(tenant=tenant, key="assistant", max_tokens_cap=2048)
    rollup(assistant, "claude-opus-4-1-20250805", calls=100, input_tokens=50_000, output_tokens=20_000,
           streamed_calls=100, cost_nano=usd("2.25"))
    # Nightly report on Opus 4.6, standard tier: batch (50%) beats Sonnet 4.6 (40%).
    nightly = FeatureFactory(tenant=tenant, key="nightly-report", interactive=False, max_tokens_cap=4096)
    rollup(nightly, "claude-opus-4-6", calls=30, input_tokens=30_000, output_tokens=30_000,
           cost_nano=usd("0.9"))
    # Document Q&A on Haiku with 20,000-token prompts and no caching.
    doc_qa = FeatureFactory(tenant=tenant, key="doc-qa", max_tokens_cap=1024)
    rollup(doc_qa, "claude-haiku-4-5-20251001", calls=100, input_tokens=2_000_000, output_tokens=20_000,
           streamed_calls=100, cost_nano=usd("2.1"))
    # Extraction on Haiku cutting off 20% of answers.
    extract = FeatureFactory(tenant=tenant, key="extract", max_tokens_cap=256)
    rollup(extract, "claude-haiku-4-5-20251001", calls=100, input_tokens=50_000, output_tokens=25_600,
           truncations=20, max_tokens_sum=25_600, max_tokens_calls=100, output_tokens_capped=25_600,
           streamed_calls=100, cost_nano=usd("0.178"))
    # A chat on Haiku that does not stream and takes ~3 s per answer.
    chat = FeatureFactory(tenant=tenant, key="chat", max_tokens_cap=512)
    rollup(chat, "claude-haiku-4-5-20251001", calls=100, input_tokens=50_000, output_tokens=20_000,
           max_tokens_sum=51_200, max_tokens_calls=100, output_tokens_capped=20_000,
           latency_histogram=histogram(_2800=100), cost_nano=usd("0.15"))


def test_each_feature_gets_its_own_top_recommendation_ranked_by_saving(tenant):
    demo_like_usage(tenant)

    board = lever_board(tenant=tenant, **RANGE)

    top = {f["key"]: f["recommendation"]["lever"] for f in board["features"]}
    assert top == {
        "assistant": "model_selection",
        "nightly-report": "batch",
        "doc-qa": "prompt_caching",
        "extract": "max_tokens",
        "chat": "latency",
    }
    # Features are ranked by their best lever's saving
    savings = [f["potential_saving_nano"] for f in board["features"]]
    assert savings == sorted(savings, reverse=True)
    assert [f["key"] for f in board["features"]][:2] == ["assistant", "nightly-report"]
    # Opus 4.1 $2.25 vs Sonnet 5: 50,000 × $2 + 20,000 × $10 = $0.30
    assert board_feature(board, "assistant")["potential_saving_usd"] == "1.950000"
    # Each feature's own list puts its top recommendation first
    for row in board["features"]:
        assert row["recommendations"][0] == row["recommendation"]
        assert row["recommendation"]["text"]
    # The nightly report's batch saving ($0.45) beats Sonnet 4.6's ($0.36) anyway
    assert [r["lever"] for r in board_feature(board, "nightly-report")["recommendations"]] == [
        "batch", "model_selection",
    ]
    assert board["totals"]["spend_usd"] == "5.578000"
    assert board["totals"]["potential_saving_nano"] == sum(savings)


def test_one_feature_only_and_a_feature_without_usage(tenant):
    demo_like_usage(tenant)
    idle = FeatureFactory(tenant=tenant, key="idle", max_tokens_cap=100)

    board = lever_board(tenant=tenant, feature=idle, **RANGE)

    assert board["feature"] == "idle"
    [row] = board["features"]
    assert row["key"] == "idle"
    assert row["spend_usd"] == "0.000000"
    assert row["recommendation"] is None
    assert lever_board(tenant=tenant, **RANGE)["totals"]["calls"] == 430


def test_only_the_date_range_counts(tenant):
    feature = FeatureFactory(tenant=tenant, key="ranged")
    rollup(feature, "claude-haiku-4-5-20251001", day=date(2026, 10, 31), calls=1, cost_nano=usd("1"))
    rollup(feature, "claude-haiku-4-5-20251001", day=date(2026, 11, 1), calls=2, cost_nano=usd("2"))
    rollup(feature, "claude-haiku-4-5-20251001", day=date(2026, 11, 30), calls=4, cost_nano=usd("4"))
    rollup(feature, "claude-haiku-4-5-20251001", day=date(2026, 12, 1), calls=8, cost_nano=usd("8"))
    board = lever_board(tenant=tenant, **RANGE)
    assert board["totals"]["calls"] == 6
    assert board["totals"]["spend_usd"] == "6.000000"


def test_another_tenants_usage_never_shows(tenant, other_tenant):
    theirs = FeatureFactory(tenant=other_tenant, key="support-bot")
    rollup(theirs, "claude-opus-4-1-20250805", calls=5, input_tokens=1000, cost_nano=usd("1"))
    board = lever_board(tenant=tenant, **RANGE)
    assert board["features"] == []
    assert board["totals"]["spend_nano"] == 0
    with pytest.raises(ValueError):
        lever_board(tenant=tenant, feature=theirs, **RANGE)


@time_machine.travel(datetime(2026, 11, 16, tzinfo=UTC), tick=False)
def test_token_budget_forecast(tenant):
    # Given a 1,000,000-token monthly budget that used 600,000 tokens in half the month,
    # where 1,100 tokens an hour (396,000 by now, 792,000 by the end) are usual
    feature = FeatureFactory(tenant=tenant, key="tokens")
    history(feature, first=date(2026, 10, 1), last=date(2026, 11, 15), calls_in=lambda at: [usd("0.01")])
    budget = Budget.objects.create(tenant=tenant, name="Token cap", scope=Scope.FEATURE, feature=feature,
                                   period=Period.MONTH, limit_tokens=1_000_000)
    BudgetWindow.objects.create(budget=budget, start=datetime(2026, 11, 1, tzinfo=UTC),
                                end=datetime(2026, 12, 1, tzinfo=UTC), spent_tokens=600_000,
                                spent_nano=usd("3"))
    rollup(feature, "claude-haiku-4-5-20251001", calls=1, cost_nano=usd("3"))

    lever = board_feature(lever_board(tenant=tenant, **RANGE), "tokens")["levers"]["budget"]

    [status] = lever["budgets"]
    assert status["forecast_usd"] is None  # no USD limit, no USD forecast
    # 600,000 + (600,000 + 158,400) / (396,000 + 158,400) × 396,000
    assert status["forecast_tokens"] == 1_141_714
    assert status["forecast_over_limit"] is True
    assert "1,141,714 tokens against the 1,000,000-token budget 'Token cap'" in lever["recommendation"]


def test_usage_reported_through_the_ledger_reaches_the_board(tenant):
    from budgets.services import usage_report
    from usage.pricing import TokenUsage
    from usage.services import UsageInput

    # Given three Sonnet 4.5 calls reported to the ledger (PRICING.md example 1: $0.0105 each),
    # one of them cut off at max_tokens and streamed
    feature = FeatureFactory(tenant=tenant, key="ledger", max_tokens_cap=1024)
    at = datetime(2026, 11, 28, 12, tzinfo=UTC)
    usage = TokenUsage(input_tokens=1_000, output_tokens=500)
    usage_report(tenant=tenant, api_key=None, items=[
        UsageInput(feature=feature, model="claude-sonnet-4-5", usage=usage, request_id="r1", occurred_at=at,
                   stop_reason="max_tokens", max_tokens=1024, latency_ms=2140, ttft_ms=380, streamed=True),
        UsageInput(feature=feature, model="claude-sonnet-4-5", usage=usage, request_id="r2", occurred_at=at,
                   stop_reason="end_turn", max_tokens=1024, latency_ms=800, streamed=False),
        UsageInput(feature=feature, model="claude-sonnet-4-5", usage=usage, request_id="r3", occurred_at=at,
                   stop_reason="end_turn", max_tokens=1024, latency_ms=790, streamed=False),
    ])

    row = board_feature(lever_board(tenant=tenant, **RANGE), "ledger")

    assert row["spend_usd"] == "0.031500"
    # Haiku 4.5: 1,000 × $1 + 500 × $5 = $0.0035 a call
    assert row["levers"]["model_selection"]["one_tier_down_cost_usd"] == "0.010500"
    assert row["levers"]["model_selection"]["potential_saving_usd"] == "0.021000"
    max_tokens = row["levers"]["max_tokens"]
    assert max_tokens["truncation_rate"] == 0.3333
    assert max_tokens["cap_utilisation"] == round(1_500 / 3_072, 4)
    latency = row["levers"]["latency"]
    # Latency 800 and 790 ms in (750, 1000], 2140 ms in (2000, 3000]: median rank 1.5 of 3 lies
    # 1.5/2 into the first bucket (937.5 ms), p95 rank 2.85 lies 0.85 into the second (2850 ms)
    assert (latency["latency_p50_ms"], latency["latency_p95_ms"]) == (938, 2_850)
    # One ttft of 380 ms in (300, 500]
    assert (latency["ttft_p50_ms"], latency["ttft_p95_ms"]) == (400, 490)
    assert latency["streamed_share"] == 0.3333


def test_uncached_input_gets_advice_but_no_invented_figure(tenant):
    # Given Sonnet 4.5 calls of 5,000 uncached input tokens
    feature = FeatureFactory(tenant=tenant, key="rag", max_tokens_cap=1024)
    # 100 × (5,000 × $3 + 100 × $15) = $1.65; Haiku 4.5: 100 × (5,000 × $1 + 100 × $5) = $0.55
    rollup(feature, "claude-sonnet-4-5-20250929", calls=100, input_tokens=500_000, output_tokens=10_000,
           cost_nano=usd("1.65"))

    board = lever_board(tenant=tenant, **RANGE)
    row = board_feature(board, "rag")

    # Then how much of the input repeats cannot be seen: caching is advice without a figure, and
    # the only figure is the smaller model's, a what-if
    assert [(r["lever"], r["potential_saving_usd"]) for r in row["recommendations"]] == [
        ("model_selection", "1.100000"),
        ("prompt_caching", "0.000000"),
    ]
    assert row["recommendations"][0]["text"].startswith("What if: Claude Haiku 4.5 instead of Claude Sonnet 4.5")
    assert (board["totals"]["firm_saving_usd"], board["totals"]["what_if_saving_usd"]) == ("0.000000", "1.100000")


def test_an_immaterial_same_answer_saving_does_not_hide_a_smaller_model(tenant):
    # Given Sonnet 4.5 spend of $1.50 and a cache write premium of $0.0015 never read back
    feature = FeatureFactory(tenant=tenant, key="chatty", max_tokens_cap=1024)
    rollup(feature, "claude-sonnet-4-5-20250929", calls=100, input_tokens=50_000, output_tokens=90_000,
           cache_write_5m_tokens=2_000, cost_nano=usd("1.5075"))
    row = board_feature(lever_board(tenant=tenant, **RANGE), "chatty")
    assert [r["lever"] for r in row["recommendations"]] == ["model_selection", "prompt_caching"]


@pytest.mark.parametrize(
    ("model", "tokens_per_call", "flagged"),
    [
        ("claude-sonnet-4-5-20250929", 1_300, True),  # Sonnet 4.5 caches from 1,024 tokens
        ("claude-haiku-4-5-20251001", 1_300, False),  # Haiku 4.5 only from 4,096
        ("claude-haiku-4-5-20251001", 4_096, True),
        ("claude-opus-4-5-20251101", 4_000, False),
        ("claude-3-haiku-20240307", 2_048, True),
    ],
)
def test_caching_is_only_suggested_above_the_models_minimum_prompt(tenant, model, tokens_per_call, flagged):
    feature = FeatureFactory(tenant=tenant, key="short-prompts")
    rollup(feature, model, calls=10, input_tokens=10 * tokens_per_call, cost_nano=usd("0.1"))
    lever = board_feature(lever_board(tenant=tenant, **RANGE), "short-prompts")["levers"]["prompt_caching"]
    assert lever["large_input_little_caching"] is flagged
    assert (lever["recommendation"] is not None) is flagged
    assert lever["potential_saving_nano"] == 0  # no prefix measured, no figure


@time_machine.travel(datetime(2026, 11, 11, tzinfo=UTC), tick=False)
def test_a_tenant_budget_on_pace_to_overrun_is_called_out(tenant):
    # Given a $100 monthly company budget that spent $40 in the first 10 of 30 days, where
    # $0.10 an hour is usual ($24 by now, $72 by the end)
    history(FeatureFactory(tenant=tenant, key="any"), first=date(2026, 10, 1), last=date(2026, 11, 10),
            calls_in=lambda at: [usd("0.10")])
    budget = Budget.objects.create(tenant=tenant, name="Company", scope=Scope.TENANT, period=Period.MONTH,
                                   limit_nano=usd("100"))
    BudgetWindow.objects.create(budget=budget, start=datetime(2026, 11, 1, tzinfo=UTC),
                                end=datetime(2026, 12, 1, tzinfo=UTC), spent_nano=usd("40"))

    board = lever_board(tenant=tenant, **RANGE)

    [status] = board["budgets"]
    # $40 + (40 + 14.40) / (24 + 14.40) × $48 (budgets.forecast)
    assert status["forecast_usd"] == "108.000000"
    assert board["budget_recommendation"].startswith("On pace to spend $108.00 against the $100.00 budget 'Company'")


# --- the levers as the issue "Alerts, budgets and the lever board that tell the truth" checks them ---


def test_caching_with_20_minute_gaps_recommends_1_hour_writes_with_its_net_figure(tenant):
    from budgets.services import usage_report
    from usage.pricing import TokenUsage
    from usage.services import UsageInput

    # Given a week of Sonnet 4.5 calls every 20 minutes, each writing its 5,000-token prefix to a
    # 5-minute cache that has always expired by the next call
    feature = FeatureFactory(tenant=tenant, key="review", max_tokens_cap=1024)
    first = datetime(2026, 11, 24, tzinfo=UTC)
    items = [
        UsageInput(feature=feature, model="claude-sonnet-4-5", request_id=f"r{n}",
                   occurred_at=first + timedelta(minutes=20 * n),
                   usage=TokenUsage(input_tokens=500, cache_write_5m_tokens=5_000, output_tokens=100))
        for n in range(7 * 24 * 3)
    ]
    usage_report(tenant=tenant, api_key=None, items=items)

    board = lever_board(tenant=tenant, **RANGE)
    row = board_feature(board, "review")
    lever = row["levers"]["prompt_caching"]

    # Then: 504 calls × 5,000 tokens = 2,520,000 prefix tokens. Now all 5-minute writes:
    # 2.52M × $3.75 = $9.45. With 1-hour writes 503 calls come within the hour and read
    # (503 × 5,000 × $0.30 = $0.7545), the first writes (5,000 × $6 = $0.03): $0.7845.
    assert lever["cached_prefix_tokens_per_call"] == 5_000
    assert lever["gaps"] == {"sampled_calls": 504, "median_seconds": 1200, "within_5m_share": 0.0,
                             "within_1h_share": round(503 / 504, 4)}
    assert lever["prefix_cost_usd"] == {"current": "9.450000", "none": "7.560000", "5m": "9.450000",
                                        "1h": "0.784500"}
    assert lever["recommended_ttl"] == "1h"
    assert lever["potential_saving_usd"] == "8.665500"
    assert lever["recommendation"].startswith('Use 1-hour cache writes (cache_control ttl "1h"): calls come a '
                                              "median 20 min apart")
    assert "save $8.67" in lever["recommendation"]
    assert "minimum cacheable length (1,024 tokens)" in lever["basis"]
    # A measured figure is firm, and it comes before the smaller model's what-if
    assert row["recommendation"]["lever"] == "prompt_caching"
    assert board["totals"]["firm_saving_usd"] == "8.665500"


def test_caching_that_already_fits_its_gaps_is_left_alone(tenant):
    from budgets.services import usage_report
    from usage.pricing import TokenUsage
    from usage.services import UsageInput

    # Given calls every 2 minutes reading a 5-minute cache (one write at the start)
    feature = FeatureFactory(tenant=tenant, key="chat")
    first = datetime(2026, 11, 30, 9, tzinfo=UTC)
    items = [
        UsageInput(feature=feature, model="claude-sonnet-4-5", request_id=f"c{n}",
                   occurred_at=first + timedelta(minutes=2 * n),
                   usage=TokenUsage(input_tokens=200, output_tokens=100,
                                    **({"cache_write_5m_tokens": 5_000} if n == 0 else {"cache_read_tokens": 5_000})))
        for n in range(100)
    ]
    usage_report(tenant=tenant, api_key=None, items=items)

    lever = board_feature(lever_board(tenant=tenant, **RANGE), "chat")["levers"]["prompt_caching"]

    # Then 5-minute writes are already the cheapest: nothing to recommend
    assert lever["current_ttl"] == "5m"
    assert lever["recommended_ttl"] is None
    assert lever["potential_saving_nano"] == 0
    assert lever["recommendation"] is None


def test_a_feature_moved_to_batch_three_weeks_ago_shows_batch_as_pulled(tenant):
    # Given a latency-tolerant feature on the standard tier until Nov 9, on batch since Nov 10
    feature = FeatureFactory(tenant=tenant, key="digest", interactive=False)
    for day in range(1, 31):
        tier = "standard" if day < 10 else "batch"
        rollup(feature, "claude-sonnet-4-5-20250929", tier=tier, day=date(2026, 11, day), calls=10,
               input_tokens=200_000, cost_nano=usd("0.6") if tier == "standard" else usd("0.3"))

    lever = board_feature(lever_board(tenant=tenant, **RANGE), "digest")["levers"]["batch"]

    # Then the last week is all batch: nothing to advise, and the lever reads as pulled, with
    # what 21 days at half price saved: 21 × $0.30 = $6.30
    assert lever["recommendation"] is None
    assert lever["potential_saving_nano"] == 0
    assert lever["pulled"]["on"] == "2026-11-10"
    assert lever["pulled"]["saved_since_usd"] == "6.300000"
    assert lever["pulled"]["text"] == (
        "Pulled on Nov 10: runs on the batch tier since, which saved $6.30 against the standard tier."
    )


def test_a_feature_moved_to_haiku_shows_the_model_lever_as_pulled(tenant):
    # Given a feature on Sonnet 4.5 until Nov 9 and on Haiku 4.5 since (a million input tokens a day)
    feature = FeatureFactory(tenant=tenant, key="classifier")
    for day in range(1, 31):
        model = "claude-sonnet-4-5-20250929" if day < 10 else "claude-haiku-4-5-20251001"
        rollup(feature, model, day=date(2026, 11, day), calls=100, input_tokens=1_000_000,
               cost_nano=usd("3") if day < 10 else usd("1"))

    lever = board_feature(lever_board(tenant=tenant, **RANGE), "classifier")["levers"]["model_selection"]

    # Then it is not told to try a smaller model; the move shows as pulled: 21 days × ($3 − $1)
    assert lever["recommendation"] is None
    assert lever["pulled"]["on"] == "2026-11-10"
    assert lever["pulled"]["from_model"] == "claude-sonnet-4-5-20250929"
    assert lever["pulled"]["saved_since_usd"] == "42.000000"


def test_truncation_is_never_counted_as_a_saving(tenant):
    # Given a feature whose answers are cut off a third of the time
    feature = FeatureFactory(tenant=tenant, key="cut", max_tokens_cap=256)
    rollup(feature, "claude-haiku-4-5-20251001", calls=30, truncations=10, output_tokens=7_680,
           max_tokens_sum=7_680, max_tokens_calls=30, output_tokens_capped=7_680, cost_nano=usd("0.5"))

    board = lever_board(tenant=tenant, **RANGE)
    row = board_feature(board, "cut")

    # Then it says so, as a quality signal, and no saving appears anywhere
    lever = row["levers"]["max_tokens"]
    assert "33% of answers were cut off at max_tokens" in lever["recommendation"]
    assert lever["potential_saving_nano"] == 0
    assert row["potential_saving_nano"] == 0
    assert board["totals"]["potential_saving_nano"] == board["totals"]["firm_saving_nano"] == 0
