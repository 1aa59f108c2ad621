"""Serializer fields shared by the API: money as decimal strings, public ids."""

from __future__ import annotations

import copy
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from usage.models import NANO
from usage.money import nano_to_usd


@extend_schema_field(OpenApiTypes.STR)
class UsdField(serializers.Field):
    """A USD amount: a decimal string (or number) in, nano-USD int inside, a decimal string out."""

    default_error_messages = {
        "invalid": "Give a USD amount as a decimal string, e.g. \"12.50\".",
        "negative": "Must not be negative.",
        "too_precise": "At most 9 decimal places.",
        "too_large": "Must be at most 1000000000.",
    }

    def __init__(self, **kwargs):
        kwargs.setdefault("help_text", "USD as a decimal string")
        super().__init__(**kwargs)

    def to_internal_value(self, data) -> int:
        if isinstance(data, bool) or not isinstance(data, (str, int, float)):
            self.fail("invalid")
        try:
            value = Decimal(str(data).strip())
        except InvalidOperation:
            self.fail("invalid")
        if not value.is_finite():
            self.fail("invalid")
        if value < 0:
            self.fail("negative")
        if value > 1_000_000_000:
            self.fail("too_large")
        nano = value * NANO
        if nano != nano.to_integral_value():
            self.fail("too_precise")
        return int(nano)

    def to_representation(self, value: int) -> str | None:
        return nano_to_usd(value)


class StrictSerializer(serializers.Serializer):
    """Reject fields the endpoint does not know, so a typo is an error and not a silent default."""

    def get_fields(self) -> dict[str, serializers.Field]:
        # DRF deep-copies every declared field for each serializer, which re-runs each
        # field's __init__: three quarters of validating an allowance. A leaf field keeps
        # no state across validations beyond what bind() sets on the copy, so a shallow
        # copy will do; fields with children (nested serializers, lists) are deep-copied.
        return {
            name: copy.deepcopy(field) if _has_children(field) else copy.copy(field)
            for name, field in self._declared_fields.items()
        }

    def to_internal_value(self, data):
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return super().to_internal_value(data)


def _has_children(field: serializers.Field) -> bool:
    return isinstance(field, serializers.BaseSerializer) or hasattr(field, "child")


MAX_TOKENS_VALUE = 100_000_000


def token_count(**kwargs) -> serializers.IntegerField:
    """Return a non-negative token-count field with a sane upper bound."""
    kwargs.setdefault("min_value", 0)
    kwargs.setdefault("max_value", MAX_TOKENS_VALUE)
    return serializers.IntegerField(**kwargs)


# No Claude API usage predates 2023, and a day past 2099 is a typo. Inside these bounds the
# arithmetic done on a day (the day after a range, a window's end) cannot overflow.
EARLIEST_DAY = date(2023, 1, 1)
LATEST_DAY = date(2099, 12, 31)
EARLIEST_TIME = datetime.combine(EARLIEST_DAY, datetime.min.time(), tzinfo=UTC)


class DayField(serializers.DateField):
    """A calendar day, YYYY-MM-DD, from EARLIEST_DAY to LATEST_DAY."""

    default_error_messages = {
        "out_of_range": f"Must be a day from {EARLIEST_DAY.isoformat()} to {LATEST_DAY.isoformat()}.",
    }

    def to_internal_value(self, value) -> date:
        day = super().to_internal_value(value)
        if not EARLIEST_DAY <= day <= LATEST_DAY:
            self.fail("out_of_range")
        return day
