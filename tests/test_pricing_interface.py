"""The pricing interface the ledger and the allowance build on: speed, geo, dated ids, unpriced usage."""

from __future__ import annotations

from decimal import Decimal

import pytest

from usage.models import ModelPrice, UsageSource
from usage.pricing import (
    TokenUsage,
    is_priced,
    known_families,
    planned_usage,
    price_for,
    usage_cost,
    usage_cost_nano,
    worst_case_nano,
)
from usage.services import UsageInput, usage_event_build

pytestmark = pytest.mark.django_db

ONE_K = TokenUsage(input_tokens=1000, output_tokens=1000)  # Opus 5: $0.005 + $0.025 = $0.030


@pytest.fixture
def opus_fast():
    """Give Opus 5 its fast-mode multiplier (the catalog sets it; this test pins it)."""
    ModelPrice.objects.filter(model="claude-opus-5").update(fast_factor=Decimal("2"))
    from usage.pricing import clear_price_cache

    clear_price_cache()


def test_fast_mode_multiplies_and_stacks_with_cache_and_geo(opus_fast):
    price = price_for("claude-opus-5")
    assert usage_cost(price, ONE_K, speed="fast") == Decimal("0.060")
    # 1000 cache reads at $0.50 = $0.0005; fast doubles it; US geo adds 10% on top.
    cached = TokenUsage(cache_read_tokens=1000, output_tokens=1000)
    assert usage_cost(price, cached, speed="fast", inference_geo="us") == Decimal("0.0255") * 2 * Decimal("1.1")
    assert usage_cost_nano("claude-opus-5", ONE_K, speed="fast", inference_geo="us") == 66_000_000


def test_batch_does_not_take_fast_mode(opus_fast):
    assert usage_cost(price_for("claude-opus-5"), ONE_K, service_tier="batch", speed="fast") == Decimal("0.015")


def test_fast_on_a_model_without_it_is_priced_standard():
    assert usage_cost(price_for("claude-sonnet-4-5"), ONE_K, speed="fast") == Decimal("0.018")


def test_worst_case_takes_fast_geo_and_web_searches(opus_fast):
    planned = planned_usage(input_tokens=1000, max_tokens=1000, web_search_requests=2)
    # ($0.030 x 2 fast x 1.1 US) + 2 searches x $0.01, searches untouched by the multipliers
    assert worst_case_nano("claude-opus-5", planned, inference_geo="us", speed="fast") == 66_000_000 + 20_000_000
    assert worst_case_nano("claude-opus-5", planned) == 30_000_000 + 20_000_000


def test_dated_id_resolves_to_its_alias_when_no_row_has_it():
    assert is_priced("claude-opus-4-7-20260416")
    assert price_for("claude-opus-4-7-20260416").model == "claude-opus-4-7"
    assert not is_priced("claude-opus-4-7-2026")


def test_known_families_come_from_the_catalog():
    assert {"opus", "sonnet", "haiku"} <= set(known_families())


def test_unknown_model_is_recorded_unpriced_with_its_tokens(tenant, feature):
    item = UsageInput(feature=feature, model="claude-zeta-9", usage=ONE_K)
    event = usage_event_build(tenant=tenant, api_key=None, item=item, source=UsageSource.REPORT)
    assert (event.priced, event.cost_nano, event.model, event.family) == (False, 0, "claude-zeta-9", "zeta")
    assert (event.input_tokens, event.output_tokens) == (1000, 1000)


def test_unknown_model_of_a_commit_is_priced_at_the_fallback_model(tenant, feature):
    item = UsageInput(feature=feature, model="claude-zeta-9", usage=ONE_K, speed="fast")
    event = usage_event_build(
        tenant=tenant, api_key=None, item=item, source=UsageSource.COMMIT, fallback_model="claude-sonnet-4-5"
    )
    assert (event.priced, event.cost_nano, event.model, event.speed) == (False, 18_000_000, "claude-zeta-9", "fast")
