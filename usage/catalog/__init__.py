"""The price catalog: a versioned TOML file of dated rates, loaded into ModelPrice rows.

``catalog_read`` parses and validates a file; ``catalog_load`` writes it. A row is keyed
by (model, service_tier, effective_from): loading the same file twice changes nothing, a
new dated entry adds a row (history keeps the price it had), and changing the rates of a
loaded entry is refused unless ``replace`` (a correction, not a price change).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any

DEFAULT_CATALOG = Path(__file__).with_name("prices.toml")
RATES = ("input", "cache_write_5m", "cache_write_1h", "cache_read", "output")
_KNOWN_KEYS = {
    "id", "aliases", "display_name", "family", "generation", "effective_from", "service_tier", *RATES,
    "band", "batch", "fast", "geo_us", "web_search_per_request", "retired", "retired_on", "source", "note",
}
_BAND_KEYS = {"above_prompt_tokens", *RATES}


class CatalogError(ValueError):
    """The catalog file is not valid; the message names the entry and the field."""


@dataclass
class CatalogEntry:
    """One model's rates from ``effective_from`` on, as the catalog file states them."""

    fields: dict[str, Any]

    @property
    def key(self) -> tuple[str, str, datetime]:
        return self.fields["model"], self.fields["service_tier"], self.fields["effective_from"]


@dataclass
class Catalog:
    version: str
    entries: list[CatalogEntry]


@dataclass
class LoadResult:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: int = 0
    conflicts: list[str] = field(default_factory=list)


def _decimal(value: Any, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise CatalogError(f"{where}: give a number.")
    number = Decimal(value)
    if number < 0:
        raise CatalogError(f"{where}: a rate cannot be negative.")
    return number


def _day(value: Any, where: str) -> date:
    if isinstance(value, datetime) or not isinstance(value, date):
        raise CatalogError(f"{where}: give a date (YYYY-MM-DD).")
    return value


def _entry(raw: dict[str, Any], defaults: dict[str, Any], index: int) -> CatalogEntry:
    model = raw.get("id")
    if not isinstance(model, str) or not model.strip():
        raise CatalogError(f"model #{index}: 'id' is required.")
    where = f"{model}"
    unknown = set(raw) - _KNOWN_KEYS
    if unknown:
        raise CatalogError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}.")
    missing = [name for name in ("family", "effective_from", *RATES) if name not in raw]
    if missing:
        raise CatalogError(f"{where}: missing {', '.join(missing)}.")
    family = raw["family"]
    if not isinstance(family, str) or not family.isidentifier() or family != family.lower() or len(family) > 40:
        raise CatalogError(f"{where}: 'family' is one lower-case word (opus, sonnet, fable …).")
    aliases = raw.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
        raise CatalogError(f"{where}: 'aliases' is a list of model ids.")
    start = _day(raw["effective_from"], f"{where}.effective_from")
    merged = {**defaults, **raw}
    fields: dict[str, Any] = {
        "model": model,
        "aliases": aliases,
        "display_name": str(raw.get("display_name") or model),
        "family": family,
        "generation": _decimal(raw.get("generation", 0), f"{where}.generation"),
        "service_tier": str(raw.get("service_tier", "")),
        "effective_from": datetime.combine(start, time(), tzinfo=UTC),
        "batch_factor": _decimal(merged.get("batch", Decimal("0.5")), f"{where}.batch"),
        "geo_us_factor": _decimal(merged.get("geo_us", 1), f"{where}.geo_us"),
        "fast_factor": _decimal(raw["fast"], f"{where}.fast") if "fast" in raw else None,
        "web_search_per_request": _decimal(
            merged.get("web_search_per_request", Decimal("0.01")), f"{where}.web_search_per_request"
        ),
        "retired": bool(raw.get("retired", False)),
        "retired_on": _day(raw["retired_on"], f"{where}.retired_on") if "retired_on" in raw else None,
        "source": str(raw.get("source", ""))[:300],
    }
    if fields["service_tier"] not in ("", "priority", "batch"):
        raise CatalogError(f"{where}: 'service_tier' is blank, priority or batch.")
    for name in RATES:
        fields[name] = _decimal(raw[name], f"{where}.{name}")
    band = raw.get("band")
    if band is None:
        fields["long_context_threshold"] = None
        for name in RATES:
            fields[f"lc_{name}"] = None
    else:
        if not isinstance(band, dict) or set(band) != _BAND_KEYS:
            raise CatalogError(f"{where}.band: give above_prompt_tokens and the five rates.")
        threshold = band["above_prompt_tokens"]
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold <= 0:
            raise CatalogError(f"{where}.band.above_prompt_tokens: give a whole number of tokens.")
        fields["long_context_threshold"] = threshold
        for name in RATES:
            fields[f"lc_{name}"] = _decimal(band[name], f"{where}.band.{name}")
    return CatalogEntry(fields)


def catalog_parse(text: str) -> Catalog:
    """Parse catalog TOML (numbers read as exact decimals) and validate every entry."""
    try:
        data = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"Not valid TOML: {exc}.") from exc
    version = data.get("version")
    if not isinstance(version, str) or not version:
        raise CatalogError("The catalog needs a 'version' string.")
    defaults = data.get("defaults", {})
    models = data.get("model")
    if not isinstance(models, list) or not models:
        raise CatalogError("The catalog has no [[model]] entries.")
    entries = [_entry(raw, defaults, i) for i, raw in enumerate(models, start=1)]
    seen: set[tuple[str, str, datetime]] = set()
    for entry in entries:
        if entry.key in seen:
            raise CatalogError(f"{entry.key[0]}: two entries from {entry.key[2]:%Y-%m-%d}.")
        seen.add(entry.key)
    return Catalog(version=version, entries=entries)


def catalog_read(path: str | Path = DEFAULT_CATALOG) -> Catalog:
    return catalog_parse(Path(path).read_text(encoding="utf-8"))


# Each model's names and labels are the newest entry's, written onto all of its rows, so a
# rename or a retirement is one edit; rates belong to their dated row only.
_MODEL_WIDE = ("aliases", "display_name", "family", "generation", "retired", "retired_on")


def catalog_load(catalog: Catalog, *, model_price: Any = None, replace: bool = False) -> LoadResult:
    """Write the catalog's rows; return what was created, updated, left alone, or refused.

    ``model_price`` is the model class (a migration passes its historical one). Rows the
    file does not name are left alone: they price history or are an operator's own.
    A conflict (new rates for a loaded date) is reported, not written, unless ``replace``.
    """
    if model_price is None:
        from usage.models import ModelPrice

        model_price = ModelPrice
    columns = {f.name for f in model_price._meta.get_fields()}
    result = LoadResult()
    newest: dict[str, dict[str, Any]] = {}
    for entry in catalog.entries:
        current = newest.get(entry.fields["model"])
        if current is None or entry.fields["effective_from"] > current["effective_from"]:
            newest[entry.fields["model"]] = entry.fields
    for entry in catalog.entries:
        model, tier, start = entry.key
        values = {k: v for k, v in entry.fields.items() if k in columns and k not in ("model", "service_tier",
                                                                                      "effective_from")}
        for name in _MODEL_WIDE:
            if name in values:
                values[name] = newest[model][name]
        if "catalog_version" in columns:
            values["catalog_version"] = catalog.version
        label = f"{model}{f' [{tier}]' if tier else ''} from {start:%Y-%m-%d}"
        row = model_price.objects.filter(model=model, service_tier=tier, effective_from=start).first()
        if row is None:
            model_price.objects.create(model=model, service_tier=tier, effective_from=start, **values)
            result.created.append(label)
            continue
        rate_names = [n for n in values if n in RATES or n.startswith("lc_") or n.endswith("_factor")
                      or n in ("long_context_threshold", "web_search_per_request")]
        rates_differ = any(_differs(getattr(row, n), values[n]) for n in rate_names)
        if rates_differ and not replace:
            result.conflicts.append(label)
            continue
        changed = [n for n, v in values.items() if _differs(getattr(row, n), v)]
        if changed == ["catalog_version"] or not changed:
            if changed:
                row.catalog_version = catalog.version
                row.save(update_fields=["catalog_version"])
            result.unchanged += 1
            continue
        for name in changed:
            setattr(row, name, values[name])
        row.save(update_fields=changed)
        result.updated.append(label)
    for model, fields in newest.items():
        wide = {n: fields[n] for n in _MODEL_WIDE if n in columns}
        model_price.objects.filter(model=model).update(**wide)
    if model_price.__module__ == "usage.models":
        from usage.pricing import clear_price_cache

        clear_price_cache()
    return result


def _differs(stored: Any, wanted: Any) -> bool:
    if isinstance(wanted, Decimal) and stored is not None:
        return Decimal(stored) != wanted
    return stored != wanted
