"""The shipped price catalog: hand-computed amounts for the lineup, bands, fast, geo, batch, history."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from importlib import import_module
from pathlib import Path

import pytest
from django.apps import apps as django_apps
from django.core.management import CommandError, call_command
from django.utils import timezone

from tests.test_api_foundation import assert_error
from usage.catalog import DEFAULT_CATALOG, CatalogError, catalog_parse
from usage.models import ModelPrice, UsageSource
from usage.pricing import (
    TokenUsage,
    clear_price_cache,
    is_on_sale,
    known_families,
    price_for,
    usage_cost,
    usage_cost_nano,
)
from usage.services import UsageInput, usage_event_build

pytestmark = pytest.mark.django_db

# 10,000 uncached in, 2,000 5-minute writes, 1,000 1-hour writes, 20,000 reads, 3,000 out:
# 33,000 prompt tokens, below every band.
MIX = TokenUsage(
    input_tokens=10_000, cache_write_5m_tokens=2_000, cache_write_1h_tokens=1_000,
    cache_read_tokens=20_000, output_tokens=3_000,
)


def cost(model, usage=MIX, **kw) -> Decimal:
    return usage_cost(price_for(model, at=kw.pop("at", None)), usage, **kw)


@pytest.mark.parametrize("model,expected", [
    # 10k x in + 2k x 5m + 1k x 1h + 20k x read + 3k x out, per MTok
    ("claude-opus-5-5", "0.122"),      # 40,000 + 10,000 + 8,000 + 4,000 (0.05x read) + 60,000
    ("claude-sonnet-5-5", "0.061"),    # 20,000 + 5,000 + 4,000 + 2,000 ($0.10 read) + 30,000
    ("claude-haiku-5-5", "0.00315"),   # 1,000 + 250 + 200 + 200 + 1,500
    ("claude-fable-5-1", "0.30"),      # 100,000 + 25,000 + 20,000 + 5,000 (0.025x read) + 150,000
    ("claude-mythos-5-1", "0.30"),
    ("claude-fable-5-2", "0.24"),      # 80,000 + 20,000 + 16,000 + 4,000 (0.025x read) + 120,000
    ("claude-mythos-5-2", "0.24"),
    ("claude-fable-5", "0.315"),       # 100,000 + 25,000 + 20,000 + 20,000 + 150,000
    ("claude-mythos-5", "0.315"),
    ("claude-opus-5", "0.1575"),       # 50,000 + 12,500 + 10,000 + 10,000 + 75,000
    ("claude-opus-4-8", "0.1575"),
    ("claude-opus-4-7", "0.1575"),
    ("claude-opus-4-6", "0.1575"),
    ("claude-opus-4-5", "0.1575"),
    ("claude-sonnet-5", "0.063"),      # 20,000 + 5,000 + 4,000 + 4,000 + 30,000
    ("claude-sonnet-4-6", "0.0945"),   # 30,000 + 7,500 + 6,000 + 6,000 + 45,000
    ("claude-haiku-4-5", "0.0315"),    # 10,000 + 2,500 + 2,000 + 2,000 + 15,000
])
def test_every_model_of_the_lineup(model, expected):
    assert cost(model) == Decimal(expected)


def test_haiku_55_band_edge_is_100k_prompt_tokens():
    at_edge = TokenUsage(input_tokens=100_000, output_tokens=1_000)
    assert cost("claude-haiku-5-5", at_edge) == Decimal("0.0105")  # 100,000 x 0.10 + 1,000 x 0.50
    over = TokenUsage(input_tokens=100_001, output_tokens=1_000)
    assert cost("claude-haiku-5-5", over) == Decimal("0.0525005")  # 100,001 x 0.50 + 1,000 x 2.50
    # cache reads count towards the prompt and take the band's read rate
    mixed = TokenUsage(input_tokens=50_000, cache_read_tokens=50_001, output_tokens=1_000)
    assert cost("claude-haiku-5-5", mixed) == Decimal("0.03000005")  # 25,000 + 2,500.05 + 2,500
    assert cost("claude-haiku-5-5", over, service_tier="batch") == Decimal("0.02625025")


def test_sonnet_45_keeps_the_200k_rule():
    assert cost("claude-sonnet-4-5", TokenUsage(input_tokens=200_000, output_tokens=1_000)) == Decimal("0.615")
    assert cost("claude-sonnet-4-5", TokenUsage(input_tokens=200_001, output_tokens=1_000)) == Decimal("1.2225060")


def test_fast_mode_is_per_model_and_stacks_with_cache_and_geo_not_batch():
    assert cost("claude-opus-5-5", speed="fast") == Decimal("0.244")
    assert cost("claude-opus-5-5", speed="fast", inference_geo="us") == Decimal("0.2684")
    assert cost("claude-opus-5-5", speed="fast", service_tier="batch") == Decimal("0.061")
    assert cost("claude-opus-4-6", speed="fast") == Decimal("0.945")  # 6x
    assert cost("claude-sonnet-5-5", speed="fast") == Decimal("0.061")  # no fast mode on Sonnet


@pytest.mark.parametrize("model", ["claude-fable-5-2", "claude-mythos-5-2"])
def test_fable_and_mythos_52_have_fast_mode_at_2x(model):
    assert cost(model, speed="fast") == Decimal("0.48")  # 2 x 0.24: $16 / $20 / $32 / $0.40 / $80
    assert cost(model, speed="fast", inference_geo="us") == Decimal("0.528")
    assert cost(model, speed="fast", service_tier="batch") == Decimal("0.12")  # no fast mode on batches
    # a web search is $0.01 at either speed
    assert cost(model, TokenUsage(output_tokens=1_000, web_search_requests=2), speed="fast") == Decimal("0.10")
    assert cost("claude-fable-5-1", speed="fast") == Decimal("0.30")  # Fable 5.1 has none


def test_us_geo_is_on_opus_46_and_later_only():
    assert cost("claude-haiku-5-5", inference_geo="us") == Decimal("0.003465")
    assert cost("claude-haiku-4-5", inference_geo="us") == Decimal("0.0315")
    assert cost("claude-sonnet-5-5", inference_geo="us", service_tier="batch") == Decimal("0.03355")


def test_history_is_priced_by_the_row_of_its_day():
    before_cut = datetime(2026, 10, 6, 12, tzinfo=UTC)
    assert cost("claude-sonnet-5-5", at=before_cut) == Decimal("0.063")  # $0.20 reads until 2026-10-07
    assert cost("claude-sonnet-5-5", at=datetime(2026, 10, 7, tzinfo=UTC)) == Decimal("0.061")
    # retired models still price what they ran
    assert cost("claude-opus-4-0", at=datetime(2026, 1, 5, tzinfo=UTC)) == Decimal("0.4725")
    assert price_for("claude-opus-4-0").retired


def test_sonnet_45_is_retired_since_2026_11_30_and_still_prices_its_history():
    sonnet_45 = price_for("claude-sonnet-4-5")
    assert sonnet_45.retired and sonnet_45.retired_on == date(2026, 11, 30)
    assert not is_on_sale(sonnet_45)
    assert cost("claude-sonnet-4-5", at=datetime(2026, 11, 29, tzinfo=UTC)) == Decimal("0.0945")


def test_a_retirement_date_takes_the_model_off_sale_on_that_day():
    # Given Sonnet 4.5's row without the retired flag, retiring on 2026-11-30
    ModelPrice.objects.filter(model="claude-sonnet-4-5-20250929").update(retired=False)
    row = ModelPrice.objects.get(model="claude-sonnet-4-5-20250929")
    # Then it is on sale the day before and off sale from that day on
    assert is_on_sale(row, today=date(2026, 11, 29))
    assert not is_on_sale(row, today=date(2026, 11, 30))
    assert is_on_sale(price_for("claude-sonnet-5-5"))


def test_upgrading_past_the_first_catalog_load_gets_mythos_52_and_fable_52_fast_mode():
    # Given an install loaded with the 2026-11-24 catalog: no Mythos 5.2, Fable 5.2 without fast mode
    ModelPrice.objects.filter(model="claude-mythos-5-2").delete()
    ModelPrice.objects.filter(model="claude-fable-5-2").update(fast_factor=None)
    ModelPrice.objects.filter(model="claude-sonnet-4-5-20250929").update(retired=False)
    # and an operator's own correction of a shipped row
    ModelPrice.objects.filter(model="claude-opus-5-5").update(input=Decimal("3.5"))
    clear_price_cache()

    # When the 2026-12-02 catalog migration runs
    import_module("usage.migrations.0007_catalog_2026_12_02").load(django_apps, None)

    # Then the new model and the fast-mode correction are there, the retirement too,
    assert cost("claude-mythos-5-2", speed="fast") == Decimal("0.48")
    assert cost("claude-fable-5-2", speed="fast") == Decimal("0.48")
    assert price_for("claude-sonnet-4-5").retired
    # and the operator's row is left as they set it
    assert price_for("claude-opus-5-5").input == Decimal("3.5")


def test_families_are_open():
    assert {"opus", "sonnet", "haiku", "fable", "mythos"} <= set(known_families())


def test_budget_for_a_catalog_family(admin_api):
    body = {"name": "Fable cap", "scope": "tenant", "limit_usd": "10", "model_families": ["fable"]}
    assert admin_api.post("/api/v1/budgets", body, format="json").status_code == 201
    assert_error(admin_api.post("/api/v1/budgets", {**body, "model_families": ["zeta"]}, format="json"),
                 400, "invalid_request")


def test_prices_load_adds_a_dated_row_and_keeps_history(tenant, feature, tmp_path, capsys):
    usage = TokenUsage(input_tokens=1_000_000)
    old = usage_event_build(
        tenant=tenant, api_key=None, source=UsageSource.REPORT,
        item=UsageInput(feature=feature, model="claude-haiku-5-5", usage=usage,
                        occurred_at=timezone.now() - timedelta(days=3)),
    )
    old.save()
    tomorrow = (timezone.now() + timedelta(days=1)).date()
    changed = Path(DEFAULT_CATALOG).read_text() + f"""
[[model]]
id = "claude-haiku-5-5"
family = "haiku"
generation = 5.5
display_name = "Claude Haiku 5.5"
effective_from = {tomorrow.isoformat()}
input = 0.08
cache_write_5m = 0.10
cache_write_1h = 0.16
cache_read = 0.008
output = 0.40
band = {{ above_prompt_tokens = 100000, input = 0.50, cache_write_5m = 0.625, cache_write_1h = 1, cache_read = 0.05, output = 2.50 }}
"""
    path = tmp_path / "prices.toml"
    path.write_text(changed)
    call_command("prices_load", str(path))
    assert "1 added" in capsys.readouterr().out
    assert ModelPrice.objects.filter(model="claude-haiku-5-5").count() == 2
    old.refresh_from_db()
    assert old.cost_nano == 500_000_000  # 1M prompt tokens: the band over 100k, $0.50, as recorded
    small = TokenUsage(input_tokens=10_000)
    assert usage_cost_nano("claude-haiku-5-5", small) == 1_000_000
    assert usage_cost_nano("claude-haiku-5-5", small, at=timezone.now() + timedelta(days=2)) == 800_000
    call_command("prices_load", str(path))  # idempotent
    assert ModelPrice.objects.filter(model="claude-haiku-5-5").count() == 2
    # new rates for a date already loaded are a correction: refused without --replace
    path.write_text(changed.replace("input = 0.08", "input = 0.09"))
    with pytest.raises(CommandError, match="refused"):
        call_command("prices_load", str(path))
    call_command("prices_load", str(path), "--replace")
    assert usage_cost_nano("claude-haiku-5-5", small, at=timezone.now() + timedelta(days=2)) == 900_000


def test_a_bad_catalog_says_which_entry():
    with pytest.raises(CatalogError, match="claude-x: missing output"):
        catalog_parse('version = "1"\n[[model]]\nid = "claude-x"\nfamily = "x"\neffective_from = 2026-01-01\n'
                      "input = 1\ncache_write_5m = 1\ncache_write_1h = 1\ncache_read = 1\n")
