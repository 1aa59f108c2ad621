"""How the ledger writes money for people: nano-USD as a decimal string (the API's format too)."""

from __future__ import annotations

from decimal import Decimal

from usage.models import NANO


def nano_to_usd(nano: int | None) -> str | None:
    """Render nano-USD as a decimal string with at least six places: 12_500_000 -> '0.012500'."""
    if nano is None:
        return None
    value = (Decimal(nano) / NANO).quantize(Decimal("0.000000001"))
    text = f"{value:f}".rstrip("0")
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(6, '0')}"
