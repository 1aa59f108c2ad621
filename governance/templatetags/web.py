"""Template filters for the web UI: money from nano-USD, token counts, public ids."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from django import template

from governance.api.ids import public_id
from governance.crypto import mask
from usage.models import NANO

register = template.Library()


@register.filter
def usd(nano: int | None) -> str:
    """Render nano-USD for people: $1,234.56, or four places below a dollar ($0.0042)."""
    if nano is None:
        return "—"
    value = Decimal(nano) / NANO
    places = Decimal("0.01") if abs(value) >= 1 or value == 0 else Decimal("0.0001")
    value = value.quantize(places, rounding=ROUND_HALF_UP)
    sign = "-" if value < 0 else ""
    return f"{sign}${abs(value):,}"


@register.filter
def usd_plain(nano: int | None) -> str:
    """Render nano-USD as a plain decimal for form fields and CSV: 12.5 -> '12.50'."""
    if nano is None:
        return ""
    value = Decimal(nano) / NANO
    text = f"{value.normalize():f}"
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(2, '0')}"


@register.filter
def tokens(value: int | None) -> str:
    if value is None:
        return "—"
    return f"{value:,}"


@register.filter
def amount(value: int | None, unit: str) -> str:
    """Render a budget amount in its unit: USD from nano, or tokens."""
    return usd(value) if unit == "usd" else f"{tokens(value)} tokens"


@register.filter
def pid(obj) -> str:
    return public_id(obj)


@register.filter
def masked(secret: str) -> str:
    """Show a stored secret by its last four characters only."""
    return mask(secret)


@register.filter
def get_item(mapping, key):
    return mapping.get(key) if hasattr(mapping, "get") else None


def _show(field: str, value) -> str:
    if value is None or value == "" or value == []:
        return "—"
    if field.endswith("_nano") and isinstance(value, int):
        return usd(value)
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


@register.filter
def audit_changes(entry) -> list[dict[str, str]]:
    """Return what an audit entry changed, field by field, before and after, readable."""
    before, after = entry.before or {}, entry.after or {}
    names = list(dict.fromkeys([*after, *before]))
    changes = []
    for name in names:
        old, new = before.get(name), after.get(name)
        if entry.action == "update" and old == new:
            continue
        label = name.removesuffix("_nano").replace("_", " ") + (" (USD)" if name.endswith("_nano") else "")
        changes.append({"field": label, "before": _show(name, old) if before else "",
                        "after": _show(name, new) if after else ""})
    return changes


@register.filter
def pct(ratio: float | None) -> str:
    """Render a 0..1 ratio as a percentage: 0.4321 -> '43.2%'."""
    if ratio is None:
        return "—"
    return f"{ratio * 100:.1f}%"


@register.filter
def ms(value: int | None) -> str:
    if value is None:
        return "—"
    return f"{value / 1000:.1f} s" if value >= 1000 else f"{value} ms"


LEVER_NAMES = {
    "model_selection": "Model", "prompt_caching": "Prompt caching", "batch": "Batch",
    "max_tokens": "max_tokens", "latency": "Streaming", "budget": "Budget",
}


@register.filter
def lever_name(lever: str) -> str:
    return LEVER_NAMES.get(lever, lever.replace("_", " ").capitalize())
