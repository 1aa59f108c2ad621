"""The price table and the cost function: PRICING.md's worked examples and rules."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usage.pricing import (
    TokenUsage,
    model_family,
    planned_usage,
    price_for,
    to_nano,
    usage_cost,
    usage_cost_nano,
    worst_case_nano,
)

pytestmark = pytest.mark.django_db


def cost(model, usage, **kw) -> Decimal:
    return usage_cost(price_for(model), usage, **kw)


def test_example_1_sonnet_45_standard():
    assert cost("claude-sonnet-4-5", TokenUsage(input_tokens=1000, output_tokens=500)) == Decimal("0.0105")


def test_example_2_haiku_45_cache_write():
    usage = TokenUsage(input_tokens=200, cache_write_5m_tokens=4000, output_tokens=300)
    assert cost("claude-haiku-4-5", usage) == Decimal("0.0067")


def test_example_3_batch_halves_everything():
    usage = TokenUsage(input_tokens=200, cache_write_5m_tokens=4000, output_tokens=300)
    assert cost("claude-haiku-4-5-20251001", usage, service_tier="batch") == Decimal("0.00335")


def test_example_4_opus_41_reads_and_1h_writes():
    usage = TokenUsage(input_tokens=50, cache_read_tokens=10_000, cache_write_1h_tokens=2000, output_tokens=1000)
    assert cost("claude-opus-4-1", usage) == Decimal("0.15075")
    assert usage_cost_nano("claude-opus-4-1", usage) == 150_750_000


def test_long_context_reprices_every_token_of_the_request():
    # 150k uncached + 60k cache read = 210k > 200k: $6 in, $22.50 out, read 0.1x of $6.
    usage = TokenUsage(input_tokens=150_000, cache_read_tokens=60_000, output_tokens=1000)
    assert cost("claude-sonnet-4-5", usage) == Decimal("0.9") + Decimal("0.036") + Decimal("0.0225")
    # exactly 200k is not above the threshold
    at_limit = TokenUsage(input_tokens=200_000, output_tokens=1000)
    assert cost("claude-sonnet-4-5", at_limit) == Decimal("0.6") + Decimal("0.015")
    # other models have no long-context rule
    assert cost("claude-sonnet-4-6", usage) == Decimal("0.45") + Decimal("0.018") + Decimal("0.015")


def test_long_context_and_batch_stack():
    usage = TokenUsage(input_tokens=300_000, output_tokens=1000)
    assert cost("claude-sonnet-4-0", usage, service_tier="batch") == (Decimal("1.8") + Decimal("0.0225")) / 2


def test_us_inference_geo_costs_more_on_newer_opus_only():
    usage = TokenUsage(input_tokens=1000, output_tokens=1000)
    assert cost("claude-opus-4-6", usage, inference_geo="us") == Decimal("0.030") * Decimal("1.1")
    assert cost("claude-opus-4-6", usage, inference_geo="global") == Decimal("0.030")
    assert cost("claude-opus-4-5", usage, inference_geo="us") == Decimal("0.030")


def test_web_search_is_ten_dollars_per_thousand():
    assert cost("claude-sonnet-4-5", TokenUsage(web_search_requests=3)) == Decimal("0.03")


def test_priority_is_priced_as_standard_without_a_row():
    usage = TokenUsage(input_tokens=1000, output_tokens=500)
    assert cost("claude-sonnet-4-5", usage, service_tier="priority") == Decimal("0.0105")


def test_aliases_and_dated_ids_are_one_model():
    assert price_for("claude-sonnet-4-5").model == "claude-sonnet-4-5-20250929"
    assert price_for("claude-sonnet-4-5-20250929").model == "claude-sonnet-4-5-20250929"


@pytest.mark.parametrize(
    "model,family",
    [("claude-3-5-haiku-20241022", "haiku"), ("claude-opus-4-1", "opus"), ("claude-sonnet-5", "sonnet"),
     ("gpt-4o", None)],
)
def test_family_is_the_word_after_claude(model, family):
    assert model_family(model) == family


def test_worst_case_of_the_contract_example():
    planned = planned_usage(input_tokens=1200, max_tokens=1024)
    # 1200 x $3 + 1024 x $15 per MTok
    assert worst_case_nano("claude-sonnet-4-5", planned) == 3_600_000 + 15_360_000


MODELS = ["claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1", "claude-opus-4-6", "claude-3-haiku-20240307"]
tokens = st.integers(min_value=0, max_value=400_000)
usages = st.builds(TokenUsage, tokens, tokens, tokens, tokens, tokens, st.integers(0, 50))


@settings(max_examples=200, deadline=None)
@given(model=st.sampled_from(MODELS), a=usages, b=usages, tier=st.sampled_from(["standard", "batch"]))
def test_cost_is_additive_and_never_negative(model, a, b, tier):
    price = price_for(model)
    ca, cb = usage_cost(price, a, service_tier=tier), usage_cost(price, b, service_tier=tier)
    assert ca >= 0 and cb >= 0
    # Additive whenever the two parts and their sum are on the same side of the long-context line.
    threshold = price.long_context_threshold
    if threshold is None or all(u.total_input <= threshold for u in (a, b, a + b)):
        assert usage_cost(price, a + b, service_tier=tier) == ca + cb


@settings(max_examples=300, deadline=None)
@given(
    model=st.sampled_from(MODELS),
    declared=st.tuples(tokens, tokens, tokens, tokens),
    max_tokens=st.integers(1, 200_000),
    fractions=st.tuples(*[st.floats(0, 1)] * 5),
    tier=st.sampled_from(["standard", "batch", "priority"]),
)
def test_worst_case_is_never_below_actual(model, declared, max_tokens, fractions, tier):
    uncached, read, w5, w1 = declared
    planned = planned_usage(
        input_tokens=uncached + read + w5 + w1, max_tokens=max_tokens,
        cache_read_tokens=read, cache_write_5m_tokens=w5, cache_write_1h_tokens=w1,
    )
    actual = TokenUsage(
        input_tokens=int(uncached * fractions[0]), cache_read_tokens=int(read * fractions[1]),
        cache_write_5m_tokens=int(w5 * fractions[2]), cache_write_1h_tokens=int(w1 * fractions[3]),
        output_tokens=int(max_tokens * fractions[4]),
    )
    hold = worst_case_nano(model, planned, service_tier=tier)
    assert hold >= usage_cost_nano(model, actual, service_tier=tier)
    assert hold >= to_nano(usage_cost(price_for(model), actual, service_tier=tier))
