"""Writes of features: each AI feature's allowance policy (models, fallbacks, the max_tokens cap).

A feature belongs to its tenant (``governance.models.Feature``); its models are checked here
against the price catalog, where the catalog is known, so tenancy never imports prices.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import ProtectedError
from django.forms.models import model_to_dict

from governance.audit import Actor, audit_record, audit_update
from governance.models import Feature, Tenant
from usage.pricing import is_priced

FEATURE_FIELDS = (
    "key", "name", "description", "default_model", "allowed_models", "fallback_models",
    "max_tokens_cap", "interactive", "fail_mode", "active",
)


class FeatureInUse(Exception):
    """The feature has recorded usage, so it cannot be deleted; deactivate it instead."""


def feature_snapshot(feature: Feature) -> dict[str, Any]:
    return model_to_dict(feature, fields=FEATURE_FIELDS)


@transaction.atomic
def feature_create(*, tenant: Tenant, actor: Actor, **fields: Any) -> Feature:
    feature = Feature(tenant=tenant, **{k: v for k, v in fields.items() if k in FEATURE_FIELDS})
    feature.full_clean(exclude=["tenant"])
    feature_models_validate(feature)
    feature.save()
    audit_record(tenant=tenant, actor=actor, action="create", obj=feature, after=feature_snapshot(feature))
    return feature


@transaction.atomic
def feature_update(*, feature: Feature, actor: Actor, data: dict[str, Any]) -> Feature:
    before = feature_snapshot(feature)
    for name, value in data.items():
        if name in FEATURE_FIELDS:
            setattr(feature, name, value)
    feature.full_clean(exclude=["tenant"])
    feature_models_validate(feature)
    feature.save()
    after = feature_snapshot(feature)
    audit_update(actor=actor, obj=feature, before=before, after=after)
    return feature


@transaction.atomic
def feature_delete(*, feature: Feature, actor: Actor) -> None:
    before = feature_snapshot(feature)
    try:
        with transaction.atomic():
            feature.delete()
    except ProtectedError as exc:
        raise FeatureInUse(
            f"Feature '{feature.key}' has recorded usage; deactivate it instead of deleting it."
        ) from exc
    feature.pk = before["key"]
    audit_record(tenant=feature.tenant, actor=actor, action="delete", obj=feature, before=before)


def feature_models_validate(feature: Feature) -> None:
    """Raise ValidationError unless every model the feature names has a price in the catalog."""
    errors: dict[str, str] = {}
    for name in ("allowed_models", "fallback_models"):
        unknown = [m for m in getattr(feature, name) if not is_priced(m)]
        if unknown:
            errors[name] = f"No price is known for: {', '.join(unknown)}."
    if feature.default_model and not is_priced(feature.default_model):
        errors["default_model"] = f"No price is known for {feature.default_model}."
    if errors:
        raise ValidationError(errors)
