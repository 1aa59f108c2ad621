"""How the ledger writes money for people: nano-USD as a decimal string (the API's format too)."""

from __future__ import annotations

from decimal import Decimal

from usage.models import NANO


def nano_to_usd(nano: int | None) -> str | None:
    """Render nano-USD as a decimal string with at least six places: 12_500_000 -> '0.012500'.

    An int, the usual case, is written in integer arithmetic (every allowance answer
    renders a dozen of these, and a Decimal division and quantize took several times as
    long); any other number as before, through Decimal.
    """
    if nano is None:
        return None
    if type(nano) is int:
        whole, part = divmod(abs(nano), NANO)
        places = f"{part:09d}".rstrip("0")
        return f"{'-' if nano < 0 else ''}{whole}.{places.ljust(6, '0')}"
    value = (Decimal(nano) / NANO).quantize(Decimal("0.000000001"))
    text = f"{value:f}".rstrip("0")
    whole_text, _, frac = text.partition(".")
    return f"{whole_text}.{frac.ljust(6, '0')}"
