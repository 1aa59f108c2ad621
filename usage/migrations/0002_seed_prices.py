"""Seed the price table from shared/PRICING.md (USD per million tokens)."""

from datetime import UTC, datetime
from decimal import Decimal

from django.db import migrations

EFFECTIVE_FROM = datetime(2023, 1, 1, tzinfo=UTC)
CONFIRMED = "Anthropic pricing page (April 2026 mirror)"
NEWER = "2026 documentation excerpt (PRICING.md, newer models)"

# model, aliases, display name, family, generation, retired, input, write 5m, write 1h, read, output, source
PRICES = [
    ("claude-opus-5", [], "Claude Opus 5", "opus", "5", False, "5", "6.25", "10", "0.50", "25", NEWER),
    ("claude-opus-4-8", [], "Claude Opus 4.8", "opus", "4.8", False, "5", "6.25", "10", "0.50", "25", NEWER),
    ("claude-opus-4-7", [], "Claude Opus 4.7", "opus", "4.7", False, "5", "6.25", "10", "0.50", "25", CONFIRMED),
    ("claude-opus-4-6", [], "Claude Opus 4.6", "opus", "4.6", False, "5", "6.25", "10", "0.50", "25", CONFIRMED),
    ("claude-opus-4-5-20251101", ["claude-opus-4-5"], "Claude Opus 4.5", "opus", "4.5", False,
     "5", "6.25", "10", "0.50", "25", CONFIRMED),
    ("claude-opus-4-1-20250805", ["claude-opus-4-1"], "Claude Opus 4.1", "opus", "4.1", False,
     "15", "18.75", "30", "1.50", "75", CONFIRMED),
    ("claude-opus-4-20250514", ["claude-opus-4-0"], "Claude Opus 4", "opus", "4", False,
     "15", "18.75", "30", "1.50", "75", CONFIRMED),
    ("claude-sonnet-5", [], "Claude Sonnet 5", "sonnet", "5", False, "2", "2.50", "4", "0.20", "10", NEWER),
    ("claude-sonnet-4-6", [], "Claude Sonnet 4.6", "sonnet", "4.6", False, "3", "3.75", "6", "0.30", "15", CONFIRMED),
    ("claude-sonnet-4-5-20250929", ["claude-sonnet-4-5"], "Claude Sonnet 4.5", "sonnet", "4.5", False,
     "3", "3.75", "6", "0.30", "15", CONFIRMED),
    ("claude-sonnet-4-20250514", ["claude-sonnet-4-0"], "Claude Sonnet 4", "sonnet", "4", False,
     "3", "3.75", "6", "0.30", "15", CONFIRMED),
    ("claude-haiku-4-5-20251001", ["claude-haiku-4-5"], "Claude Haiku 4.5", "haiku", "4.5", False,
     "1", "1.25", "2", "0.10", "5", CONFIRMED),
    ("claude-3-5-haiku-20241022", ["claude-3-5-haiku-latest"], "Claude Haiku 3.5 (retired)", "haiku", "3.5", True,
     "0.80", "1", "1.6", "0.08", "4", CONFIRMED),
    ("claude-3-haiku-20240307", [], "Claude Haiku 3 (retired)", "haiku", "3", True,
     "0.25", "0.30", "0.50", "0.03", "1.25", CONFIRMED),
]

# Long context (1M beta) applies to Sonnet 4.5 and Sonnet 4 above 200k input tokens.
LONG_CONTEXT = {"claude-sonnet-4-5-20250929", "claude-sonnet-4-20250514"}
# inference_geo "us" costs 1.1x for Opus 4.6 and the models released after it.
GEO_US = {"claude-opus-5", "claude-opus-4-8", "claude-opus-4-7", "claude-opus-4-6", "claude-sonnet-4-6", "claude-sonnet-5"}


def seed(apps, schema_editor):
    ModelPrice = apps.get_model("usage", "ModelPrice")
    for model, aliases, name, family, gen, retired, inp, w5, w1, read, out, source in PRICES:
        extra = {}
        if model in LONG_CONTEXT:
            extra = dict(
                long_context_threshold=200_000,
                lc_input=Decimal("6"),
                lc_cache_write_5m=Decimal("7.5"),
                lc_cache_write_1h=Decimal("12"),
                lc_cache_read=Decimal("0.6"),
                lc_output=Decimal("22.5"),
            )
        ModelPrice.objects.update_or_create(
            model=model,
            service_tier="",
            effective_from=EFFECTIVE_FROM,
            defaults=dict(
                aliases=aliases,
                display_name=name,
                family=family,
                generation=Decimal(gen),
                retired=retired,
                input=Decimal(inp),
                cache_write_5m=Decimal(w5),
                cache_write_1h=Decimal(w1),
                cache_read=Decimal(read),
                output=Decimal(out),
                batch_factor=Decimal("0.5"),
                geo_us_factor=Decimal("1.1") if model in GEO_US else Decimal("1"),
                web_search_per_request=Decimal("0.01"),
                source=source,
                **extra,
            ),
        )


def unseed(apps, schema_editor):
    apps.get_model("usage", "ModelPrice").objects.filter(effective_from=EFFECTIVE_FROM).delete()


class Migration(migrations.Migration):
    dependencies = [("usage", "0001_initial")]
    operations = [migrations.RunPython(seed, unseed)]
